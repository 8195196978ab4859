"""mmcv's ``ConvModule`` (conv, then BatchNorm, then ReLU) and a PyTorch-exact BatchNorm, NHWC.

The OpenMMLab heads (UperNet's decode and auxiliary heads, later the detection heads) are
built from ``ConvModule(conv_cfg=None, norm_cfg=SyncBN, act_cfg=ReLU)``: a conv without bias,
a BatchNorm named ``bn`` and a ReLU. Param names follow the PyTorch ones (``conv/kernel``,
``bn/scale``, ``bn/bias``; statistics ``batch_stats/.../bn/mean``, ``.../bn/var``) so that
``convs.0.conv.weight``, ``convs.0.bn.running_mean`` convert by name.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# mmcv's ConvModule.init_weights: kaiming_normal_(mode='fan_out', nonlinearity='relu').
kaiming_fan_out_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BatchNorm(nn.Module):
  """``BatchNorm2d`` / ``SyncBatchNorm`` over the last axis of ``(..., C)``, PyTorch numerics.

  Train: normalise with the batch's mean and biased variance over every axis but the last,
  and update ``batch_stats`` as PyTorch does, ``new = (1 - momentum) old + momentum batch``,
  with the *unbiased* variance (``n / (n - 1)``; it matters where ``n`` is small, e.g. the
  1x1 pooled map of a PPM branch, where ``n`` is the batch size). Under ``jax.jit`` over a
  sharded global batch these means are over the global batch: this is SyncBN.
  Eval: normalise with the running statistics. Statistics are float32 whatever ``dtype``.
  """
  momentum: float = 0.1   # PyTorch's convention (Flax's momentum is 1 - this)
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axis=axes)
      # Two-pass variance, as PyTorch (no E[x^2] - E[x]^2 cancellation).
      var = jnp.mean(jnp.square(x32 - mean), axis=axes)
      if not self.is_initializing():
        n = x.size // c
        unbiased = var * (n / max(n - 1, 1))
        running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
        running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
    else:
      mean, var = running_mean.value, running_var.value
    y = (x32 - mean) * (scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))) + bias
    return y.astype(self.dtype)


class ConvModule(nn.Module):
  """``(B, H, W, Cin) -> (B, H, W, features)``: ``conv`` (k x k, stride 1, 'same' zero padding,
  no bias) -> ``bn`` -> ReLU, mmcv's ``ConvModule`` with ``norm_cfg=BN/SyncBN``."""
  features: int
  kernel_size: int = 1
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    k = self.kernel_size
    pad = k // 2
    x = nn.Conv(self.features, (k, k), padding=((pad, pad), (pad, pad)), use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, kernel_init=kaiming_fan_out_init,
                name="conv")(x.astype(self.dtype))
    x = BatchNorm(self.momentum, self.epsilon, self.dtype, name="bn")(x, train)
    return nn.relu(x)
