"""RoIAlign (``aligned=True``) over one feature map or an FPN pyramid, static shapes, NHWC.

    feats = roi_align(p2, boxes, batch_idx, (7, 7), spatial_scale=1 / 4)      # (R, 7, 7, C)
    feats = multilevel_roi_align([p2, p3, p4, p5], boxes, batch_idx, (7, 7))  # mmdet's
    # SingleRoIExtractor: each box read from the level of its size (map_roi_levels)

Numerics are torchvision's ``roi_align(aligned=True)`` (= mmcv's ``RoIAlign`` with
``aligned=True``, ``pool_mode='avg'``): the box, scaled to the map, is shifted by -0.5 pixel;
each of the ``out_h x out_w`` bins averages ``sampling_ratio^2`` bilinear samples at the
centres of a regular sub-grid; a sample more than one pixel outside the map (``y < -1`` or
``y > H``) counts as 0, one within that margin is clamped to the border.

The sampling ratio is fixed. mmdet's config says ``sampling_ratio=0``: "adaptive",
``ceil(roi_size / out_size)`` samples per bin, which depends on each box's size, a
data-dependent loop bound that no static program has. A fixed 2 is what Detectron2 and the
JAX detection codebases (scenic, fvlm) use.

Memory: the samples are gathered one sub-grid position and one bilinear corner at a time and
accumulated into ``(R, out_h, out_w, C)``, so no ``(R, out_h * s, out_w * s, 4, C)`` block
is ever materialised.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

FINEST_SCALE = 56
FEATMAP_STRIDES = (4, 8, 16, 32)
SAMPLING_RATIO = 2


def _axis_samples(start: jnp.ndarray, bin_size: jnp.ndarray, bins: int, sample: int,
                  sampling_ratio: int, size: jnp.ndarray):
  """Bilinear corners along one axis for sample ``sample`` of every bin.

  ``start, bin_size, size (R,)`` float32 -> ``(low, high) (R, bins) int32``, ``(w_low,
  w_high) (R, bins)`` float32 weights and ``inside (R, bins)`` bool, torchvision's
  ``bilinear_interpolate`` one axis at a time (it is separable, masking included).
  """
  p = jnp.arange(bins, dtype=jnp.float32)
  # torchvision: start + p * bin + (iy + .5f) * bin / grid, in this order.
  coord = (start[:, None] + p[None, :] * bin_size[:, None] +
           np.float32(sample + 0.5) * bin_size[:, None] / np.float32(sampling_ratio))
  return bilinear_corners(coord, size[:, None])


def bilinear_corners(coord: jnp.ndarray, size: jnp.ndarray):
  """torchvision's ``bilinear_interpolate`` along one axis, for sample positions ``coord``
  on an axis of ``size`` pixels (broadcastable float32): the corners ``(low, high)`` int32,
  their weights ``(1 - frac, frac)`` and ``inside`` (``-1 <= coord <= size``; samples
  outside count as zero)."""
  inside = (coord >= -1.0) & (coord <= size)
  coord = jnp.maximum(coord, 0.0)
  low = jnp.floor(coord)
  at_edge = low >= size - 1
  low = jnp.where(at_edge, size - 1, low)
  high = jnp.where(at_edge, size - 1, low + 1)
  coord = jnp.where(at_edge, low, coord)
  frac = coord - low
  return low.astype(jnp.int32), high.astype(jnp.int32), 1.0 - frac, frac, inside


def _roi_align_flat(flat: jnp.ndarray, batch_idx: jnp.ndarray, boxes: jnp.ndarray,
                    scale: jnp.ndarray, height: jnp.ndarray, width: jnp.ndarray,
                    offset: jnp.ndarray, output_size: tuple[int, int],
                    sampling_ratio: int) -> jnp.ndarray:
  """RoIAlign over maps flattened to ``flat (B, S, C)``; each RoI reads the map of size
  ``(height, width)`` that starts at row ``offset`` of ``S``, at ``scale``. All per-RoI
  arguments are ``(R,)``; ``boxes (R, 4)``. -> ``(R, out_h, out_w, C)`` float32."""
  out_h, out_w = output_size
  boxes = boxes.astype(jnp.float32)
  start_x = boxes[:, 0] * scale - 0.5
  start_y = boxes[:, 1] * scale - 0.5
  bin_w = (boxes[:, 2] * scale - 0.5 - start_x) / np.float32(out_w)
  bin_h = (boxes[:, 3] * scale - 0.5 - start_y) / np.float32(out_h)
  fheight, fwidth = height.astype(jnp.float32), width.astype(jnp.float32)
  b = batch_idx.astype(jnp.int32)[:, None, None]
  row0 = offset.astype(jnp.int32)[:, None, None]
  w = width.astype(jnp.int32)[:, None, None]
  total = jnp.zeros((boxes.shape[0], out_h, out_w, flat.shape[-1]), jnp.float32)
  for iy in range(sampling_ratio):
    y_lo, y_hi, wy_lo, wy_hi, in_y = _axis_samples(start_y, bin_h, out_h, iy, sampling_ratio,
                                                   fheight)
    for ix in range(sampling_ratio):
      x_lo, x_hi, wx_lo, wx_hi, in_x = _axis_samples(start_x, bin_w, out_w, ix,
                                                     sampling_ratio, fwidth)
      inside = (in_y[:, :, None] & in_x[:, None, :])[..., None]
      sample = 0.0
      # torchvision's w1 v1 + w2 v2 + w3 v3 + w4 v4: (low, low), (low, high), (high, low),
      # (high, high) in (y, x).
      for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
          rows = row0 + yi[:, :, None] * w + xi[:, None, :]               # (R, out_h, out_w)
          weight = (wy[:, :, None] * wx[:, None, :])[..., None]
          sample = sample + weight * flat[b, rows].astype(jnp.float32)
      total = total + jnp.where(inside, sample, 0.0)
  return total / np.float32(sampling_ratio * sampling_ratio)


def roi_align(features: jnp.ndarray, boxes: jnp.ndarray, batch_idx: jnp.ndarray,
              output_size: int | Sequence[int], spatial_scale: float,
              sampling_ratio: int = SAMPLING_RATIO) -> jnp.ndarray:
  """``features (B, H, W, C)``, ``boxes (R, 4)`` x1y1x2y2 in image coordinates, ``batch_idx
  (R,)`` the image of each box -> ``(R, out_h, out_w, C)`` float32; torchvision's
  ``roi_align(aligned=True)`` at a fixed ``sampling_ratio``."""
  if sampling_ratio <= 0:
    raise ValueError(f"sampling_ratio {sampling_ratio}: the adaptive ratio (<= 0) depends on "
                     "each box's size and has no static shape; give a fixed ratio such as 2")
  out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  bsz, height, width, c = features.shape
  r = boxes.shape[0]
  full = lambda v: jnp.full((r,), v)  # noqa: E731
  return _roi_align_flat(features.reshape(bsz, height * width, c), batch_idx, boxes,
                         full(np.float32(spatial_scale)), full(height), full(width), full(0),
                         out, sampling_ratio)


def map_roi_levels(boxes: jnp.ndarray, num_levels: int,
                   finest_scale: float = FINEST_SCALE) -> jnp.ndarray:
  """``(R, 4) -> (R,)`` int32 pyramid level of each box, mmdet's ``map_roi_levels``:
  ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to ``[0, num_levels - 1]``, so
  boxes under 112 px go to level 0 (P2), under 224 to P3, under 448 to P4, the rest to P5.
  A box of negative area (never produced by decoding) goes to level 0."""
  boxes = boxes.astype(jnp.float32)
  scale = jnp.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
  level = jnp.floor(jnp.log2(scale / np.float32(finest_scale) + np.float32(1e-6)))
  level = jnp.clip(jnp.nan_to_num(level, nan=0.0), 0, num_levels - 1)
  return level.astype(jnp.int32)


def multilevel_roi_align(features: Sequence[jnp.ndarray], boxes: jnp.ndarray,
                         batch_idx: jnp.ndarray, output_size: int | Sequence[int],
                         strides: Sequence[int] = FEATMAP_STRIDES,
                         sampling_ratio: int = SAMPLING_RATIO,
                         finest_scale: float = FINEST_SCALE) -> jnp.ndarray:
  """mmdet's ``SingleRoIExtractor`` (RoIAlign, aligned) with a fixed sampling ratio.

  ``features``: the pyramid ``[(B, H_l, W_l, C)]`` whose strides are ``strides`` (P2..P5:
  4..32; P6 is the RPN's only); ``boxes (R, 4)``, ``batch_idx (R,)``. Each box is read from
  level ``map_roi_levels(boxes)`` at scale ``1 / stride``, all in one gather: the levels are
  flattened into one ``(B, sum H_l W_l, C)`` array and a box indexes its level's rows.
  -> ``(R, out_h, out_w, C)`` float32.
  """
  if len(features) != len(strides):
    raise ValueError(f"{len(features)} feature maps for strides {tuple(strides)}")
  if sampling_ratio <= 0:
    raise ValueError(f"sampling_ratio {sampling_ratio}: the adaptive ratio (<= 0) depends on "
                     "each box's size and has no static shape; give a fixed ratio such as 2")
  out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  bsz, c = features[0].shape[0], features[0].shape[-1]
  level = map_roi_levels(boxes, len(features), finest_scale)
  sizes = [f.shape[1:3] for f in features]
  offsets = np.cumsum([0] + [h * w for h, w in sizes])[:-1]
  per_level = lambda values, dtype: jnp.asarray(np.asarray(values, dtype))[level]  # noqa: E731
  flat = jnp.concatenate([f.reshape(bsz, -1, c) for f in features], axis=1)
  return _roi_align_flat(flat, batch_idx, boxes,
                         per_level([1.0 / s for s in strides], np.float32),
                         per_level([h for h, _ in sizes], np.int32),
                         per_level([w for _, w in sizes], np.int32),
                         per_level(offsets, np.int32), out, sampling_ratio)
