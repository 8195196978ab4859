"""Soft Teacher's mechanics against the official code's rules (microsoft/SoftTeacher):
the MeanTeacher EMA, the pseudo-label filters on planted detections, the jitter uncertainty
on a planted teacher head (beside a PyTorch transcription with mmdet's box decoder), the
soft background weights and the weighted classification loss."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

import mm_stubs  # noqa: F401  (before any mmdet import)
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder  # noqa: E402

from swin_jax.models.detection import box_coder  # noqa: E402
from swin_jax.models.detection import pseudo_labels as pl  # noqa: E402
from swin_jax.tasks import soft_teacher  # noqa: E402
from swin_jax.tasks.soft_teacher_losses import refine_jitters  # noqa: E402
from swin_jax.train.state import TrainState  # noqa: E402

NUM_CLASSES = 3


# ---------------------------------------------------------------------------------------
# The EMA teacher.


def mean_teacher_hook(teacher: dict, student_by_step: list[dict]) -> list[dict]:
  """The official hook in PyTorch: before iteration t, momentum min(0.999, 1 - 1/(t+1))
  (warm_up 0), ``t.mul_(m).add_(s, alpha=1 - m)``; the teacher after each iteration's
  pre-update, for students ``student_by_step[t]`` (the student entering iteration t)."""
  teacher = {k: torch.tensor(v) for k, v in teacher.items()}
  out = []
  for t, student in enumerate(student_by_step):
    m = min(0.999, 1 - (1 + 0) / (t + 1 + 0))
    for k, v in teacher.items():
      v.mul_(m).add_(torch.tensor(student[k]), alpha=1 - m)
    out.append({k: v.numpy().copy() for k, v in teacher.items()})
  return out


def test_ema_momentum_is_the_hooks_warm_up_formula():
  steps = np.array([0, 1, 2, 9, 998, 999, 1000, 5000])
  expected = np.minimum(0.999, 1 - 1 / (steps + 1))
  np.testing.assert_allclose(pl.ema_momentum(steps), expected, rtol=1e-6)
  assert float(pl.ema_momentum(0)) == 0.0    # the first update copies the student


def test_post_update_tracks_the_mean_teacher_hook_step_by_step():
  """The task's post_update after update t (new step t+1) equals the hook before
  iteration t+1; init_extra is the hook's clone at iteration 0."""
  rng = np.random.default_rng(0)
  students = [{"w": rng.normal(size=(4, 3)).astype(np.float32),
               "b": rng.normal(size=(3,)).astype(np.float32)} for _ in range(6)]
  task = soft_teacher.SoftTeacherTask(_config())
  extra = task.init_extra(jax.tree.map(jnp.asarray, students[0]))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=students[0], opt_state={},
                     rng=jax.random.key(0), extra=extra)
  hooked = mean_teacher_hook(students[0], students)
  np.testing.assert_array_equal(extra["teacher"]["w"], hooked[0]["w"])
  for t in range(1, len(students)):
    state = task.post_update(state.replace(step=jnp.asarray(t, jnp.int32),
                                           params=jax.tree.map(jnp.asarray, students[t])))
    for k in ("w", "b"):
      np.testing.assert_allclose(state.extra["teacher"][k], hooked[t][k], rtol=1e-6,
                                 atol=1e-7, err_msg=f"step {t} {k}")
  # After a few steps the teacher lags the student: it is an average, not a copy.
  assert not np.allclose(state.extra["teacher"]["w"], students[-1]["w"])


def test_burn_in_keeps_the_teacher_a_copy_then_starts_the_hook_afresh():
  """``task.burn_in_steps=3``: after updates 1-3 the teacher is the student itself; from
  update 4 on it follows the hook started from student 3 (momentum 0, 0.5, 2/3, ...)."""
  rng = np.random.default_rng(1)
  students = [{"w": rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(7)]
  config = _config()
  config.task.burn_in_steps = 3
  task = soft_teacher.SoftTeacherTask(config)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=students[0], opt_state={},
                     rng=jax.random.key(0), extra=task.init_extra(students[0]))
  hooked = mean_teacher_hook(students[3], students[3:])
  for t in range(1, len(students)):
    state = task.post_update(state.replace(step=jnp.asarray(t, jnp.int32),
                                           params=jax.tree.map(jnp.asarray, students[t])))
    want = students[t]["w"] if t <= 3 else hooked[t - 3]["w"]
    np.testing.assert_allclose(state.extra["teacher"]["w"], want, rtol=1e-6, atol=1e-7,
                               err_msg=f"step {t}")


