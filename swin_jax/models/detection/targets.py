"""Mask R-CNN training targets per image, static shapes: RPN, RCNN (boxes) and masks.

    rpn = rpn_targets(key, anchors, anchor_valid, gt_boxes, gt_valid)          # over all anchors
    rcnn = rcnn_targets(key, proposals, proposal_valid, gt_boxes, gt_valid, gt_labels)
    p = RCNN_SAMPLER.max_pos                                                 # positives' slots
    masks = mask_targets(rcnn.rois[:p], rcnn.pos_gt_inds[:p], rcnn.is_pos[:p], gt_masks)

Ground truth is padded: ``gt_boxes (G, 4)`` x1y1x2y2, ``gt_valid (G,)``, ``gt_labels (G,)``
in ``0..79``, ``gt_masks (G, H, W)`` binary. Batch with ``jax.vmap`` (one key per image);
the losses (``losses.py``) then normalise over the whole batch, as mmdet does.

mmdet's steps (``AnchorHead._get_targets_single``, ``StandardRoIHead.loss``,
``BBoxHead._get_targets_single``, ``mask_target``) with the same numbers:
* RPN: assign the valid anchors (0.7 / 0.3, low-quality matches), draw 256 at half positive;
  drawn positives get label 0 (the one foreground class), weight 1 and deltas to their gt
  (unit stds); drawn negatives label 1 (background = ``num_classes``), weight 1; everything
  else label 1, weight 0. The loss divides by ``max(#pos, 1) + max(#neg, 1)``, summed over
  the images (``SamplingResult.avg_factor``, the same in mmdet 2.11 and 3.3.0).
* RCNN: assign the proposals (0.5 / 0.5 / min 0.5, low-quality matches), prepend the ground
  truth (assigned to itself), draw 512 at a quarter positive; labels in ``0..79`` for
  positives and ``num_classes`` = 80 for negatives, weight 1; positives' deltas with stds
  (0.1, 0.1, 0.2, 0.2). Padding slots: label 80, weight 0.
* Masks: each positive's gt mask cropped to the RoI and resampled to 28 x 28 by RoIAlign
  (aligned, spatial scale 1, mmdet's adaptive ``sampling_ratio=0``), then ``>= 0.5``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models.detection import box_coder, roi_align
from swin_jax.models.detection.assigner import (RCNN_ASSIGNER, RPN_ASSIGNER, AssignerConfig,
                                                max_iou_assign)
from swin_jax.models.detection.sampler import (RCNN_SAMPLER, RPN_SAMPLER, SamplerConfig,
                                               add_gt_as_proposals, random_sample,
                                               sampled_masks)

MASK_SIZE = 28
NUM_CLASSES = 80


class RPNTargets(NamedTuple):
  """Per anchor ``(N,)`` / ``(N, 4)``: ``labels`` int32 (0 foreground, 1 background),
  ``label_weights``, ``bbox_targets`` (deltas), ``bbox_weights`` float32; ``avg_factor ()``
  this image's share of the loss denominator."""
  labels: jnp.ndarray
  label_weights: jnp.ndarray
  bbox_targets: jnp.ndarray
  bbox_weights: jnp.ndarray
  avg_factor: jnp.ndarray


class RCNNTargets(NamedTuple):
  """Per sampled RoI ``(S,)`` / ``(S, 4)``, ``S = sampler.num``, positives in slots
  ``[0, num_pos)``: ``rois`` x1y1x2y2 (gradient stopped), ``labels`` int32 (``num_classes``
  = background), ``label_weights``, ``bbox_targets``, ``bbox_weights`` float32, ``valid`` /
  ``is_pos`` bool, ``pos_gt_inds`` int32 (the positive's gt, 0-based; 0 elsewhere);
  ``num_pos``, ``num_neg () int32``."""
  rois: jnp.ndarray
  labels: jnp.ndarray
  label_weights: jnp.ndarray
  bbox_targets: jnp.ndarray
  bbox_weights: jnp.ndarray
  valid: jnp.ndarray
  is_pos: jnp.ndarray
  pos_gt_inds: jnp.ndarray
  num_pos: jnp.ndarray
  num_neg: jnp.ndarray


def _positive_deltas(boxes: jnp.ndarray, gt_boxes: jnp.ndarray, gt_index: jnp.ndarray,
                     positive: jnp.ndarray, stds: Sequence[float]) -> jnp.ndarray:
  """``(N, 4)`` deltas from ``boxes`` to their gt for ``positive`` rows, 0 elsewhere (where a
  padded gt of zero size would give ``log(0)``)."""
  if gt_boxes.shape[0] == 0:  # no gt slot: nothing is positive
    return jnp.zeros(boxes.shape[:-1] + (4,), jnp.float32)
  deltas = box_coder.encode(boxes, gt_boxes[gt_index], stds=stds)
  return jnp.where(positive[:, None], deltas, 0.0)


