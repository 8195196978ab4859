"""mmdet's ``FPN`` neck as the official Mask R-CNN config builds it: ``[C2..C5] -> [P2..P6]``.

    neck = FPN()                           # 256 channels, num_outs 5, no extra convs
    p2, p3, p4, p5, p6 = neck([c2, c3, c4, c5])   # NHWC; P6 is P5 subsampled by 2

1. ``lateral_convs_i``: 1x1 conv (bias, no norm, no activation) of each input to 256.
2. Top-down: from the coarsest level, each lateral adds its upper neighbour upsampled by
   nearest neighbour to the lateral's own size (mmdet: ``F.interpolate(size=prev_shape)``,
   which is an exact x2 when the sizes are, and PyTorch's floor(dst * in / out) rule when
   they are not, e.g. 25 -> 13 for a 100-pixel side with Swin's ceil padding).
3. ``fpn_convs_i``: 3x3 conv (bias) of each level.
4. ``num_outs=5`` with ``add_extra_convs=False``: P6 = ``max_pool2d(P5, kernel 1, stride
   2)``, which is just ``P5[::2, ::2]`` (size ceil(h / 2)).
Init: mmdet's ``Xavier(uniform)`` on every conv, zero biases.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from swin_jax.models.detection.conv import ConvModule

Dtype = Any


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's ``interpolate(mode='nearest', size=out)`` source index along one axis:
  ``min(floor(dst * float32(in / out)), in - 1)``, with its exact x1 / x2 shortcuts."""
  if out_size == in_size:
    return np.arange(out_size)
  if out_size == 2 * in_size:
    return np.arange(out_size) // 2
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def resize_nearest(x: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
  """``(B, h, w, C) -> (B, H, W, C)`` nearest-neighbour resize (PyTorch's 'nearest')."""
  rows = nearest_indices(x.shape[1], size[0])
  cols = nearest_indices(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


class FPN(nn.Module):
  """``[(B, H_i, W_i, C_i)] -> [(B, H_i, W_i, out_channels)] + extra levels`` (see module
  docstring). Params ``lateral_convs_i/conv`` and ``fpn_convs_i/conv``: mmdet's
  ``lateral_convs.i.conv`` / ``fpn_convs.i.conv``."""
  out_channels: int = 256
  num_outs: int = 5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Sequence[jnp.ndarray]) -> list[jnp.ndarray]:
    if self.num_outs < len(inputs):
      raise ValueError(f"num_outs {self.num_outs} is fewer than the {len(inputs)} inputs")
    xavier = nn.initializers.xavier_uniform()
    laterals = [ConvModule(self.out_channels, 1, relu=False, kernel_init=xavier,
                           dtype=self.dtype, name=f"lateral_convs_{i}")(x)
                for i, x in enumerate(inputs)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
    outs = [ConvModule(self.out_channels, 3, relu=False, kernel_init=xavier, dtype=self.dtype,
                       name=f"fpn_convs_{i}")(x)
            for i, x in enumerate(laterals)]
    while len(outs) < self.num_outs:
      outs.append(outs[-1][:, ::2, ::2])  # max_pool2d(kernel 1, stride 2)
    return outs