def _config():
  from swin_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.base_config("soft_teacher")


# ---------------------------------------------------------------------------------------
# Filters on planted detections.


def planted_detections():
  """Six padded slots of one image: 5 real detections and one padding slot."""
  boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 30], [1, 1, 9, 9], [2, 2, 2, 12],
                    [3, 3, 13, 13], [4, 4, 14, 14]], np.float32)
  scores = np.array([0.95, 0.6, 0.5, 0.97, 0.3, 0.99], np.float32)
  return {"boxes": boxes[None], "scores": scores[None],
          "classes": np.array([[0, 1, 2, 1, 0, 2]], np.int32),
          "num_detections": np.array([5], np.int32)}


def test_initial_filter_keeps_real_confident_boxes_with_area():
  valid = np.asarray(pl.confident(planted_detections()))[0]
  # 0.5 is not > 0.5; slot 3 has zero width; slot 5 (0.99) is padding past num_detections.
  np.testing.assert_array_equal(valid, [True, True, False, False, False, False])
  low = np.asarray(pl.confident(planted_detections(), threshold=0.25))[0]
  np.testing.assert_array_equal(low, [True, True, True, False, True, False])


def test_target_thresholds_split_pseudo_boxes_by_score_and_uncertainty():
  """The task's three target sets on planted pseudo labels: RPN / cls by score > 0.9 among
  the kept boxes, regression by uncertainty < 0.02 (or score > 0.9 without jitter)."""
  dets = planted_detections()
  valid = pl.confident(dets)
  uncertainty = jnp.asarray([[0.05, 0.01, 0.0, 0.0, 0.0, 0.0]])
  cfg = _config().task
  kept = valid & pl.box_sizes_ok(jnp.asarray(dets["boxes"]))
  score_ok = kept & (dets["scores"] > cfg.cls_pseudo_threshold)
  unc_ok = kept & (uncertainty < cfg.reg_pseudo_threshold)
  np.testing.assert_array_equal(np.asarray(score_ok)[0], [1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(unc_ok)[0], [0, 1, 0, 0, 0, 0])
  assert cfg.rpn_pseudo_threshold == cfg.cls_pseudo_threshold == 0.9
  assert cfg.initial_score_threshold == 0.5 and cfg.reg_pseudo_threshold == 0.02


# ---------------------------------------------------------------------------------------
# Jitter uncertainty on a planted teacher head.


class PlantedHead(nn.Module):
  """A teacher R-CNN head whose box deltas are planted: ``snap`` regresses every RoI of
  image ``b`` exactly onto ``targets[b]`` (for every class); otherwise zero deltas (the
  RoI itself)."""
  targets: np.ndarray
  snap: bool

  def roi_outputs(self, feats, rois):
    del feats
    b, r = rois.shape[:2]
    scores = jnp.zeros((b, r, NUM_CLASSES + 1))
    if not self.snap:
      return scores, jnp.zeros((b, r, 4 * NUM_CLASSES))
    target = jnp.broadcast_to(jnp.asarray(self.targets), rois.shape)   # (B, 1, 4) -> (B, R, 4)
    deltas = box_coder.encode(rois, target, stds=box_coder.RCNN_STDS)
    return scores, jnp.tile(deltas, (1, 1, NUM_CLASSES))


def official_uncertainty(jitters: np.ndarray, deltas: np.ndarray, classes: np.ndarray,
                         hw: tuple[int, int]) -> np.ndarray:
  """``compute_uncertainty_with_aug`` for one image in PyTorch with mmdet's decoder:
  ``jitters (T, D, 4)``, the head's ``deltas (T * D, 4K)`` -> ``(D,)`` mean over the 4."""
  coder = DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
  t, d = jitters.shape[:2]
  rois = torch.tensor(jitters.reshape(t * d, 4))
  k = deltas.shape[-1] // 4
  boxes = coder.decode(rois[:, None].expand(-1, k, -1).reshape(-1, 4),
                       torch.tensor(deltas).reshape(-1, 4), max_shape=hw)
  boxes = boxes.reshape(t, d, 4 * k)
  unc = boxes.std(dim=0)
  mean = boxes.mean(dim=0)
  label = torch.tensor(classes, dtype=torch.long)
  mean = mean.reshape(d, k, 4)[torch.arange(d), label]
  unc = unc.reshape(d, k, 4)[torch.arange(d), label]
  wh = (mean[:, 2:4] - mean[:, :2]).clamp(min=1.0)
  unc = unc / wh[:, None, :].expand(-1, 2, 2).reshape(-1, 4)
  return unc.mean(dim=-1).numpy()


def jittered(snap: bool):
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 60, (2, 5, 2)).astype(np.float32)
  wh = rng.uniform(8, 40, (2, 5, 2)).astype(np.float32)
  boxes = np.concatenate([xy, xy + wh], -1)
  classes = rng.integers(0, NUM_CLASSES, (2, 5)).astype(np.int32)
  targets = boxes[:, :1].copy()    # image b's boxes all snap to its first box
  hw = np.array([[100, 110], [100, 110]], np.int32)
  jitters = pl.jitter_boxes(jax.random.key(0), jnp.asarray(boxes))
  head = PlantedHead(targets, snap)
  refined = head.apply({}, None, jitters, jnp.asarray(classes), jnp.asarray(hw),
                       method=refine_jitters)
  _, deltas = head.apply({}, None, jitters.reshape(2, -1, 4), method="roi_outputs")
  return boxes, classes, hw, np.asarray(jitters), np.asarray(refined), np.asarray(deltas)


