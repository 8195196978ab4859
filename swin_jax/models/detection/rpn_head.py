"""mmdet's ``RPNHead`` (one conv): the same small head on every pyramid level.

    cls, reg = RPNHead()([p2, p3, p4, p5, p6])
    # cls[l]: (B, H_l, W_l, A) objectness logits (sigmoid), reg[l]: (B, H_l, W_l, 4A) deltas

``rpn_conv`` 3x3 (bias) -> ReLU -> ``rpn_cls`` 1x1 to A and ``rpn_reg`` 1x1 to 4A, A = 3
anchors per cell (the official one scale x three ratios). Channel ``a`` of ``cls`` and channels
``4a..4a+3`` of ``reg`` belong to anchor ``a`` of the cell, the channel order of PyTorch's NCHW
output; flattening ``(H, W, A)`` then gives anchors in mmdet's (y, x, anchor) order
(``anchors.py``). Init: N(0, 0.01) on all three convs, zero biases (mmdet's init_cfg).
593,935 params for the official 256 channels.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from swin_jax.models.detection.conv import conv2d

Dtype = Any


class RPNHead(nn.Module):
  """``[(B, H_l, W_l, C)] -> ([(B, H_l, W_l, A)], [(B, H_l, W_l, 4A)])`` float32 outputs."""
  feat_channels: int = 256
  num_anchors: int = 3
  dtype: Dtype = jnp.float32

  def setup(self):
    init = nn.initializers.normal(0.01)
    self.rpn_conv = conv2d(self.feat_channels, 3, "rpn_conv", self.dtype, init)
    self.rpn_cls = conv2d(self.num_anchors, 1, "rpn_cls", self.dtype, init)
    self.rpn_reg = conv2d(4 * self.num_anchors, 1, "rpn_reg", self.dtype, init)

  def forward_single(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One level: ``(B, H, W, C) -> ((B, H, W, A), (B, H, W, 4A))``."""
    x = nn.relu(self.rpn_conv(x.astype(self.dtype)))
    return (self.rpn_cls(x).astype(jnp.float32), self.rpn_reg(x).astype(jnp.float32))

  def __call__(self, features: Sequence[jnp.ndarray]
               ) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
    outs = [self.forward_single(x) for x in features]
    return [c for c, _ in outs], [r for _, r in outs]
