"""UperNet on the segmentation task: mmseg's loss (CE on the resized decode and aux logits,
ignore 255), BatchNorm statistics through ``model_state``, and mmseg's dataset-wide
mIoU / mAcc / aAcc with ignored pixels left out.

The loss oracle is PyTorch written from mmseg's code (``BaseDecodeHead.loss_by_feat``:
``resize(seg_logits, label size, 'bilinear', align_corners=False)``, then
``losses.cross_entropy``: ``F.cross_entropy(reduction='none', ignore_index=255)`` summed and
divided by ``label.numel()``, or by the non-ignored count with ``avg_non_ignore=True``).
The metric oracle is mmseg's ``intersect_and_union`` / ``total_area_to_metrics`` in numpy.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.tasks import segmentation
from swin_jax.train import config as config_lib
from swin_jax.train import optimizer as optimizer_lib
from swin_jax.train import state as state_lib
from swin_jax.train import step as step_lib

IGNORE = 255
K = 4


class PlantedHeads(nn.Module):
  """No params: the batch's "image" is ``{'decode', 'aux'}`` logits, returned as they are
  (so the loss can be checked by hand). Has ``head_logits``, so ``loss='auto'`` picks
  mmseg's loss."""

  def head_logits(self, images, train: bool = False):
    return images["decode"], images["aux"]

  def __call__(self, images, train: bool = False):
    return images["decode"]


class Identity(nn.Module):
  """No params: the "image" is the full-resolution logits (eval outputs by hand)."""

  def __call__(self, x, train: bool = False):
    return x


def segmentation_config(**task):
  config = config_lib.base_config("segmentation")
  config.dataset.num_classes = K
  config.task.update(task)
  return config


def torch_mmseg_loss(decode, aux, labels, aux_weight=0.4, avg_non_ignore=False) -> float:
  """``decode_head.loss + auxiliary_head.loss`` of mmseg, in float64 PyTorch (NCHW)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  target = torch.from_numpy(labels).long()
  total = 0.0
  for logits, weight in ((decode, 1.0), (aux, aux_weight)):
    x = torch.from_numpy(logits).permute(0, 3, 1, 2).double()
    x = F.interpolate(x, size=target.shape[1:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(x, target, reduction="none", ignore_index=IGNORE)
    denominator = (target != IGNORE).sum() if avg_non_ignore else target.numel()
    total += weight * float(loss.sum() / denominator)
  return total


def planted_batch(rng):
  """Logits at strides 4 and 16 of a 32 x 48 label with an ignored band and border."""
  decode = rng.normal(size=(2, 8, 12, K)).astype(np.float32) * 2
  aux = rng.normal(size=(2, 2, 3, K)).astype(np.float32) * 2
  labels = rng.integers(0, K, size=(2, 32, 48)).astype(np.int32)
  labels[0, 5:15] = IGNORE
  labels[1, :, -7:] = IGNORE
  return decode, aux, labels


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_loss_is_mmseg_decode_plus_weighted_aux_ce_ignoring_255(avg_non_ignore):
  decode, aux, labels = planted_batch(np.random.default_rng(0))
  config = segmentation_config(aux_weight=0.4, avg_non_ignore=avg_non_ignore)
  task = tasks.get_task(config)
  model = PlantedHeads()
  assert task.loss_kind(model) == "ce_aux"
  batch = {"image": {"decode": jnp.asarray(decode), "aux": jnp.asarray(aux)},
           "label": jnp.asarray(labels)}
  loss, (metrics, state) = task.loss_fn(model, {}, {}, batch, jax.random.PRNGKey(0))
  expected = torch_mmseg_loss(decode, aux, labels, 0.4, avg_non_ignore)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["ce"] + 0.4 * metrics["aux_ce"]), expected,
                             rtol=1e-5)
  assert state == {}
  # Not vacuous: scoring the ignored band as a class changes the loss.
  scored = np.where(labels == IGNORE, 0, labels)
  other, _ = task.loss_fn(model, {}, {}, {**batch, "label": jnp.asarray(scored)},
                          jax.random.PRNGKey(0))
  assert abs(float(other) - float(loss)) > 1e-3


def torch_soft_dice(logits, labels) -> float:
  """Swin-Unet's ``DiceLoss(softmax=True)`` over the non-ignored pixels, float64 torch, on
  ``logits`` resized bilinearly (align_corners False) to the label as mmseg does."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  target = torch.from_numpy(labels).long()
  x = torch.from_numpy(logits).permute(0, 3, 1, 2).double()
  probs = torch.softmax(F.interpolate(x, size=target.shape[1:], mode="bilinear",
                                      align_corners=False), dim=1)
  keep = target != IGNORE
  loss = 0.0
  for k in range(probs.shape[1]):
    p, t = probs[:, k][keep], (target[keep] == k).double()
    loss += 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
  return float(loss / probs.shape[1])


