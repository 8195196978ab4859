"""Building blocks shared by the Swin family: norms, MLP, stochastic depth, patch embed/merge.

Initialisers follow the official code (timm ``_init_weights``): every Linear gets a normal
of std 0.02 truncated at the *absolute* bounds +-2 (i.e. +-100 sigma, so effectively
untruncated) and zero bias; LayerNorm starts at (1, 0); the patch-embedding conv keeps
PyTorch's default uniform(+-1/sqrt(fan_in)) for weight and bias.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import window as window_ops

Dtype = Any

# timm's trunc_normal_(std=.02) cuts at absolute +-2, i.e. +-100 standard deviations.
TRUNC_NORMAL_STD = 0.02
trunc_normal_init = nn.initializers.truncated_normal(
    stddev=TRUNC_NORMAL_STD, lower=-2.0 / TRUNC_NORMAL_STD, upper=2.0 / TRUNC_NORMAL_STD)

# The official models use nn.LayerNorm's eps (1e-5; Flax's default is 1e-6) and the
# two-pass variance, which matters for the 1e-4 parity with PyTorch.
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-5, use_fast_variance=False)


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
  """A Linear with the official init and float32 params."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=trunc_normal_init, bias_init=nn.initializers.zeros, name=name)


def torch_default_bias_init(fan_in: int):
  """PyTorch's default conv/linear bias init: uniform(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class DropPath(nn.Module):
  """Stochastic depth per sample: zeroes a sample's residual branch with prob ``rate``.

  Kept samples are rescaled by ``1 / (1 - rate)``. Draws from the ``dropout`` RNG stream.
  ``rate`` given at call time (a traced scalar, as inside a scan over blocks) overrides
  the field; then a draw happens even at rate 0 (keeping every sample, scale 1).
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool,
               rate: float | jnp.ndarray | None = None) -> jnp.ndarray:
    rate = self.rate if rate is None else rate
    if not train or (isinstance(rate, float) and rate == 0.0):
      return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    # A traced float32 rate must not promote bf16 activations (a scan's carry keeps its dtype).
    scale = keep if isinstance(keep, float) else jnp.asarray(keep, x.dtype)
    return jnp.where(kept, x / scale, jnp.zeros_like(x))


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """Exact GELU written as PyTorch's kernel does, ``x/2 * (1 + erf(x/sqrt(2)))``.

  Same function as ``nn.gelu(approximate=False)``, but that goes through ``erfc``, whose
  XLA expansion (exp + selects) made the forward GELU ~1.5x slower on CPU.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1.0 / np.sqrt(2.0))).astype(x.dtype))


class Mlp(nn.Module):
  """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout, over the last axis."""
  hidden_dim: int
  out_dim: int
  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    x = dense(self.hidden_dim, "fc1", self.dtype)(x)
    x = gelu(x)
    x = nn.Dropout(self.drop_rate)(x, deterministic=not train)
    x = dense(self.out_dim, "fc2", self.dtype)(x)
    return nn.Dropout(self.drop_rate)(x, deterministic=not train)


class PatchEmbed(nn.Module):
  """``(B, H, W, in_chans) -> (B, H/p, W/p, embed_dim)``: a stride-p conv, then LayerNorm."""
  patch_size: int
  embed_dim: int
  in_chans: int = 3
  patch_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    check_image_shape(x.shape, self.patch_size, self.in_chans)
    p = self.patch_size
    fan_in = self.in_chans * p * p
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                bias_init=torch_default_bias_init(fan_in), name="proj")(x.astype(self.dtype))
    if self.patch_norm:
      x = LayerNorm(dtype=self.dtype, name="norm")(x)
    return x


def check_image_shape(shape: tuple[int, ...], patch_size: int, in_chans: int) -> None:
  """Raises a ValueError that says what is wrong with an input batch's shape."""
  if len(shape) != 4:
    raise ValueError(f"expected images of shape (B, H, W, {in_chans}) (NHWC), got shape {shape}")
  _, h, w, c = shape
  if c != in_chans:
    raise ValueError(f"expected {in_chans} input channels (NHWC layout), got shape {shape}; "
                     "images must be (B, H, W, C)")
  for name, size in (("height", h), ("width", w)):
    if size < patch_size:
      raise ValueError(f"image {name} {size} is smaller than one patch ({patch_size})")
    if size % patch_size:
      raise ValueError(f"image {name} {size} is not divisible by patch size {patch_size}; "
                       f"resize or pad to a multiple of {patch_size}")


class PatchMerging(nn.Module):
  """2x2 neighbour merge: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim)``.

  Odd sizes are zero-padded at the bottom/right. The four neighbours are concatenated in
  the official order ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` (row offset first). V1 applies
  LayerNorm(4C) then a bias-free reduction; V2 (``norm_after``) reduces, then LayerNorm(2C).
  """
  out_dim: int
  norm_after: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, h, w, c = x.shape
    x = window_ops.pad_bottom_right(x, h % 2, w % 2)
    h, w = x.shape[1], x.shape[2]
    # (B, H/2, dh, W/2, dw, C) -> (B, H/2, W/2, dw, dh, C): dh varies fastest in the concat.
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)
    reduction = dense(self.out_dim, "reduction", self.dtype, use_bias=False)
    if self.norm_after:
      return LayerNorm(dtype=self.dtype, name="norm")(reduction(x))
    return reduction(LayerNorm(dtype=self.dtype, name="norm")(x))