def test_jitters_are_ten_copies_with_sigma_six_percent_of_the_side():
  boxes, _, _, jitters, _, _ = jittered(snap=False)
  assert jitters.shape == (2, pl.JITTER_TIMES, 5, 4)
  wh = boxes[..., 2:] - boxes[..., :2]
  sides = np.concatenate([wh, wh], -1)[:, None]
  z = (jitters - boxes[:, None]) / (pl.JITTER_SCALE * sides)
  assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2     # 400 standard normal draws


def test_uncertainty_matches_the_official_computation_on_a_planted_head():
  for snap in (False, True):
    _, classes, hw, jitters, refined, deltas = jittered(snap)
    ours = np.asarray(pl.box_uncertainty(jnp.asarray(refined)))
    for b in range(2):
      expected = official_uncertainty(jitters[b], deltas[b], classes[b], tuple(hw[b]))
      np.testing.assert_allclose(ours[b], expected, rtol=1e-4, atol=1e-6)
    if snap:   # a head that puts every jitter on the same box is certain: all regress
      assert ours.max() < 1e-5 and (ours < pl.REG_PSEUDO_THRESHOLD).all()
    else:      # an inert head keeps the jitter: std ~ 0.06 of the side, above 0.02
      assert 0.03 < ours.mean() < 0.09 and (ours > pl.REG_PSEUDO_THRESHOLD).all()


# ---------------------------------------------------------------------------------------
# Soft background weights and the classification loss.


def test_soft_weights_are_the_teachers_background_score_on_background_rois():
  labels = jnp.asarray([[0, 2, NUM_CLASSES, NUM_CLASSES, NUM_CLASSES]])
  label_weights = jnp.asarray([[1.0, 1.0, 1.0, 1.0, 0.0]])   # the last slot unsampled
  background = jnp.asarray([[0.9, 0.8, 0.25, 0.6, 0.7]])
  weights = pl.soft_label_weights(label_weights, labels, background, NUM_CLASSES)
  np.testing.assert_array_equal(np.asarray(weights),
                                np.float32([[1.0, 1.0, 0.25, 0.6, 0.0]]))
  grad = jax.grad(lambda bg: pl.soft_label_weights(label_weights, labels, bg,
                                                   NUM_CLASSES).sum())(background)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)   # no gradient into the teacher


def test_soft_cls_loss_is_the_weighted_ce_over_the_sum_of_weights():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 6, NUM_CLASSES + 1)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES + 1, (2, 6))
  weights = rng.uniform(0, 1, (2, 6)).astype(np.float32)
  ce = torch.nn.functional.cross_entropy(torch.tensor(logits.reshape(-1, NUM_CLASSES + 1)),
                                         torch.tensor(labels.reshape(-1)), reduction="none")
  expected = (ce * torch.tensor(weights.reshape(-1))).sum() / max(weights.sum(), 1.0)
  ours = pl.soft_cls_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
  np.testing.assert_allclose(float(ours), float(expected), rtol=1e-6)
  # Below a total weight of 1 the official max(sum, 1.0) divides by 1.
  small = weights * 0.01
  expected_small = (ce * torch.tensor(small.reshape(-1))).sum() / 1.0
  np.testing.assert_allclose(float(pl.soft_cls_loss(jnp.asarray(logits), jnp.asarray(labels),
                                                    jnp.asarray(small))),
                             float(expected_small), rtol=1e-6)
