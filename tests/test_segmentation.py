"""The segmentation task: Swin-Unet's loss, its RandomGenerator, the confusion-matrix eval, and
a tiny run through the one training loop on digit scenes (a stand-in conv model)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import digit_scenes, images, seg_transforms
from swin_jax.models import registry
from swin_jax.tasks import segmentation
from swin_jax.train import config as config_lib
from swin_jax.train import loop


class TinySegNet(nn.Module):
  """``(B, S, S, 3) -> (B, S, S, K)``: two convs, a stand-in for Swin-Unet."""
  num_classes: int = 11

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
    return nn.Conv(self.num_classes, (1, 1), name="head")(x)


class Identity(nn.Module):
  """No params: the "image" is the logits, so eval outputs can be checked by hand."""
  num_classes: int = 3

  def __call__(self, x, train: bool = False):
    return x


def official_losses(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """Swin-Unet's ``CrossEntropyLoss()`` and ``utils.DiceLoss(K)(softmax=True)``, in torch."""
  import torch  # pylint: disable=import-outside-toplevel
  outputs = torch.from_numpy(logits).permute(0, 3, 1, 2).double()   # NCHW
  target = torch.from_numpy(labels).long()
  ce = torch.nn.CrossEntropyLoss()(outputs, target)
  k = outputs.shape[1]
  probs = torch.softmax(outputs, dim=1)
  onehot = torch.cat([(target == i).unsqueeze(1) for i in range(k)], dim=1).double()
  loss = 0.0
  for i in range(k):
    score, t = probs[:, i], onehot[:, i]
    intersect, y_sum, z_sum = (score * t).sum(), (t * t).sum(), (score * score).sum()
    loss += 1 - (2 * intersect + 1e-5) / (z_sum + y_sum + 1e-5)
  return float(ce), float(loss / k)


