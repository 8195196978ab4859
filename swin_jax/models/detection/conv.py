"""mmcv's ``ConvModule`` without a norm layer (the detection heads' FPN and mask convs):
a biased ``conv`` with 'same' zero padding, then an optional ReLU. NHWC.

The conv is named ``conv`` inside the module, as in PyTorch, so that
``neck.lateral_convs.0.conv.weight`` is ``neck/lateral_convs_0/conv/kernel``.
(``swin_jax.models.conv_module.ConvModule`` is the BatchNorm variant the UperNet heads use.)
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., Any]

# mmcv's ConvModule.init_weights: kaiming_normal_(mode='fan_out', nonlinearity='relu').
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(features: int, kernel_size: int, name: str, dtype: Dtype = jnp.float32,
           kernel_init: Initializer = kaiming_fan_out) -> nn.Conv:
  """A biased ``kernel_size`` x ``kernel_size`` conv, stride 1, zero 'same' padding (PyTorch's
  ``padding=k // 2``), float32 params, zero bias init."""
  pad = kernel_size // 2
  return nn.Conv(features, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)),
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, name=name)


class ConvModule(nn.Module):
  """``(..., H, W, Cin) -> (..., H, W, features)``: ``conv`` (bias) [-> ReLU]."""
  features: int
  kernel_size: int = 3
  relu: bool = True
  kernel_init: Initializer = kaiming_fan_out
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = conv2d(self.features, self.kernel_size, "conv", self.dtype,
               self.kernel_init)(x.astype(self.dtype))
    return nn.relu(x) if self.relu else x
