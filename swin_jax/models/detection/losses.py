"""Mask R-CNN losses over a batch of static-shape targets (``targets.py``), mmdet's numbers.

    loss_rpn_cls, loss_rpn_bbox = rpn_loss(cls_logits, deltas, rpn)     # rpn: batched RPNTargets
    loss_cls, loss_bbox = rcnn_loss(cls_score, bbox_pred, rcnn)          # (B, S, ...) or flat
    loss_mask = mask_loss(mask_logits, masks, labels, valid)

Every sum runs over the whole batch and is divided once, as mmdet concatenates the images:
* RPN (``AnchorHead.loss_by_feat``): sigmoid BCE of the objectness (target 1 for label 0)
  and L1 on the positives' deltas (the Swin config's ``L1Loss``, not smooth L1), both
  ``sum(loss * weight) / avg_factor`` with ``avg_factor = sum over images of max(#pos, 1) +
  max(#neg, 1)``.
* RCNN (``BBoxHead.loss``): softmax CE over ``num_classes + 1`` (background last) weighted
  by ``label_weights``, divided by ``max(#(label_weights > 0), 1)``; L1 between the
  positives' deltas *of their own class* and the targets, divided by the number of sampled
  RoIs (``bbox_targets.size(0)``, negatives included).
* Masks (``mask_cross_entropy``): BCE of the positive's class channel against the 28 x 28
  target, the mean over all positives' pixels; 0 without positives.

mmdet 3.3.0 divides by ``avg_factor + float32 eps`` (1.2e-7), mmdet 2.11 by ``avg_factor``:
a relative 1e-10 at these counts. Here: ``avg_factor``, which is >= 1 wherever the sum is not
0. Loss weights are all 1 in the official config.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from swin_jax.models.detection.targets import RCNNTargets, RPNTargets

LevelsOr = Union[jnp.ndarray, Sequence[jnp.ndarray]]


def sigmoid_bce(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """Elementwise ``binary_cross_entropy_with_logits``: ``max(x, 0) - x t + log1p(e^-|x|)``."""
  logits = logits.astype(jnp.float32)
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def flatten_levels(cls_logits: Sequence[jnp.ndarray], bbox_deltas: Sequence[jnp.ndarray]
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The RPN head's per-level ``[(B, H_l, W_l, A)]``, ``[(B, H_l, W_l, 4A)]`` -> ``(B, N)``,
  ``(B, N, 4)`` over all anchors, levels concatenated, each (y, x, anchor): the order of
  ``anchors.multilevel_anchors`` and so of ``rpn_targets``."""
  b = cls_logits[0].shape[0]
  return (jnp.concatenate([c.reshape(b, -1) for c in cls_logits], axis=1),
          jnp.concatenate([r.reshape(b, -1, 4) for r in bbox_deltas], axis=1))


def rpn_loss(cls_logits: LevelsOr, bbox_deltas: LevelsOr,
             targets: RPNTargets) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``cls_logits (..., N)`` objectness logits and ``bbox_deltas (..., N, 4)`` of all anchors
  (levels concatenated, the targets' order), or the head's per-level lists (``B`` leading);
  ``targets`` with the same leading axes (a ``vmap`` of ``rpn_targets`` over the batch).
  -> ``(loss_rpn_cls, loss_rpn_bbox)`` scalars."""
  if isinstance(cls_logits, (list, tuple)):
    cls_logits, bbox_deltas = flatten_levels(cls_logits, bbox_deltas)
  avg = jnp.sum(targets.avg_factor)
  objectness = (targets.labels == 0).astype(jnp.float32)
  loss_cls = jnp.sum(sigmoid_bce(cls_logits, objectness) * targets.label_weights) / avg
  loss_bbox = jnp.sum(jnp.abs(bbox_deltas.astype(jnp.float32) - targets.bbox_targets) *
                      targets.bbox_weights) / avg
  return loss_cls, loss_bbox


def rcnn_loss(cls_score: jnp.ndarray, bbox_pred: jnp.ndarray,
              targets: RCNNTargets) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``cls_score (..., S, K + 1)`` logits (background last), ``bbox_pred (..., S, 4K)``
  class-specific deltas of the sampled RoIs, ``targets`` with the same leading axes.
  -> ``(loss_cls, loss_bbox)`` scalars."""
  num_classes = cls_score.shape[-1] - 1
  labels = targets.labels
  log_probs = jax.nn.log_softmax(cls_score.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  cls_avg = jnp.maximum(jnp.sum(targets.label_weights > 0), 1).astype(jnp.float32)
  loss_cls = jnp.sum(ce * targets.label_weights) / cls_avg

  positive = (labels >= 0) & (labels < num_classes)
  per_class = bbox_pred.astype(jnp.float32).reshape(*bbox_pred.shape[:-1], num_classes, 4)
  own = jnp.take_along_axis(per_class, jnp.clip(labels, 0, num_classes - 1)[..., None, None],
                            axis=-2)[..., 0, :]
  l1 = jnp.abs(own - targets.bbox_targets) * targets.bbox_weights
  num_rois = jnp.maximum(jnp.sum(targets.valid), 1).astype(jnp.float32)
  loss_bbox = jnp.sum(jnp.where(positive[..., None], l1, 0.0)) / num_rois
  return loss_cls, loss_bbox


def mask_loss(mask_logits: jnp.ndarray, mask_targets: jnp.ndarray, labels: jnp.ndarray,
              valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """``mask_logits (..., P, M, M, K)`` (the mask head's NHWC output; or ``(..., P, M, M)``
  already of each RoI's class), ``mask_targets (..., P, M, M)``, ``labels (..., P)`` the
  positives' classes, ``valid (..., P)`` which slots are positives. -> the scalar BCE, mean
  over the valid positives' pixels."""
  if mask_logits.ndim == mask_targets.ndim:
    own = mask_logits.astype(jnp.float32)
  else:
    num_classes = mask_logits.shape[-1]
    idx = jnp.clip(labels, 0, num_classes - 1)[..., None, None, None]
    own = jnp.take_along_axis(mask_logits.astype(jnp.float32), idx, axis=-1)[..., 0]
  bce = sigmoid_bce(own, mask_targets.astype(jnp.float32))
  if valid is None:
    valid = jnp.ones(labels.shape, bool)
  weight = jnp.asarray(valid, jnp.float32)[..., None, None]
  pixels = mask_targets.shape[-1] * mask_targets.shape[-2]
  count = jnp.maximum(jnp.sum(weight), 1.0) * pixels
  return jnp.sum(bce * weight) / count
