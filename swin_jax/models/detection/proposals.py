"""RPN proposals with static shapes, as the official config's ``RPNHead`` makes them.

    boxes, scores, valid = propose(cls_logits, deltas, anchors, image_hw)
    # (B, 1000, 4) x1y1x2y2, (B, 1000), (B, 1000): rows where ``valid`` is False are padding

Official cfg (Swin-Transformer-Object-Detection, mmdet 2.11, ``mask_rcnn_swin_fpn.py``):
train ``rpn_proposal`` = ``nms_pre=2000, max_per_img=1000, nms=dict(iou_threshold=0.7),
min_bbox_size=0``; test ``rpn`` = the same with ``nms_pre=1000``. Per image:

1. on every level, sigmoid objectness of its ``H * W * A`` anchors in (y, x, anchor) order,
   and the ``nms_pre`` best (all of them when a level has no more);
2. their deltas decoded on their anchors with the RPN stds (1, 1, 1, 1) and clipped to the
   image;
3. one NMS at 0.7 over all levels with the level as the category (mmcv's ``batched_nms``:
   boxes of different levels never suppress each other);
4. the first ``max_per_img`` kept boxes, by score.

Static shapes: every level's top-k has a fixed size, NMS (``nms.batched_nms``) returns a
fixed number of indices with a validity mask, and the proposals are padded to
``max_per_img`` rows (zeros where invalid).

Differences between mmdet versions, and what this follows (2.11):
* ``min_bbox_size=0``: mmdet 2.11 filters only when ``min_bbox_size > 0``, so no box is
  dropped; mmdet 3.x filters when ``>= 0`` and so drops zero-width or zero-height boxes
  (e.g. anchors clipped away in the padding). Here ``min_bbox_size > 0`` filters (2.11); to
  get 2.11's behaviour from 3.3.0, give it ``min_bbox_size=-1``.
* the per-level top-k is ``topk`` in 2.11 and a descending ``sort`` in 3.3.0; neither is
  stable, so of exactly equal scores either may keep another one. Here equal scores keep
  the lower anchor index (``lax.top_k``), and NMS visits them in that order.
* with more than 10,000 boxes (train: 5 levels x 2,000), mmcv runs NMS level by level
  instead of shifting boxes apart; the kept set is the same.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models.detection import box_coder
from swin_jax.models.detection import nms as nms_lib

TRAIN_NMS_PRE = 2000
TEST_NMS_PRE = 1000
MAX_PER_IMG = 1000
IOU_THRESHOLD = 0.7
MIN_BBOX_SIZE = 0.0


def flatten_level(cls_logits: jnp.ndarray, deltas: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(B, H, W, A), (B, H, W, 4A) -> (B, H*W*A), (B, H*W*A, 4)``: anchors in (y, x, anchor)
  order, the order of ``anchors.grid_anchors``."""
  b = cls_logits.shape[0]
  return cls_logits.reshape(b, -1), deltas.reshape(b, -1, 4)


def level_top_k(scores: jnp.ndarray, deltas: jnp.ndarray, anchors: np.ndarray | jnp.ndarray,
                nms_pre: int) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """The ``nms_pre`` best anchors of one level: ``scores (B, N)``, ``deltas (B, N, 4)``,
  ``anchors (N, 4)`` -> ``(B, k)``, ``(B, k, 4)``, ``(B, k, 4)`` with ``k = min(nms_pre,
  N)`` (all ``N`` in anchor order when ``nms_pre <= 0`` or ``>= N``, as mmdet)."""
  n = scores.shape[1]
  anchors = jnp.asarray(anchors, jnp.float32)
  if not 0 < nms_pre < n:
    return scores, deltas, jnp.broadcast_to(anchors, deltas.shape)
  top, index = jax.lax.top_k(scores, nms_pre)  # ties: lower index first
  return top, jnp.take_along_axis(deltas, index[..., None], axis=1), anchors[index]


def propose(cls_logits: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray],
            anchors: Sequence[np.ndarray | jnp.ndarray], image_hw: Any,
            nms_pre: int = TEST_NMS_PRE, max_per_img: int = MAX_PER_IMG,
            iou_threshold: float = IOU_THRESHOLD, min_bbox_size: float = MIN_BBOX_SIZE
            ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Proposals of a batch from the RPN outputs (see the module docstring).

  Args:
    cls_logits: per level ``(B, H_l, W_l, A)`` objectness logits (``RPNHead``).
    deltas: per level ``(B, H_l, W_l, 4A)``.
    anchors: per level ``(H_l * W_l * A, 4)`` (``anchors.multilevel_anchors``).
    image_hw: the size boxes are clipped to: a static ``(H, W)`` for the whole batch, or
      ``(B, 2)`` per-image sizes (images padded to a common canvas clip to their own size,
      mmdet's ``img_shape``).
    nms_pre: boxes per level kept before NMS (2000 train, 1000 test officially).
    max_per_img: proposals per image after NMS (the padded output size).
    iou_threshold: NMS IoU threshold (a Python float).
    min_bbox_size: ``> 0`` drops boxes whose width or height is not above it (mmdet 2.11).

  Returns:
    ``(boxes (B, max_per_img, 4), scores (B, max_per_img), valid (B, max_per_img))``,
    score-descending; padding rows are zeros.
  """
  if not len(cls_logits) == len(deltas) == len(anchors):
    raise ValueError(f"{len(cls_logits)} objectness maps, {len(deltas)} delta maps and "
                     f"{len(anchors)} anchor levels: give one of each per level")
  scores, picked_deltas, picked_anchors, levels = [], [], [], []
  for level, (logits, reg, level_anchors) in enumerate(zip(cls_logits, deltas, anchors)):
    logits, reg = flatten_level(logits, reg)
    if logits.shape[1] != np.shape(level_anchors)[0]:
      raise ValueError(f"level {level}: {logits.shape[1]} objectness scores for "
                       f"{np.shape(level_anchors)[0]} anchors")
    # mmdet ranks the sigmoid scores (saturated ones tie where the logits do not).
    top, reg, level_anchors = level_top_k(jax.nn.sigmoid(logits.astype(jnp.float32)),
                                          reg.astype(jnp.float32), level_anchors, nms_pre)
    scores.append(top)
    picked_deltas.append(reg)
    picked_anchors.append(level_anchors)
    levels.append(np.full(top.shape[1], level, np.int32))
  scores = jnp.concatenate(scores, axis=1)
  boxes = box_coder.decode(jnp.concatenate(picked_anchors, axis=1),
                           jnp.concatenate(picked_deltas, axis=1), box_coder.RPN_STDS,
                           max_shape=image_hw)
  level_ids = jnp.asarray(np.concatenate(levels))
  valid = jnp.ones(scores.shape, bool)
  if min_bbox_size > 0:
    valid = ((boxes[..., 2] - boxes[..., 0] > min_bbox_size) &
             (boxes[..., 3] - boxes[..., 1] > min_bbox_size))

  def one_image(b, s, v):
    return nms_lib.batched_nms(b, s, level_ids, iou_threshold, max_per_img, v)

  index, keep = jax.vmap(one_image)(boxes, scores, valid)
  boxes = jnp.where(keep[..., None], jnp.take_along_axis(boxes, index[..., None], axis=1), 0.0)
  scores = jnp.where(keep, jnp.take_along_axis(scores, index, axis=1), 0.0)
  return boxes, scores, keep
