"""Pure window operations of the Swin Transformer, for any number of spatial dimensions.

Everything here depends only on static shapes. The index and mask builders return
numpy constants, cached per shape, so a jitted model embeds them once at trace time
instead of carrying them as variables or recomputing them every step.

Conventions: activations are channels-last, ``(B, *spatial, C)``: NHWC for the 2D Swin,
``(B, D, H, W, C)`` for 3D models (nnFormer); a window size or shift is a tuple with one
entry per spatial dimension (``(h, w)`` in 2D). Tokens inside a window are flattened
row-major, windows are ordered batch-major, then row-major over the window grid (the
official ``window_partition`` order). The 2D Swin is the rank-2 case of these functions.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

# The official code fills cross-region logits with -100 (not -inf). Swin V2's logits
# are bounded, so this value is part of its numerics and must be reproduced exactly.
MASK_FILL = -100.0

Pair = tuple[int, int]
Sizes = tuple[int, ...]


def to_pair(value: int | Sequence[int]) -> Pair:
  """``7 -> (7, 7)``; ``(7, 5) -> (7, 5)``."""
  return to_sizes(value, 2)  # type: ignore[return-value]


def to_sizes(value: int | Sequence[int], rank: int) -> Sizes:
  """``7 -> (7,) * rank``; a sequence of ``rank`` sizes -> a tuple of ints."""
  if isinstance(value, (int, np.integer)):
    return (int(value),) * rank
  sizes = tuple(int(v) for v in value)
  if len(sizes) != rank:
    raise ValueError(f"expected {rank} sizes, got {tuple(value)}")
  return sizes


def window_partition(x: jnp.ndarray, window: Sizes) -> jnp.ndarray:
  """Cuts ``(B, *S, C)`` into windows ``(B * nW, prod(window), C)`` (2D: ``(B, H, W, C)``
  into ``(B * nW, wh * ww, C)``). Works on numpy and jax arrays.

  Every spatial size must be a multiple of its window (pad first, ``pad_bottom_right``).
  """
  b, *sizes, c = x.shape
  rank = len(window)
  split = [b]
  for size, w in zip(sizes, window):
    split += [size // w, w]
  x = x.reshape(*split, c)
  # (B, g0, w0, g1, w1, ..., C) -> (B, g0, g1, ..., w0, w1, ..., C)
  order = [0] + [1 + 2 * i for i in range(rank)] + [2 + 2 * i for i in range(rank)]
  x = x.transpose(*order, 2 * rank + 1)
  return x.reshape(-1, math.prod(window), c)


def window_reverse(windows: jnp.ndarray, window: Sizes, *sizes: int) -> jnp.ndarray:
  """Inverse of ``window_partition``: ``(B * nW, prod(window), C) -> (B, *sizes, C)``
  (2D: ``window_reverse(windows, (wh, ww), H, W)``)."""
  rank = len(window)
  c = windows.shape[-1]
  grid = [size // w for size, w in zip(sizes, window)]
  x = windows.reshape(-1, *grid, *window, c)
  # (B, g0, g1, ..., w0, w1, ..., C) -> (B, g0, w0, g1, w1, ..., C)
  order = [0] + [axis for i in range(rank) for axis in (1 + i, 1 + rank + i)]
  x = x.transpose(*order, 2 * rank + 1)
  return x.reshape(-1, *sizes, c)


def cyclic_shift(x: jnp.ndarray, shift: Sizes) -> jnp.ndarray:
  """Rolls ``(B, *S, C)`` towards the origin by ``shift``: in 2D
  ``out[i, j] = x[(i + s0) % H, (j + s1) % W]``."""
  return jnp.roll(x, tuple(-s for s in shift), axis=tuple(range(1, 1 + len(shift))))


def reverse_cyclic_shift(x: jnp.ndarray, shift: Sizes) -> jnp.ndarray:
  """Undoes ``cyclic_shift``."""
  return jnp.roll(x, tuple(shift), axis=tuple(range(1, 1 + len(shift))))


def padding_to_multiple(size: int, multiple: int) -> int:
  """How many rows/columns make ``size`` a multiple of ``multiple``."""
  return (multiple - size % multiple) % multiple


def pad_bottom_right(x: jnp.ndarray, *pads: int) -> jnp.ndarray:
  """Zero-pads ``(B, *S, C)`` at the end of each spatial dimension by ``pads`` (2D: bottom
  and right, timm's convention: ``pad_bottom_right(x, pad_h, pad_w)``)."""
  if not any(pads):
    return x
  return jnp.pad(x, ((0, 0), *((0, p) for p in pads), (0, 0)))


def attend_in_windows(x: jnp.ndarray, window: Sizes, shift: Sizes,
                      attend: Callable[[jnp.ndarray, np.ndarray | None, int], jnp.ndarray],
                      pad_before_shift: bool = False, masked: bool = True) -> jnp.ndarray:
  """Windowed attention's geometry around ``attend``: ``(B, *S, C) -> (B, *S, C')``.

  Shifts by ``shift`` (if any), zero-pads each spatial size to a multiple of ``window``,
  cuts windows ``(B * nW, N, C)`` and calls ``attend(windows, mask, nW)`` (``mask``: the
  ``(nW, N, N)`` ``shift_mask`` of the padded grid in a shifted block, else None; None as
  well with ``masked=False``), which returns ``(B * nW, N, C')``; then undoes all three.

  ``pad_before_shift``: pad, then roll (the official dense backbones and nnFormer: the
  zero rows wrap round with the rest); otherwise roll, then pad (timm and the classifier).
  """
  sizes = x.shape[1:-1]
  shifted = any(shift)
  pads = [padding_to_multiple(n, w) for n, w in zip(sizes, window)]
  padded = tuple(n + p for n, p in zip(sizes, pads))
  crop = (slice(None), *(slice(0, n) for n in sizes), slice(None))
  if pad_before_shift:
    x = pad_bottom_right(x, *pads)
  if shifted:
    x = cyclic_shift(x, shift)
  if not pad_before_shift:
    x = pad_bottom_right(x, *pads)
  mask = shift_mask(*padded, window, shift) if shifted and masked else None
  num_windows = math.prod(n // w for n, w in zip(padded, window))
  windows = attend(window_partition(x, window), mask, num_windows)
  x = window_reverse(windows, window, *padded)
  if pad_before_shift:
    x = reverse_cyclic_shift(x, shift) if shifted else x
    return x[crop]
  x = x[crop]
  return reverse_cyclic_shift(x, shift) if shifted else x


def _window_coords(window: Sizes) -> np.ndarray:
  """``(rank, N, N)`` int: per dimension, the offset of query i from key j in a window."""
  grids = np.meshgrid(*(np.arange(w) for w in window), indexing="ij")
  coords = np.stack([g.ravel() for g in grids])  # (rank, N), row-major tokens
  return coords[:, :, None] - coords[:, None, :]


def _frozen_int32(index: np.ndarray) -> np.ndarray:
  index = index.astype(np.int32)
  index.flags.writeable = False
  return index


@functools.lru_cache(maxsize=None)
def relative_position_index(window: Sizes) -> np.ndarray:
  """Index into the bias table for every (query, key) pair of a window.

  Returns ``(N, N)`` int32 with ``N = prod(window)``: the offsets ``r_d + w_d - 1`` in
  ``[0, 2 w_d - 1)`` read as one row-major index into a ``prod(2 w_d - 1)``-row table; in 2D
  ``idx[i, j] = (h_i - h_j + wh - 1) * (2 ww - 1) + (w_i - w_j + ww - 1)``. The diagonal is the
  table centre.
  """
  rel = _window_coords(window)
  index = np.zeros(rel.shape[1:], np.int64)
  for offsets, w in zip(rel, window):
    index = index * (2 * w - 1) + (offsets + w - 1)
  return _frozen_int32(index)


@functools.lru_cache(maxsize=None)
def nnformer_relative_position_index(window: Sizes) -> np.ndarray:
  """nnFormer's 3D index, kept for weight compatibility: ``(N, N)`` int32.

  A quirk of the official code: it weights the offsets ``r_d + w_d - 1`` by
  ``(3 w_1 - 1, 2 w_1 - 1, 1)``, not by the strides of a ``(2w_0-1)(2w_1-1)(2w_2-1)`` table,
  so different offsets collide and (for a 4x4x4 window) only 115 of the 343 rows are read.
  """
  if len(window) != 3:
    raise ValueError(f"nnFormer windows are 3D, got {window}")
  rel = _window_coords(window)
  shifted = [offsets + w - 1 for offsets, w in zip(rel, window)]
  index = shifted[0] * (3 * window[1] - 1) + shifted[1] * (2 * window[1] - 1) + shifted[2]
  return _frozen_int32(index)


@functools.lru_cache(maxsize=None)
def shift_mask(*grid_window_shift) -> np.ndarray:
  """Additive attention mask of a shifted-window block: ``shift_mask(*grid, window, shift)``
  (2D: ``shift_mask(H, W, window, shift)``; 3D: ``shift_mask(D, H, W, window, shift)``).

  After the cyclic shift, windows at the far border of each dimension hold tokens from
  regions that were not adjacent in the image. The (padded) grid is labelled with up to
  ``3 ** rank`` regions (per dimension the slices ``[0, -w), [-w, -s), [-s, size)``) and two
  tokens of one window may attend to each other only if they share a label.

  Returns ``(nW, N, N)`` float32: 0 within a region, ``MASK_FILL`` across regions.
  """
  *grid, window, shift = grid_window_shift
  labels = np.zeros(tuple(grid), np.float32)
  # Python slice semantics on purpose: with a zero shift, ``slice(-w, -0)`` is empty and
  # ``slice(-0, None)`` is everything, exactly as the official/timm loops behave.
  per_dim = [(slice(0, -w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift)]
  for label, region in enumerate(itertools.product(*per_dim)):
    labels[region] = label
  # numpy in, numpy out: window_partition only uses array methods.
  windows = window_partition(labels[None, ..., None], window)[..., 0]  # (nW, N)
  differs = windows[:, None, :] != windows[:, :, None]
  mask = np.where(differs, MASK_FILL, 0.0).astype(np.float32)
  mask.flags.writeable = False
  return mask


def clamp_window(resolution: Sizes, window: Sizes, shift: Sizes) -> tuple[Sizes, Sizes]:
  """The official window clamp, per dimension.

  Where a stage's resolution is no larger than the window, the window shrinks to the
  resolution and that dimension is not shifted (one window covers it, nothing to shift).
  """
  new_window = tuple(r if r <= w else w for r, w in zip(resolution, window))
  new_shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, new_window, shift))
  return new_window, new_shift


def block_geometry(resolution: Sizes, window_size: int | Sequence[int], block: int,
                   clamp: bool = True) -> tuple[Sizes, Sizes]:
  """``(window, shift)`` of block ``block`` of a stage at ``resolution`` (one size per
  spatial dimension): odd blocks shift by half a window (SW-MSA), then the official
  ``clamp_window``.

  ``clamp=False`` is the official segmentation/detection backbone, which never clamps (small
  maps are padded up to one window instead); only the rank of ``resolution`` is used then.
  """
  window = to_sizes(window_size, len(resolution))
  shift = tuple(w // 2 for w in window) if block % 2 else (0,) * len(window)
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
