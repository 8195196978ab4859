"""Anchors of mmdet's ``AnchorGenerator`` for the official Mask R-CNN / Faster R-CNN config.

    levels = multilevel_anchors([(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)])
    # [(200*336*3, 4), ...] float32 x1y1x2y2, each level ordered (y, x, anchor)

Official config (``anchor_generator``): ``scales=[8]``, ``ratios=[0.5, 1.0, 2.0]``,
``strides=[4, 8, 16, 32, 64]``; the base size of a level is its stride. Every anchor at a
cell is the base anchor shifted by ``(x * stride, y * stride)``: ``center_offset=0``, so the
centres sit on the cell's top-left corner, with no half-stride offset and no rounding (the
rounding belongs to mmdet's legacy ``LegacyAnchorGenerator``, which the config does not use).

Anchors depend on shapes only, so they are numpy constants built at trace time, as the window
masks are; the float32 arithmetic repeats mmdet's step by step, so the values are equal to
mmdet's bit for bit. mmdet 2.11 (the official repository) builds the same values: its grid
shifts are int64 ``arange * stride`` cast to float, the same integers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SCALES = (8.0,)
RATIOS = (0.5, 1.0, 2.0)
STRIDES = (4, 8, 16, 32, 64)


def base_anchors(base_size: float, scales: Sequence[float] = SCALES,
                 ratios: Sequence[float] = RATIOS, center_offset: float = 0.0) -> np.ndarray:
  """``(len(ratios) * len(scales), 4)`` float32 anchors around ``center_offset * base_size``.

  A ratio is height / width: ``h = base * sqrt(r) * s``, ``w = base / sqrt(r) * s``, ordered
  ratio-major (mmdet's ``scale_major=True``: all scales of the first ratio first).
  """
  scales = np.asarray(scales, np.float32)
  ratios = np.asarray(ratios, np.float32)
  # mmdet: h_ratios = sqrt(ratios); w_ratios = 1 / h_ratios; ws = w * w_ratios * scales, all
  # float32 with the python base size cast to float32 (the order of the products matters for
  # the last bit).
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  size = np.float32(base_size)
  ws = (size * w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (size * h_ratios[:, None] * scales[None, :]).reshape(-1)
  center = np.float32(center_offset * base_size)
  half = np.float32(0.5)
  return np.stack([center - half * ws, center - half * hs,
                   center + half * ws, center + half * hs], axis=-1).astype(np.float32)


def grid_anchors(featmap_size: tuple[int, int], stride: int,
                 base: np.ndarray) -> np.ndarray:
  """``(H * W * A, 4)`` float32: ``base (A, 4)`` shifted to every cell of an ``(H, W)`` map,
  ordered (y, x, anchor) as mmdet's ``single_level_grid_priors``."""
  height, width = featmap_size
  shift_x = np.arange(width, dtype=np.float32) * np.float32(stride)
  shift_y = np.arange(height, dtype=np.float32) * np.float32(stride)
  xx, yy = np.meshgrid(shift_x, shift_y)  # (H, W): x varies fastest
  shifts = np.stack([xx, yy, xx, yy], axis=-1).reshape(-1, 1, 4)
  return (base[None, :, :] + shifts).reshape(-1, 4)


def multilevel_anchors(featmap_sizes: Sequence[tuple[int, int]],
                       strides: Sequence[int] = STRIDES, scales: Sequence[float] = SCALES,
                       ratios: Sequence[float] = RATIOS) -> list[np.ndarray]:
  """Per level ``(H_l * W_l * A, 4)`` float32 anchors for feature maps of ``featmap_sizes``
  (the FPN outputs P2..P6 for the official strides)."""
  if len(featmap_sizes) != len(strides):
    raise ValueError(f"{len(featmap_sizes)} feature maps for {len(strides)} anchor strides "
                     f"{tuple(strides)}; give one (H, W) per stride")
  return [grid_anchors(tuple(size), stride, base_anchors(stride, scales, ratios))
          for size, stride in zip(featmap_sizes, strides)]


def num_base_anchors(scales: Sequence[float] = SCALES,
                     ratios: Sequence[float] = RATIOS) -> int:
  """Anchors per cell (``A``): 3 for the official config."""
  return len(scales) * len(ratios)