def rpn_targets(key: jax.Array, anchors: jnp.ndarray, anchor_valid: jnp.ndarray,
                gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray,
                assigner: AssignerConfig = RPN_ASSIGNER, sampler: SamplerConfig = RPN_SAMPLER,
                stds: Sequence[float] = box_coder.RPN_STDS) -> RPNTargets:
  """One image's RPN targets over ``anchors (N, 4)`` (all levels concatenated, as
  ``anchors.multilevel_anchors``), ``anchor_valid (N,)`` (``assigner.anchor_valid_flags``)."""
  n = anchors.shape[0]
  g = gt_boxes.shape[0]
  assign = max_iou_assign(anchors, gt_boxes, gt_valid, jnp.zeros((g,), jnp.int32), assigner,
                          candidate_valid=anchor_valid)
  sample = random_sample(key, assign.gt_inds, sampler)
  pos, neg = sampled_masks(sample, n)
  labels = jnp.where(pos, 0, 1).astype(jnp.int32)
  label_weights = (pos | neg).astype(jnp.float32)
  bbox_targets = _positive_deltas(anchors, gt_boxes, jnp.maximum(assign.gt_inds - 1, 0), pos,
                                  stds)
  bbox_weights = jnp.broadcast_to(pos[:, None], (n, 4)).astype(jnp.float32)
  avg_factor = (jnp.maximum(sample.num_pos, 1) + jnp.maximum(sample.num_neg, 1)
                ).astype(jnp.float32)
  return RPNTargets(labels, label_weights, bbox_targets, bbox_weights, avg_factor)


def rcnn_targets(key: jax.Array, proposals: jnp.ndarray, proposal_valid: jnp.ndarray,
                 gt_boxes: jnp.ndarray, gt_valid: jnp.ndarray, gt_labels: jnp.ndarray,
                 num_classes: int = NUM_CLASSES, assigner: AssignerConfig = RCNN_ASSIGNER,
                 sampler: SamplerConfig = RCNN_SAMPLER,
                 stds: Sequence[float] = box_coder.RCNN_STDS) -> RCNNTargets:
  """One image's RoIs and their box targets from ``proposals (N, 4)`` (the RPN's, padded:
  ``proposal_valid (N,)``). With ``sampler.add_gt_as_proposals`` the candidates are the
  ``G`` gt slots followed by the ``N`` proposals."""
  proposals = jax.lax.stop_gradient(proposals.astype(jnp.float32))
  gt_labels = jnp.asarray(gt_labels, jnp.int32)
  assign = max_iou_assign(proposals, gt_boxes, gt_valid, gt_labels, assigner,
                          candidate_valid=proposal_valid)
  boxes = proposals
  if sampler.add_gt_as_proposals:
    boxes, assign, _ = add_gt_as_proposals(proposals, assign, jax.lax.stop_gradient(gt_boxes),
                                           gt_valid, gt_labels)
  sample = random_sample(key, assign.gt_inds, sampler)
  rois = boxes[sample.inds]
  is_pos = sample.is_pos
  gt_index = jnp.where(is_pos, jnp.maximum(assign.gt_inds[sample.inds] - 1, 0), 0)
  labels = jnp.where(is_pos, assign.labels[sample.inds], num_classes).astype(jnp.int32)
  label_weights = sample.valid.astype(jnp.float32)
  bbox_targets = _positive_deltas(rois, gt_boxes, gt_index, is_pos, stds)
  bbox_weights = jnp.broadcast_to(is_pos[:, None], bbox_targets.shape).astype(jnp.float32)
  return RCNNTargets(jax.lax.stop_gradient(rois), labels, label_weights, bbox_targets,
                     bbox_weights, sample.valid, is_pos, gt_index.astype(jnp.int32),
                     sample.num_pos, sample.num_neg)


# ---------------------------------------------------------------------------------------
# Mask targets.


def _axis_weights(start: jnp.ndarray, bin_size: jnp.ndarray, grid: jnp.ndarray,
                  size: jnp.ndarray, bins: int, max_grid: int, length: int) -> jnp.ndarray:
  """``(P, bins, length)`` float32: row (or column) ``y``'s total bilinear weight over the
  ``grid (P,)`` samples of each bin along one axis, torchvision's ``roi_align`` sample points
  and ``bilinear_interpolate`` (a sample beyond ``[-1, size]`` weighs nothing; one in the
  margin is clamped to the border). Not yet divided by the sample count."""
  p = start.shape[0]
  rows = jnp.arange(p)[:, None]
  cols = jnp.arange(bins)[None, :]
  ph = jnp.arange(bins, dtype=jnp.float32)[None, :]
  fgrid = grid.astype(jnp.float32)[:, None]
  size = size[:, None]

  def add_sample(s, acc):
    # torchvision: start + ph * bin + (iy + .5f) * bin / grid, in this order.
    coord = (start[:, None] + ph * bin_size[:, None] +
             (s.astype(jnp.float32) + 0.5) * bin_size[:, None] / fgrid)
    low, high, w_low, w_high, inside = roi_align.bilinear_corners(coord, size)
    take = (inside & (s < grid[:, None])).astype(jnp.float32)
    acc = acc.at[rows, cols, low].add(w_low * take)
    return acc.at[rows, cols, high].add(w_high * take)

  return jax.lax.fori_loop(0, max_grid, add_sample, jnp.zeros((p, bins, length), jnp.float32))


