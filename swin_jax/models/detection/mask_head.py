"""mmdet's ``FCNMaskHead``: ``(R, 14, 14, C)`` RoI features -> ``(R, 28, 28, K)`` mask logits.

    mask_logits = FCNMaskHead()(roi_feats)   # per-class logits; the loss (and inference)
                                             # reads the channel of the RoI's class

``convs_0..3``: 3x3 conv 256 (bias) + ReLU; ``upsample``: a 2x2 stride-2 transposed conv
(256 -> 256, bias) + ReLU, which doubles 14 -> 28; ``conv_logits``: 1x1 to ``num_classes``
(80). 2,643,280 params for the official sizes. Init: kaiming normal (fan_out, ReLU) on every
conv, zero biases (mmcv ConvModule and ``FCNMaskHead.init_weights``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from swin_jax.models.detection.conv import ConvModule, conv2d, kaiming_fan_out

Dtype = Any


class StridedConvTranspose(nn.Module):
  """PyTorch ``ConvTranspose2d(kernel_size=k, stride=k)``: ``(B, H, W, Cin) -> (B, kH, kW,
  features)``. With the stride equal to the kernel the output patches do not overlap:
  ``out[k*i + a, k*j + b] = x[i, j] @ kernel[a, b] + bias``, one einsum.

  ``kernel`` is ``(k, k, Cin, features)``; PyTorch stores ``(Cin, features, k, k)`` (in
  before out, unlike its convs), so a checkpoint's weight converts by ``transpose(2, 3, 0, 1)``
  with no spatial flip (``swin_jax.convert.detection``).
  """
  features: int
  kernel_size: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k = self.kernel_size
    b, h, w, c = x.shape
    # mmdet: kaiming_normal_(mode='fan_out') on PyTorch's (Cin, Cout, k, k) weight, whose
    # "fan_out" is size(0) * k * k = Cin * k * k: Flax's fan_in of this (k, k, Cin, Cout).
    init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    kernel = self.param("kernel", init, (k, k, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    y = jnp.einsum("bhwc,pqco->bhpwqo", x, kernel.astype(self.dtype))
    return y.reshape(b, h * k, w * k, self.features) + bias.astype(self.dtype)


class FCNMaskHead(nn.Module):
  """``(R, S, S, C) -> (R, 2S, 2S, num_classes)`` float32 logits."""
  num_classes: int = 80
  num_convs: int = 4
  conv_out_channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i in range(self.num_convs):
      x = ConvModule(self.conv_out_channels, 3, dtype=self.dtype, name=f"convs_{i}")(x)
    x = nn.relu(StridedConvTranspose(self.conv_out_channels, 2, self.dtype, name="upsample")(x))
    x = conv2d(self.num_classes, 1, "conv_logits", self.dtype, kaiming_fan_out)(x)
    return x.astype(jnp.float32)
