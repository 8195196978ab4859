"""PyTorch's bilinear resize and adaptive average pooling, as static matrices over NHWC.

Both are linear maps along each spatial axis, so each is one ``(out, in)`` matrix per axis,
built in numpy from static shapes and cached (the same rule as the window masks): a jitted
model embeds them as constants and applies them as two small matmuls.

* ``bilinear_matrix``: ``F.interpolate(mode='bilinear', align_corners=False)`` (mmseg's
  ``resize``): half-pixel centres, source coordinates below 0 clamped to 0, the last pixel
  repeated past the end, and no antialiasing on downscale (``jax.image.resize`` antialiases
  by default).
* ``adaptive_pool_matrix``: ``nn.AdaptiveAvgPool2d``: bin ``i`` of ``s`` averages
  ``[floor(i n / s), ceil((i + 1) n / s))``, so bins overlap where ``s`` does not divide
  ``n`` (16 -> 3 or 6 bins, the PPM of UperNet at 512).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``(out_size, in_size)`` float32 weights of a 1-D bilinear resize, align_corners False."""
  matrix = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for o in range(out_size):
    src = max((o + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(np.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    frac = src - i0
    matrix[o, i0] += 1.0 - frac
    matrix[o, i1] += frac
  matrix = matrix.astype(np.float32)
  matrix.flags.writeable = False
  return matrix


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``(out_size, in_size)`` float32 averaging weights of ``AdaptiveAvgPool`` along one axis."""
  matrix = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -(-((i + 1) * in_size) // out_size)  # ceil
    matrix[i, start:end] = 1.0 / (end - start)
  matrix = matrix.astype(np.float32)
  matrix.flags.writeable = False
  return matrix


def _apply_separable(x: jnp.ndarray, rows: np.ndarray, cols: np.ndarray) -> jnp.ndarray:
  """``out[b, i, j] = sum_hw rows[i, h] cols[j, w] x[b, h, w]`` for ``(B, H, W, C)``."""
  x = jnp.einsum("ih,bhwc->biwc", jnp.asarray(rows, x.dtype), x)
  return jnp.einsum("jw,biwc->bijc", jnp.asarray(cols, x.dtype), x)


def resize_bilinear(x: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
  """``(B, H, W, C) -> (B, h, w, C)``, as mmseg's ``resize(x, size, 'bilinear', False)``."""
  h, w = x.shape[1], x.shape[2]
  out_h, out_w = int(size[0]), int(size[1])
  if (h, w) == (out_h, out_w):
    return x
  return _apply_separable(x, bilinear_matrix(h, out_h), bilinear_matrix(w, out_w))


def adaptive_avg_pool(x: jnp.ndarray, bins: int | Sequence[int]) -> jnp.ndarray:
  """``(B, H, W, C) -> (B, s, s, C)``, as ``nn.AdaptiveAvgPool2d(s)`` (or ``(sh, sw)``)."""
  sh, sw = (bins, bins) if isinstance(bins, int) else (int(bins[0]), int(bins[1]))
  h, w = x.shape[1], x.shape[2]
  return _apply_separable(x, adaptive_pool_matrix(h, sh), adaptive_pool_matrix(w, sw))
