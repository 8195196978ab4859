"""Pure window operations of the Swin Transformer.

Everything here depends only on static shapes. The index and mask builders return
numpy constants, cached per shape, so a jitted model embeds them once at trace time
instead of carrying them as variables or recomputing them every step.

Conventions: activations are NHWC; a window size or shift is an ``(h, w)`` pair; tokens
inside a window are flattened row-major, windows are ordered batch-major, then
row-major over the window grid (the official ``window_partition`` order).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np

# The official code fills cross-region logits with -100 (not -inf). Swin V2's logits
# are bounded, so this value is part of its numerics and must be reproduced exactly.
MASK_FILL = -100.0

Pair = tuple[int, int]


def to_pair(value: int | Sequence[int]) -> Pair:
  """``7 -> (7, 7)``; ``(7, 5) -> (7, 5)``."""
  if isinstance(value, (int, np.integer)):
    return int(value), int(value)
  h, w = value
  return int(h), int(w)


def window_partition(x: jnp.ndarray, window: Pair) -> jnp.ndarray:
  """Cuts ``(B, H, W, C)`` into windows ``(B * nW, wh * ww, C)``.

  H and W must be multiples of the window (pad first, see ``pad_to_multiple``).
  """
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b * (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: jnp.ndarray, window: Pair, height: int,
                   width: int) -> jnp.ndarray:
  """Inverse of ``window_partition``: ``(B * nW, wh * ww, C) -> (B, H, W, C)``."""
  wh, ww = window
  c = windows.shape[-1]
  gh, gw = height // wh, width // ww
  x = windows.reshape(-1, gh, gw, wh, ww, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, height, width, c)


def cyclic_shift(x: jnp.ndarray, shift: Pair) -> jnp.ndarray:
  """Rolls ``(B, H, W, C)`` up/left by ``shift``: ``out[i, j] = x[(i + s) % H, (j + s) % W]``."""
  return jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))


def reverse_cyclic_shift(x: jnp.ndarray, shift: Pair) -> jnp.ndarray:
  """Undoes ``cyclic_shift``."""
  return jnp.roll(x, shift, axis=(1, 2))


def padding_to_multiple(size: int, multiple: int) -> int:
  """How many rows/columns make ``size`` a multiple of ``multiple``."""
  return (multiple - size % multiple) % multiple


def pad_bottom_right(x: jnp.ndarray, pad_h: int, pad_w: int) -> jnp.ndarray:
  """Zero-pads ``(B, H, W, C)`` at the bottom and right (timm's convention)."""
  if pad_h == 0 and pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


@functools.lru_cache(maxsize=None)
def relative_position_index(window: Pair) -> np.ndarray:
  """Index into the bias table for every (query, key) pair of a window.

  Returns ``(N, N)`` int32 with ``N = wh * ww`` and
  ``idx[i, j] = (h_i - h_j + wh - 1) * (2 ww - 1) + (w_i - w_j + ww - 1)``,
  so values lie in ``[0, (2 wh - 1)(2 ww - 1))`` and the diagonal is the table centre.
  """
  wh, ww = window
  hh, ww_ = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
  coords = np.stack([hh.ravel(), ww_.ravel()])  # (2, N)
  rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
  index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)
  index = index.astype(np.int32)
  index.flags.writeable = False
  return index


@functools.lru_cache(maxsize=None)
def shift_mask(height: int, width: int, window: Pair, shift: Pair) -> np.ndarray:
  """Additive attention mask of a shifted-window block.

  After the cyclic shift, windows at the bottom/right border hold tokens from regions that
  were not adjacent in the image. The (padded) ``height x width`` grid is labelled with up
  to 9 regions (row slices ``[0, -wh), [-wh, -sh), [-sh, H)``, same for columns) and two
  tokens of one window may attend to each other only if they share a label.

  Returns ``(nW, N, N)`` float32: 0 within a region, ``MASK_FILL`` across regions.
  """
  wh, ww = window
  sh, sw = shift
  labels = np.zeros((height, width), np.float32)
  # Python slice semantics on purpose: with a zero shift, ``slice(-w, -0)`` is empty and
  # ``slice(-0, None)`` is everything, exactly as the official/timm loops behave.
  row_slices = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None))
  col_slices = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None))
  label = 0
  for rows in row_slices:
    for cols in col_slices:
      labels[rows, cols] = label
      label += 1
  # numpy in, numpy out: window_partition only uses array methods.
  windows = window_partition(labels[None, :, :, None], window)[..., 0]  # (nW, N)
  differs = windows[:, None, :] != windows[:, :, None]
  mask = np.where(differs, MASK_FILL, 0.0).astype(np.float32)
  mask.flags.writeable = False
  return mask


def clamp_window(resolution: Pair, window: Pair, shift: Pair) -> tuple[Pair, Pair]:
  """The official window clamp, per dimension.

  Where a stage's resolution is no larger than the window, the window shrinks to the
  resolution and that dimension is not shifted (one window covers it, nothing to shift).
  """
  new_window = tuple(r if r <= w else w for r, w in zip(resolution, window))
  new_shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, new_window, shift))
  return new_window, new_shift


def block_geometry(resolution: Pair, window_size: int | Sequence[int], block: int,
                   clamp: bool = True) -> tuple[Pair, Pair]:
  """``(window, shift)`` of block ``block`` of a stage at ``resolution``: odd blocks shift by
  half a window (SW-MSA), then the official ``clamp_window``.

  ``clamp=False`` is the official segmentation/detection backbone, which never clamps (small
  maps are padded up to one window instead); ``resolution`` is then unused.
  """
  window = to_pair(window_size)
  shift = (window[0] // 2, window[1] // 2) if block % 2 else (0, 0)
  if not clamp:
    return window, shift
  return clamp_window(resolution, window, shift)


@functools.lru_cache(maxsize=None)
def relative_coords_table(window: Pair, pretrained_window: Pair = (0, 0)) -> np.ndarray:
  """Swin V2's log-spaced relative coordinates, the input of the continuous position bias.

  Returns ``(2 wh - 1, 2 ww - 1, 2)`` float32: entry ``[i, j]`` holds the (dh, dw) offset
  ``(i - (wh - 1), j - (ww - 1))``, each divided by ``pretrained - 1`` (the window the
  weights were trained with) or, when that is 0, by ``window - 1`` (at least 1), scaled to
  [-8, 8] and mapped through ``sign(x) * log2(|x| + 1) / log2(8)``. ``window`` is the
  (clamped) window of the block. Row-major over (dh, dw), so ``relative_position_index``
  indexes its flattened ``((2wh-1)(2ww-1), 2)`` form, as in the official code.
  """
  axes = []
  for size, pretrained in zip(window, pretrained_window):
    offsets = np.arange(-(size - 1), size, dtype=np.float32)
    axes.append(offsets / np.float32(max((pretrained if pretrained > 0 else size) - 1, 1)))
  table = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1) * np.float32(8)
  table = np.sign(table) * np.log2(np.abs(table) + np.float32(1)) / np.float32(np.log2(8))
  table = table.astype(np.float32)
  table.flags.writeable = False
  return table