def mask_targets(rois: jnp.ndarray, gt_inds: jnp.ndarray, valid: jnp.ndarray,
                 gt_masks: jnp.ndarray, mask_size: int = MASK_SIZE,
                 mask_hw: Optional[jnp.ndarray] = None, binarize: bool = True,
                 chunk: int = 16) -> jnp.ndarray:
  """``(P, mask_size, mask_size)`` float32 targets of positive ``rois (P, 4)`` matched to
  ``gt_inds (P,)`` (0-based) of ``gt_masks (G, H, W)``; rows where ``valid (P,)`` is False
  are 0. mmdet's ``mask_target_single``: RoIs clipped to the mask, then its
  ``BitmapMasks.crop_and_resize``: RoIAlign (aligned, scale 1, ``sampling_ratio=0``) of the
  binary mask, ``>= 0.5`` when ``binarize``.

  ``sampling_ratio=0`` is adaptive: a bin averages ``ceil(roi_h / 28) x ceil(roi_w / 28)``
  samples. Exact here with static shapes because bilinear sampling is separable: the target
  is ``A_y @ mask @ A_x^T / count``, where ``A_y (28, H)`` sums each bin's sample weights
  per row over up to ``ceil(H / 28)`` samples (masked beyond the RoI's own count), and the same
  for x. Each product is ``28 x H x W`` multiply-adds per RoI, taken ``chunk`` RoIs at a time
  so that only ``chunk`` gathered masks are ever in memory.

  ``mask_hw (2,)``: the masks' true size, if smaller than the array (it sets the clip and
  RoIAlign's border). mmdet 3.3.0 pads masks to the batch canvas (``pad_mask=True``): leave
  it ``None``; mmdet 2.11 keeps each image's own padded size (``img_meta['pad_shape']``).
  The two differ only where an object touches the bottom or right edge of an image that
  fills its padded size.
  """
  gt_masks = jnp.asarray(gt_masks)
  p = rois.shape[0]
  g, height, width = gt_masks.shape
  if g == 0 or p == 0:  # no gt slot, so no positive
    return jnp.zeros((p, mask_size, mask_size), jnp.float32)
  if mask_hw is None:
    mask_hw = jnp.array([height, width], jnp.float32)
  mask_hw = jnp.asarray(mask_hw, jnp.float32)
  h, w = mask_hw[0], mask_hw[1]
  rois = jax.lax.stop_gradient(rois.astype(jnp.float32))
  x1 = jnp.clip(rois[:, 0], 0.0, w)
  y1 = jnp.clip(rois[:, 1], 0.0, h)
  x2 = jnp.clip(rois[:, 2], 0.0, w)
  y2 = jnp.clip(rois[:, 3], 0.0, h)
  # torchvision aligned: shift by half a pixel, no minimum RoI size.
  start_x, start_y = x1 - 0.5, y1 - 0.5
  roi_w = (x2 - 0.5) - start_x
  roi_h = (y2 - 0.5) - start_y
  out = np.float32(mask_size)
  max_gx = -(-width // mask_size)
  max_gy = -(-height // mask_size)
  grid_x = jnp.clip(jnp.ceil(roi_w / out), 0, max_gx).astype(jnp.int32)
  grid_y = jnp.clip(jnp.ceil(roi_h / out), 0, max_gy).astype(jnp.int32)
  ay = _axis_weights(start_y, roi_h / out, grid_y, jnp.broadcast_to(h, (p,)), mask_size,
                     max_gy, height)
  ax = _axis_weights(start_x, roi_w / out, grid_x, jnp.broadcast_to(w, (p,)), mask_size,
                     max_gx, width)
  gt_inds = jnp.clip(jnp.asarray(gt_inds, jnp.int32), 0, g - 1)

  def one(args):
    a_y, a_x, index = args
    mask = gt_masks[index].astype(jnp.float32)                             # (H, W)
    hi = jax.lax.Precision.HIGHEST  # the weights must not round to bf16 before the 0.5 test
    return jnp.matmul(jnp.matmul(a_y, mask, precision=hi), a_x.T, precision=hi)

  sums = jax.lax.map(one, (ay, ax, gt_inds), batch_size=min(chunk, p))
  count = jnp.maximum(grid_y * grid_x, 1).astype(jnp.float32)
  targets = sums / count[:, None, None]
  if binarize:
    targets = (targets >= 0.5).astype(jnp.float32)
  return jnp.where(jnp.asarray(valid, bool)[:, None, None], targets, 0.0)
