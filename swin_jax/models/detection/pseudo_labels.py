"""Soft Teacher's teacher-side pieces with static shapes (microsoft/SoftTeacher,
``ssod/models/soft_teacher.py`` and ``ssod/utils/hooks/mean_teacher.py``).

    m = ema_momentum(step)                                  # min(0.999, 1 - 1 / (step + 1))
    teacher = ema_update(teacher, student, m)               # t m + s (1 - m), every leaf
    valid = confident(dets, threshold=0.5)                  # (B, D) the initial filter
    jitters = jitter_boxes(key, dets['boxes'], times=10, scale=0.06)       # (B, T, D, 4)
    unc = box_uncertainty(refined)                          # (B, T, D, 4) -> (B, D)
    weights = soft_label_weights(label_weights, labels, background_scores, K)

The official train cfg (``configs/soft_teacher/base.py``): detections of the teacher on the
weak view (test cfg: score 0.05, NMS 0.5, 100 per image) pass ``score > 0.5`` and a
positive width and height (``pseudo_label_initial_score_thr``, ``min_pseduo_box_size=0``);
among them, boxes with score ``> 0.9`` are the RPN and R-CNN classification targets, and
boxes whose jitter uncertainty is ``< 0.02`` the R-CNN regression targets. Here a padded
``(B, D)`` validity mask replaces each filter (``D`` = the teacher's 100 detections).

Box jittering (``aug_box`` + ``compute_uncertainty_with_aug``): each box gets ``T = 10``
copies whose 4 coordinates move by ``N(0, (0.06 * side)^2)`` (the side: the box's width for
x1/x2, height for y1/y2, at least 1); the teacher's R-CNN refines every copy (its deltas for
the box's class, decoded on the copy and clipped to the image); the uncertainty is the
per-coordinate std over the copies (unbiased, as ``torch.std``) divided by the refined mean
box's width or height (at least 1), averaged over the 4 coordinates.

Soft weights: a sampled student RoI assigned to background gets, as its classification
weight, the teacher's background probability (softmax column ``K``) on the same RoI mapped
into the teacher's view; positives keep 1, unsampled slots 0. ``loss_cls`` divides by the
sum of the weights (``soft_cls_loss``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

INITIAL_SCORE_THRESHOLD = 0.5   # pseudo_label_initial_score_thr
RPN_PSEUDO_THRESHOLD = 0.9      # rpn_pseudo_threshold
CLS_PSEUDO_THRESHOLD = 0.9      # cls_pseudo_threshold
REG_PSEUDO_THRESHOLD = 0.02     # reg_pseudo_threshold (on the uncertainty)
JITTER_TIMES = 10
JITTER_SCALE = 0.06
MIN_PSEUDO_BOX_SIZE = 0.0
EMA_MOMENTUM = 0.999


def ema_momentum(step: Any, momentum: float = EMA_MOMENTUM, warm_up: int = 0) -> jnp.ndarray:
  """The MeanTeacher hook's momentum before iteration ``step`` (0-based):
  ``min(momentum, 1 - (1 + warm_up) / (step + 1 + warm_up))``; 0 at step 0 (a copy)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(momentum), 1.0 - (1.0 + warm_up) / (step + 1.0 + warm_up))


def ema_update(teacher: Any, student: Any, momentum: Any) -> Any:
  """``teacher * m + student * (1 - m)`` leaf by leaf (``mul_(m).add_(s, alpha=1 - m)``)."""
  m = jnp.asarray(momentum, jnp.float32)
  return jax.tree.map(lambda t, s: (t * m.astype(t.dtype) + s * (1 - m).astype(t.dtype)),
                      teacher, student)


def box_sizes_ok(boxes: jnp.ndarray, min_size: float = MIN_PSEUDO_BOX_SIZE) -> jnp.ndarray:
  """``filter_invalid``'s size rule: width and height both ``> min_size``. ``(..., 4) ->
  (...)``."""
  return ((boxes[..., 2] - boxes[..., 0]) > min_size) & ((boxes[..., 3] - boxes[..., 1]) >
                                                         min_size)


def confident(dets: dict[str, jnp.ndarray], threshold: float = INITIAL_SCORE_THRESHOLD,
              min_size: float = MIN_PSEUDO_BOX_SIZE) -> jnp.ndarray:
  """``(B, D)`` which padded detections (``postprocess.detect``'s dict) are pseudo boxes:
  real, ``score > threshold`` and of positive size."""
  d = dets["scores"].shape[-1]
  real = jnp.arange(d) < dets["num_detections"][..., None]
  return real & (dets["scores"] > threshold) & box_sizes_ok(dets["boxes"], min_size)


def jitter_boxes(key: jax.Array, boxes: jnp.ndarray, times: int = JITTER_TIMES,
                 scale: float = JITTER_SCALE) -> jnp.ndarray:
  """``boxes (B, D, 4)`` -> ``(B, times, D, 4)`` copies offset by ``N(0, (scale * side)^2)``
  per coordinate (side: width for x, height for y, clamped to >= 1)."""
  wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 1.0)
  sigma = jnp.concatenate([wh, wh], axis=-1) * scale                        # (B, D, 4)
  noise = jax.random.normal(key, (boxes.shape[0], times) + boxes.shape[1:], jnp.float32)
  return boxes[:, None] + noise * sigma[:, None]


def box_uncertainty(refined: jnp.ndarray) -> jnp.ndarray:
  """``refined (B, T, D, 4)`` (the teacher's boxes for each jitter) -> ``(B, D)``: the std
  over ``T`` (``ddof=1``) over the mean box's ``(w, h, w, h)`` (>= 1), averaged over the 4
  coordinates."""
  std = jnp.std(refined, axis=1, ddof=1)
  mean = jnp.mean(refined, axis=1)
  wh = jnp.maximum(mean[..., 2:] - mean[..., :2], 1.0)
  return jnp.mean(std / jnp.concatenate([wh, wh], axis=-1), axis=-1)


def soft_label_weights(label_weights: jnp.ndarray, labels: jnp.ndarray,
                       background_scores: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  """Sampled RoIs assigned to background (``labels == num_classes`` with weight > 0) take
  the teacher's background probability as their weight; the rest keep ``label_weights``.
  All ``(..., S)``."""
  negative = (labels == num_classes) & (label_weights > 0)
  return jnp.where(negative, jax.lax.stop_gradient(background_scores), label_weights)


def soft_cls_loss(cls_score: jnp.ndarray, labels: jnp.ndarray,
                  weights: jnp.ndarray) -> jnp.ndarray:
  """``sum(CE * w) / max(sum(w), 1)`` over every RoI of the batch (``unsup_rcnn_cls_loss``);
  ``cls_score (..., S, K + 1)`` logits, ``labels``, ``weights (..., S)``."""
  log_probs = jax.nn.log_softmax(cls_score.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
