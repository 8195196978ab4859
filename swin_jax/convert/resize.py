"""Resizing of relative-position bias tables, as the official fine-tuning code does it.

The official ``load_pretrained`` resizes a ``(S1*S1, heads)`` table to ``(S2*S2, heads)``
with ``torch.nn.functional.interpolate(mode='bicubic', align_corners=False)`` (no
antialias). This module reproduces that kernel in numpy so conversion needs no torch:
Keys cubic with A = -0.75 (``jax.image.resize`` uses -0.5), half-pixel source coordinates,
border replication, x interpolated before y. Arithmetic is float32 with fused
multiply-adds like torch's compiled CPU kernel, which keeps us within float32 rounding of
torch (torch's own float32 result is ~1e-6 away from the exact bicubic).
"""

from __future__ import annotations

import numpy as np

# PyTorch's bicubic coefficient (upsample_bicubic2d).
TORCH_BICUBIC_A = np.float32(-0.75)


def _fma(a, b, c) -> np.ndarray:
  """float32 ``a * b + c`` with one rounding (float32 products are exact in float64)."""
  return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
  """float32 weights of the taps at offsets -1, 0, 1, 2 for fractional positions ``t``."""
  a = TORCH_BICUBIC_A

  def near(x):  # ((a + 2) x - (a + 3)) x x + 1, for |x| <= 1
    return _fma(_fma(x, a + 2, -(a + 3)) * x, x, 1)

  def far(x):  # ((a x - 5a) x + 8a) x - 4a, for 1 < |x| < 2
    return _fma(_fma(_fma(x, a, -5 * a), x, 8 * a), x, -4 * a)

  one = np.float32(1)
  return [far(t + one), near(t), near(one - t), far(one - t + one)]


def bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
  """Source indices ``(out, 4)`` and the 4 float32 weight vectors ``(out,)`` of a 1-D resize."""
  scale = np.float32(in_size) / np.float32(out_size)
  source = _fma(np.arange(out_size, dtype=np.float32) + np.float32(0.5), scale, -0.5)
  base = np.minimum(np.floor(source), in_size - 1)
  t = np.clip(source - base, 0, 1).astype(np.float32)
  index = np.clip(base[:, None].astype(int) + np.arange(-1, 3)[None, :], 0, in_size - 1)
  return index, _cubic_weights(t)


def _weighted_sum(values: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
  out = (values[0] * weights[0]).astype(np.float32)
  for value, weight in zip(values[1:], weights[1:]):
    out = _fma(value, weight, out)
  return out


def resize_bicubic_2d(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Bicubic resize ``(H, W, C) -> (out_h, out_w, C)`` float32, as torch computes it."""
  h, w, _ = image.shape
  image = image.astype(np.float32)
  rows, row_weights = bicubic_taps(h, out_hw[0])
  cols, col_weights = bicubic_taps(w, out_hw[1])
  along_x = _weighted_sum([image[:, cols[:, j], :] for j in range(4)],
                          [wj[None, :, None] for wj in col_weights])  # (H, out_w, C)
  return _weighted_sum([along_x[rows[:, i]] for i in range(4)],
                       [wi[:, None, None] for wi in row_weights])


def is_square_table(length: int) -> bool:
  side = int(round(np.sqrt(length)))
  return side * side == length


def side_of_square_table(length: int) -> int:
  """``(2w-1)**2 -> 2w-1``; raises if ``length`` is not a perfect square."""
  if not is_square_table(length):
    raise ValueError(f"relative_position_bias_table of length {length} is not square; "
                     "only square tables can be resized")
  return int(round(np.sqrt(length)))


def resize_bias_table(table: np.ndarray, out_sides: tuple[int, int]) -> np.ndarray:
  """``(S1*S1, heads) -> (S2h*S2w, heads)``: the official bicubic table resize, float32."""
  side = side_of_square_table(table.shape[0])
  grid = table.reshape(side, side, -1)
  return resize_bicubic_2d(grid, out_sides).reshape(-1, table.shape[1])


def patch_kernel_factors(in_hw: tuple[int, int], out_hw: tuple[int, int]
                         ) -> tuple[int, int] | None:
  """``(fh, fw)`` when ``out_hw`` is an integer multiple (> 1 somewhere) of ``in_hw``."""
  if any(o % i for i, o in zip(in_hw, out_hw)) or tuple(in_hw) == tuple(out_hw):
    return None
  return out_hw[0] // in_hw[0], out_hw[1] // in_hw[1]


def upsample_patch_kernel(kernel: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
  """``(p, p, C, D) -> (fh p, fw p, C, D)``: each tap repeated ``fh x fw`` times and divided
  by ``fh fw``, so the larger patch embeds an image upsampled ``f`` times (nearest) exactly as
  the checkpoint's patch embeds the original. It is FlexiViT's pseudo-inverse resize for a
  nearest upsampling (the least-norm kernel with that property)."""
  fh, fw = factors
  return (np.repeat(np.repeat(kernel, fh, axis=0), fw, axis=1) / (fh * fw)).astype(np.float32)