def test_loss_is_the_official_ce_and_dice():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 8, 8, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, size=(3, 8, 8)).astype(np.int32)
  labels[labels == 4] = 0   # a class absent from the targets: only its smooth term remains
  ce, dice = official_losses(logits, labels)
  got_ce = float(jnp.mean(segmentation.pixel_cross_entropy(jnp.asarray(logits),
                                                           jnp.asarray(labels))))
  got_dice = float(segmentation.dice_loss(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_allclose(got_ce, ce, rtol=1e-5)
  np.testing.assert_allclose(got_dice, dice, rtol=1e-5)

  config = config_lib.base_config("segmentation")
  config.dataset.num_classes = 5
  task = tasks.get_task(config)
  loss, (metrics, _) = task.loss_fn(Identity(5), {}, {}, {"image": jnp.asarray(logits),
                                                          "label": jnp.asarray(labels)},
                                    jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(loss), 0.4 * ce + 0.6 * dice, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["dice"]), dice, rtol=1e-5)


def test_ce_dice_loss_leaves_ignored_pixels_out():
  """Pixels labelled 255 count in neither term: CE is ``CrossEntropyLoss(ignore_index=255)``
  (mean over the rest) and Dice the official one over the remaining pixels."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 8, 8, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, size=(2, 8, 8)).astype(np.int32)
  labels[0, :3] = 255
  keep = labels != 255
  # The kept pixels as one (1, N, 1) "image": the official losses see exactly those.
  ce, dice = official_losses(logits[keep][None, :, None], labels[keep][None, :, None])
  config = config_lib.base_config("segmentation")
  config.dataset.num_classes = 4
  task = tasks.get_task(config)
  loss, (metrics, _) = task.loss_fn(Identity(4), {}, {}, {"image": jnp.asarray(logits),
                                                          "label": jnp.asarray(labels)},
                                    jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(metrics["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["dice"]), dice, rtol=1e-5)
  np.testing.assert_allclose(float(loss), 0.4 * ce + 0.6 * dice, rtol=1e-5)


def _dihedral(label: np.ndarray) -> dict[str, list[np.ndarray]]:
  rotations = [np.rot90(label, k) for k in range(4)]
  return {"identity": [label], "reflection": [np.flip(r, a) for r in rotations for a in (0, 1)]}


def test_train_augmentation_statistics_labels_and_alignment():
  """rot90+flip (always a reflection) 1/2, rotation 1/4 (angle 0 of 40: identity), else
  identity; nearest resampling keeps the label set, image and label move together."""
  rng = np.random.default_rng(1)
  label = rng.integers(0, 5, size=(24, 24)).astype(np.uint8)
  image = (label[..., None] * 50 + np.arange(3)).astype(np.uint8)   # colour encodes the label
  transform = seg_transforms.SegTransform(24, "image", "segmentation", train=True,
                                          normalize="none")
  shapes = _dihedral(label)
  counts = {"reflection": 0, "identity": 0, "rotation": 0}
  n = 2000
  gen = np.random.default_rng(2)
  for _ in range(n):
    out = transform({"image": image, "segmentation": label}, gen)
    got = out["label"]
    assert out["image"].shape == (24, 24, 3) and got.dtype == np.int32
    assert set(np.unique(got)) <= set(np.unique(label))
    # Aligned: the pixel colours still spell the label (the rotation fill is 0 in both).
    pixels = np.rint(out["image"] * 255).astype(int)
    np.testing.assert_array_equal(pixels[..., 0], got * 50)
    assert np.all((pixels[..., 2] == got * 50 + 2) | (pixels[..., 2] == 0))   # 0: the fill
    if any(np.array_equal(got, s) for s in shapes["reflection"]):
      counts["reflection"] += 1
    elif np.array_equal(got, label):
      counts["identity"] += 1
    else:
      counts["rotation"] += 1
  expected = {"reflection": 0.5, "rotation": 0.25 * 39 / 40, "identity": 0.25 + 0.25 / 40}
  for kind, p in expected.items():
    assert abs(counts[kind] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (kind, counts)


def test_transform_is_a_function_of_the_generator_and_handles_grey_and_rgb():
  rng = np.random.default_rng(0)
  grey = rng.random((20, 20)).astype(np.float32)        # Synapse: floats in [0, 1]
  label = rng.integers(0, 9, (20, 20)).astype(np.uint8)
  train = seg_transforms.SegTransform(32, "image", "label", train=True)
  a = train({"image": grey, "label": label}, np.random.default_rng(5))
  b = train({"image": grey, "label": label}, np.random.default_rng(5))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert a["image"].shape == (32, 32, 3) and a["label"].shape == (32, 32)
  np.testing.assert_array_equal(a["image"][..., 0], a["image"][..., 2])
  assert set(np.unique(a["label"])) <= set(np.unique(label))

  # Eval: cubic zoom for the float image (no ImageNet normalisation), nearest for the label.
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  out = seg_transforms.SegTransform(32, "image", "label")({"image": grey, "label": label})
  np.testing.assert_allclose(out["image"][..., 1], ndimage.zoom(grey, 1.6, order=3), atol=1e-6)
  np.testing.assert_array_equal(out["label"], ndimage.zoom(label, 1.6, order=0))

  # RGB uint8 at the output size: /255 and the ImageNet mean/std, no resampling.
  rgb = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
  label32 = rng.integers(0, 9, (32, 32)).astype(np.uint8)
  out = seg_transforms.SegTransform(32, "image", "label")({"image": rgb, "label": label32})
  np.testing.assert_array_equal(out["label"], label32)
  np.testing.assert_allclose(out["image"], (rgb / 255.0 - images.IMAGENET_MEAN)
                             / images.IMAGENET_STD, rtol=1e-5, atol=1e-6)


def test_confusion_evaluator_matches_a_direct_computation():
  config = config_lib.base_config("segmentation")
  config.dataset.num_classes = 3
  config.task.class_names = ("bg", "a", "b")
  task = tasks.get_task(config)
  rng = np.random.default_rng(3)
  evaluator = task.evaluator()
  preds_all, labels_all, logits_all = [], [], []
  for batch_index in range(3):
    logits = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (4, 6, 6)).astype(np.int32)
    mask = np.array([1, 1, 1, 0 if batch_index == 2 else 1], np.float32)   # padding
    outputs = task.eval_step(Identity(3), {}, {}, {"image": jnp.asarray(logits),
                                                   "label": jnp.asarray(labels),
                                                   "mask": jnp.asarray(mask)})
    evaluator.update(jax.device_get(outputs))
    keep = mask > 0
    preds_all.append(logits[keep].argmax(-1))
    labels_all.append(labels[keep])
    logits_all.append(logits[keep])
  result = evaluator.result()
  preds, labels = np.concatenate(preds_all).ravel(), np.concatenate(labels_all).ravel()
  dice, iou = [], []
  for k in range(3):
    p, t = preds == k, labels == k
    dice.append(2 * np.sum(p & t) / (p.sum() + t.sum()))
    iou.append(np.sum(p & t) / np.sum(p | t))
  for name, value in zip(("bg", "a", "b"), dice):
    np.testing.assert_allclose(result[f"eval/dice/{name}"], value, rtol=1e-6)
  np.testing.assert_allclose(result["eval/mean_dice"], np.mean(dice[1:]), rtol=1e-6)
  np.testing.assert_allclose(result["eval/miou"], np.mean(iou), rtol=1e-6)
  np.testing.assert_allclose(result["eval/pixel_acc"], np.mean(preds == labels), rtol=1e-6)
  # eval/loss: the training loss with the whole (unpadded) eval set as one batch.
  logits = np.concatenate(logits_all)
  ce, dice_loss = official_losses(logits, np.concatenate(labels_all))
  np.testing.assert_allclose(result["eval/loss"], 0.4 * ce + 0.6 * dice_loss, rtol=1e-5)


def test_build_model_checks_the_classes(monkeypatch):
  monkeypatch.setattr(registry, "create_model",
                      lambda name, **overrides: TinySegNet(overrides.get("num_classes", 11)))
  config = config_lib.base_config("segmentation")
  config.dataset.num_classes = 9
  config.model.overrides.num_classes = 9
  assert tasks.get_task(config).build_model().num_classes == 9
  config.model.overrides.num_classes = 4
  with pytest.raises(ValueError, match="has 4 classes but dataset"):
    tasks.get_task(config).build_model()
  config.task.evaluation = "slices"
  with pytest.raises(ValueError, match="task.evaluation"):
    tasks.get_task(config).evaluator()


class TinySegTask(segmentation.SegmentationTask):
  name = "test_tiny_segmentation"

  def build_model(self):
    return TinySegNet(self.num_classes)


def test_two_steps_on_digit_scenes_through_the_loop(monkeypatch, tmp_path):
  monkeypatch.setitem(tasks.TASKS, TinySegTask.name, TinySegTask)
  config = config_lib.base_config(TinySegTask.name)
  config.dataset.update(dict(
      name=digit_scenes.dataset_name(size=32, num_train=16, num_test=6),
      data_dir=str(tmp_path / "tfds"), train_split="train", eval_split="test",
      num_classes=11, image_size=32, read_threads=1))
  config.task.update(dict(image_key="image", label_key="segmentation"))
  config.optimizer.update(dict(name="sgd", schedule="poly", warmup_epochs=0.0, base_lr=0.05,
                               reference_batch_size=8, weight_decay=1e-4, clip_grad_norm=0.0,
                               no_decay_1d_and_bias=False, no_decay_keywords=()))
  config.update(dict(batch_size=8, eval_batch_size=8, total_steps=2, log_every_steps=1,
                     checkpoint_every_steps=2, eval_every_steps=0))
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  metrics = result.metrics
  assert np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["train/dice"])
  for key in ("eval/mean_dice", "eval/miou", "eval/pixel_acc", "eval/loss", "eval/dice/0"):
    assert np.isfinite(metrics[key]), key
  assert 0.0 <= metrics["eval/pixel_acc"] <= 1.0


def test_synapse_recipe_evaluates_volumes_through_the_loop(monkeypatch, tmp_path):
  """configs/swin_unet/synapse.py on a fake Synapse (32 px slices trained at 64 px): the
  per-volume evaluator gets the predictions, the source-size labels and the slice order."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import data_fakes  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(tasks.TASKS, TinySegTask.name, TinySegTask)
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "swin_unet", "synapse.py")
  spec = importlib.util.spec_from_file_location("synapse_recipe", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config_lib.validate_config(config)
  data_dir = str(tmp_path / "tfds")
  data_fakes.build_fake_synapse(data_dir, train_slices=8, test_depths=(3, 2), size=32)
  config.task.name = TinySegTask.name
  config.task.label_size = 32
  config.dataset.update(dict(data_dir=data_dir, image_size=64, read_threads=1))
  config.update(dict(batch_size=8, eval_batch_size=8, total_steps=2, log_every_steps=1,
                     checkpoint_every_steps=2))
  metrics = loop.train_and_evaluate(config, str(tmp_path / "run")).metrics
  assert np.isfinite(metrics["train/loss"])
  assert 0.0 <= metrics["eval/mean_dice"] <= 1.0 and np.isfinite(metrics["eval/mean_hd95"])