def test_decode_dice_weight_adds_the_soft_dice_of_the_resized_decode_logits():
  decode, aux, labels = planted_batch(np.random.default_rng(2))
  task = tasks.get_task(segmentation_config(decode_dice_weight=0.7))
  batch = {"image": {"decode": jnp.asarray(decode), "aux": jnp.asarray(aux)},
           "label": jnp.asarray(labels)}
  loss, (metrics, _) = task.loss_fn(PlantedHeads(), {}, {}, batch, jax.random.PRNGKey(0))
  dice = torch_soft_dice(decode, labels)
  np.testing.assert_allclose(float(metrics["dice"]), dice, rtol=1e-5)
  np.testing.assert_allclose(float(loss), torch_mmseg_loss(decode, aux, labels) + 0.7 * dice,
                             rtol=1e-5)


def test_loss_choice_follows_the_model_unless_set():
  auto = tasks.get_task(segmentation_config())
  assert auto.loss_kind(PlantedHeads()) == "ce_aux"
  assert auto.loss_kind(Identity()) == "ce_dice"
  with pytest.raises(ValueError, match="needs a model with an auxiliary head"):
    tasks.get_task(segmentation_config(loss="ce_aux")).loss_kind(Identity())
  with pytest.raises(ValueError, match="task.loss 'dice' is not one of"):
    tasks.get_task(segmentation_config(loss="dice")).loss_kind(Identity())


def mmseg_metrics(preds, labels, num_classes):
  """mmseg ``total_intersect_and_union`` + ``total_area_to_metrics`` (numpy): per-image
  areas summed over the dataset, then IoU, Acc per class, nanmean, and aAcc."""
  totals = np.zeros((4, num_classes))
  for pred, label in zip(preds, labels):
    keep = label != IGNORE
    pred, label = pred[keep], label[keep]
    intersect = pred[pred == label]
    areas = [np.histogram(x, bins=num_classes, range=(0, num_classes - 1))[0]
             for x in (intersect, pred, label)]
    totals += [areas[0], areas[1], areas[2], areas[1] + areas[2] - areas[0]]
  intersect, _, label_area, union = totals
  with np.errstate(invalid="ignore", divide="ignore"):
    iou, acc = intersect / union, intersect / label_area
  return {"miou": np.nanmean(iou), "macc": np.nanmean(acc),
          "aacc": intersect.sum() / label_area.sum()}


def per_image_mean_iou(preds, labels, num_classes):
  """The wrong way: the mean over images of each image's mIoU."""
  return np.mean([mmseg_metrics([p], [l], num_classes)["miou"] for p, l in zip(preds, labels)])


def test_eval_metrics_are_dataset_wide_and_ignore_255():
  """Two planted images: a big one predicted well and a small-class one predicted badly,
  so the dataset-wide mIoU differs from the mean of per-image mIoUs. Ignored pixels hold
  confidently wrong predictions that must not count."""
  labels = np.zeros((2, 8, 8), np.int32)
  labels[0, :, 4:] = 1                    # image 0: classes 0 and 1, predicted exactly
  labels[1, :2, :2] = 2                   # image 1: a small class 2 ...
  labels[1, 2:, :] = 3
  preds = labels.copy()
  preds[1, :2, :2] = 3                    # ... predicted as 3
  preds[1, 6:, :] = 0                     # and part of 3 as 0
  labels[0, 0, :] = IGNORE                # ignored row: predicted 2, must not count
  preds[0, 0, :] = 2
  logits = np.where(np.arange(K) == preds[..., None], 5.0, 0.0).astype(np.float32)

  config = segmentation_config()
  task = tasks.get_task(config)
  evaluator = task.evaluator()
  batch = {"image": jnp.asarray(logits), "label": jnp.asarray(labels),
           "mask": jnp.ones((2,), jnp.float32)}
  outputs = jax.device_get(task.eval_step(Identity(), {}, {}, batch))
  assert outputs["confusion"].sum() == np.sum(labels != IGNORE)
  evaluator.update(outputs)
  result = evaluator.result()

  expected = mmseg_metrics(preds, labels, K)
  np.testing.assert_allclose(result["eval/miou"], expected["miou"], rtol=1e-6)
  np.testing.assert_allclose(result["eval/macc"], expected["macc"], rtol=1e-6)
  np.testing.assert_allclose(result["eval/aacc"], expected["aacc"], rtol=1e-6)
  assert abs(expected["miou"] - per_image_mean_iou(preds, labels, K)) > 0.05
  # Counted with the ignored row, class 2 would gain 8 false positives.
  assert result["eval/miou"] > mmseg_metrics(preds, np.where(labels == IGNORE, 0, labels),
                                             K)["miou"]


