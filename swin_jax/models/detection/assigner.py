"""mmdet's ``MaxIoUAssigner`` with static shapes: padded ground truth, candidate validity.

    result = max_iou_assign(anchors, gt_boxes, gt_valid, gt_labels, RPN_ASSIGNER,
                            candidate_valid=anchor_valid)
    # result.gt_inds (N,): 0 negative, -1 ignored, k >= 1 positive matched to gt k - 1

The encoding is mmdet's ``AssignResult.gt_inds``, kept so the numbers read the same as
mmdet's: ``0`` = negative (background), ``-1`` = ignored (IoU in the band between the
thresholds, or an invalid candidate), ``k >= 1`` = positive, matched to ground truth ``k - 1``.

mmdet's rule, in its order (the order matters; later steps overwrite earlier ones):
1. every candidate starts ignored (-1);
2. candidates whose best IoU is in ``[0, neg_iou_thr)`` become negative (0);
3. candidates whose best IoU is ``>= pos_iou_thr`` take their argmax gt (first on ties);
4. ``match_low_quality``: each gt whose best IoU is ``>= min_pos_iou`` takes its best
   candidates (all that tie with ``gt_max_assign_all``, else the first), gts in index order,
   so of two gts that both claim a candidate the later one wins.

Static shapes: ground truth is padded to ``G`` boxes with ``gt_valid (G,)``; a padded gt's
IoU row is -1, so it is never anyone's argmax or low-quality match. Invalid candidates
(``candidate_valid``: anchors of cells outside the image's padded area, padded proposals) are
what mmdet drops before assigning (``flat_anchors[inside_flags]``): their IoU column is -1, so
they take no part in step 4's per-gt maxima, and they come out ignored (-1) with IoU 0.
With no valid gt at all every valid candidate is negative with IoU 0 (mmdet's ``num_gts ==
0`` branch).

Both Mask R-CNN assigners of the official config (mmdet 2.11 fork) and of mmdet 3.3.0 are
``match_low_quality=True`` and ``ignore_iof_thr=-1`` (crowd boxes are not assigned against:
leave them out of the valid ground truth). ``gpu_assign_thr`` only moves mmdet's work to the CPU.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence, Union

import jax.numpy as jnp
import numpy as np

# mmdet ``bbox_overlaps`` clamps the union from below by this.
IOU_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class AssignerConfig:
  """``MaxIoUAssigner`` settings. ``neg_iou_thr`` a float (negatives in ``[0, thr)``) or a
  ``(low, high)`` pair (negatives in ``[low, high)``)."""
  pos_iou_thr: float
  neg_iou_thr: Union[float, tuple[float, float]]
  min_pos_iou: float = 0.0
  gt_max_assign_all: bool = True
  match_low_quality: bool = True


# ``train_cfg.rpn.assigner`` and ``train_cfg.rcnn.assigner`` of mask_rcnn_swin_fpn.py.
RPN_ASSIGNER = AssignerConfig(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
RCNN_ASSIGNER = AssignerConfig(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5)


class AssignResult(NamedTuple):
  """Per candidate: ``gt_inds (N,) int32`` (0 neg, -1 ignored, k >= 1 gt k - 1),
  ``max_overlaps (N,) float32`` (best IoU with a valid gt), ``labels (N,) int32`` (the
  matched gt's label for positives, -1 otherwise)."""
  gt_inds: jnp.ndarray
  max_overlaps: jnp.ndarray
  labels: jnp.ndarray


def bbox_overlaps(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
  """``(M, 4), (N, 4) -> (M, N)`` IoU of x1y1x2y2 boxes, mmdet's ``bbox_overlaps`` arithmetic
  (no ``+1``; the union clamped to ``>= 1e-6``, so degenerate boxes give 0, not NaN)."""
  boxes1 = boxes1.astype(jnp.float32)
  boxes2 = boxes2.astype(jnp.float32)
  area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
  area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
  lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  overlap = wh[..., 0] * wh[..., 1]
  union = jnp.maximum(area1[:, None] + area2[None, :] - overlap, np.float32(IOU_EPS))
  return overlap / union


def max_iou_assign(candidates: jnp.ndarray, gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray,
                   gt_labels: jnp.ndarray, cfg: AssignerConfig,
                   candidate_valid: jnp.ndarray | None = None) -> AssignResult:
  """Assign ``candidates (N, 4)`` (anchors or proposals) to padded ground truth ``gt_boxes
  (G, 4)``, ``gt_valid (G,)`` bool, ``gt_labels (G,)`` int; ``candidate_valid (N,)`` bool
  (default all). Pure and jit-able; ``cfg`` is static."""
  n, g = candidates.shape[0], gt_boxes.shape[0]
  cand_valid = (jnp.ones((n,), bool) if candidate_valid is None
                else jnp.asarray(candidate_valid, bool))
  if g == 0:  # no gt slots at all: the no-gt branch below, without empty reductions
    return AssignResult(jnp.where(cand_valid, 0, -1).astype(jnp.int32),
                        jnp.zeros((n,), jnp.float32), jnp.full((n,), -1, jnp.int32))
  gt_valid = jnp.asarray(gt_valid, bool)
  live = gt_valid[:, None] & cand_valid[None, :]
  # -1 never reaches a threshold (all >= 0) and loses every max to a real IoU (>= 0).
  overlaps = jnp.where(live, bbox_overlaps(gt_boxes, candidates), -1.0)   # (G, N)

  max_overlaps = overlaps.max(axis=0)
  argmax_overlaps = overlaps.argmax(axis=0)        # first maximum, as torch's max on CPU
  gt_max_overlaps = overlaps.max(axis=1)           # (G,)

  gt_inds = jnp.full((n,), -1, jnp.int32)
  if isinstance(cfg.neg_iou_thr, (tuple, list)):
    low, high = cfg.neg_iou_thr
    negative = (max_overlaps >= low) & (max_overlaps < high)
  else:
    negative = (max_overlaps >= 0) & (max_overlaps < cfg.neg_iou_thr)
  gt_inds = jnp.where(negative, 0, gt_inds)
  gt_inds = jnp.where(max_overlaps >= cfg.pos_iou_thr, argmax_overlaps + 1, gt_inds)

  if cfg.match_low_quality:
    claims = gt_valid & (gt_max_overlaps >= cfg.min_pos_iou)               # (G,)
    if cfg.gt_max_assign_all:
      best = overlaps == gt_max_overlaps[:, None]                          # (G, N)
    else:
      best = jnp.arange(n)[None, :] == overlaps.argmax(axis=1)[:, None]
    claimed = claims[:, None] & best & live
    # mmdet loops over the gts in order, so the last claiming gt wins.
    last = jnp.max(jnp.where(claimed, jnp.arange(g, dtype=jnp.int32)[:, None], -1), axis=0)
    gt_inds = jnp.where(last >= 0, last + 1, gt_inds)

  # No valid gt: mmdet's ``num_gts == 0`` branch, every candidate negative with IoU 0.
  any_gt = jnp.any(gt_valid)
  gt_inds = jnp.where(any_gt, gt_inds, 0)
  max_overlaps = jnp.where(any_gt, max_overlaps, 0.0)
  # Candidates mmdet never saw: ignored, IoU 0.
  gt_inds = jnp.where(cand_valid, gt_inds, -1)
  max_overlaps = jnp.where(cand_valid, max_overlaps, 0.0)
  labels = jnp.where(gt_inds > 0, jnp.asarray(gt_labels, jnp.int32)[jnp.maximum(gt_inds - 1, 0)],
                     -1)
  return AssignResult(gt_inds.astype(jnp.int32), max_overlaps.astype(jnp.float32),
                      labels.astype(jnp.int32))


def anchor_valid_flags(featmap_sizes: Sequence[tuple[int, int]], pad_hw: jnp.ndarray,
                       strides: Sequence[int], num_base_anchors: int = 3) -> jnp.ndarray:
  """``(sum_l H_l W_l A,)`` bool: anchors whose cell lies inside the image's padded area,
  mmdet's ``AnchorGenerator.valid_flags``: at level ``l`` cell ``(y, x)`` is valid iff ``y <
  ceil(pad_h / stride)`` and ``x < ceil(pad_w / stride)``. ``pad_hw (2,)`` (may be traced):
  the image's own padded size (``img_meta['pad_shape']``: the resized image padded to a
  multiple of 32), which on a shared batch canvas is smaller than the feature maps.

  With the official ``allowed_border=-1`` these flags are the whole anchor validity
  (``anchor_inside_flags`` adds the in-image test only for ``allowed_border >= 0``).
  Levels concatenated in order, each (y, x, anchor) as ``anchors.multilevel_anchors``.
  """
  pad_hw = jnp.asarray(pad_hw)
  flags = []
  for (h, w), stride in zip(featmap_sizes, strides):
    # ceil(pad / stride) in integers: pad sizes are whole pixels.
    pad = pad_hw.astype(jnp.int32)
    valid_h = jnp.minimum((pad[0] + stride - 1) // stride, h)
    valid_w = jnp.minimum((pad[1] + stride - 1) // stride, w)
    ys = np.arange(h)[:, None, None]
    xs = np.arange(w)[None, :, None]
    cell = (ys < valid_h) & (xs < valid_w)                                 # (H, W, 1)
    flags.append(jnp.broadcast_to(cell, (h, w, num_base_anchors)).reshape(-1))
  return jnp.concatenate(flags)