def test_reduce_zero_label_is_mmseg_load_annotations():
  label = np.array([[0, 1, 2], [150, 255, 7]], np.uint8)
  np.testing.assert_array_equal(segmentation.reduce_zero_label(label),
                                [[255, 0, 1], [149, 255, 6]])


# ---------------------------------------------------------------------------------------
# A tiny UperNet through the generic train step.

TINY_UPERNET = dict(img_size=32, patch_size=2, embed_dim=8, depths=(1, 1, 1),
                    num_heads=(1, 1, 1), window_size=4, num_classes=K, channels=8,
                    aux_channels=4, pool_scales=(1, 2), drop_path_rate=0.0)


def tiny_upernet_config():
  config = segmentation_config()
  config.model.name = "upernet_swin_tiny_patch4_window7_512"
  config.model.overrides.update(TINY_UPERNET)
  config.dataset.image_size = 32
  config.batch_size = 4
  config.optimizer.update(dict(base_lr=2e-3, reference_batch_size=4, warmup_epochs=0.0,
                               schedule="constant", clip_grad_norm=0.0, weight_decay=0.01,
                               no_decay_1d_and_bias=False,
                               no_decay_keywords=("absolute_pos_embed",
                                                  "relative_position_bias_table", "norm")))
  return config


def test_tiny_upernet_trains_with_batchnorm_statistics_in_model_state():
  config = tiny_upernet_config()
  task = tasks.get_task(config)
  model = task.build_model()
  assert task.loss_kind(model) == "ce_aux"
  # Jitted, as the loop does: an eager UperNet init dispatches op by op (slow on CPU).
  params, model_state = tasks.base.split_variables(
      jax.jit(lambda rng: task.init_variables(model, rng))(jax.random.PRNGKey(0)))
  assert set(model_state) == {"batch_stats"}
  tx, schedule = optimizer_lib.make_optimizer(config, total_steps=5, steps_per_epoch=5)
  state = state_lib.create_train_state(params, tx, jax.random.PRNGKey(1), model_state, {})
  train_step = jax.jit(functools.partial(step_lib.train_step, task=task, model=model, tx=tx,
                                         schedule=schedule))
  rng = np.random.default_rng(0)
  labels = rng.integers(0, K, size=(4, 32, 32)).astype(np.int32)
  labels[:, :4] = IGNORE
  images = (rng.normal(size=(4, 32, 32, 3)) + labels[..., None] % IGNORE).astype(np.float32)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}

  losses = []
  for _ in range(5):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["train/loss"]))
    np.testing.assert_allclose(losses[-1], float(metrics["train/ce"]
                                                 + 0.4 * metrics["train/aux_ce"]), rtol=1e-5)
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  # Train-mode BatchNorm moved the running statistics of every head BN (init: 0 and 1).
  before = jax.tree.leaves(model_state)
  after = jax.tree.leaves(jax.device_get(state.model_state))
  # mean and var of 9 BNs: 2 PPM branches, bottleneck, 2 laterals, 2 fpn convs,
  # fpn_bottleneck, and the auxiliary head's conv.
  assert len(after) == len(before) == 2 * 9
  for old, new in zip(before, after):
    assert not np.allclose(np.asarray(old), new)

  # Eval: full-resolution logits with the running statistics; the ignored rows count nowhere.
  outputs = jax.device_get(jax.jit(functools.partial(task.eval_step, model))(
      state.params, state.model_state, {**batch, "mask": jnp.ones((4,), jnp.float32)}))
  assert outputs["confusion"].shape == (K, K)
  assert outputs["confusion"].sum() == np.sum(labels != IGNORE)
  evaluator = task.evaluator()
  evaluator.update(outputs)
  result = evaluator.result()
  for key in ("eval/miou", "eval/macc", "eval/aacc"):
    assert 0.0 <= result[key] <= 1.0, key
  np.testing.assert_allclose(result["eval/loss"], result["eval/ce"])
