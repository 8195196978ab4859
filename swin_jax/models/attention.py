"""Window multi-head self-attention: Swin V1 (scaled dot product + relative-position bias
table) and Swin V2 (cosine attention + continuous position bias), one module."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers
from swin_jax.models import window as window_ops

Dtype = Any

# V2: the learnt temperature exp(logit_scale) is capped at 1 / 0.01.
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
# V2: the continuous position bias is squashed into (0, CPB_RANGE).
CPB_RANGE = 16.0
CPB_HIDDEN = 512
# torch.nn.functional.normalize's default eps.
NORMALIZE_EPS = 1e-12
# "explicit": einsums + softmax, probabilities sown (what visualisation reads);
# "dot_product": jax.nn.dot_product_attention (fused cuDNN kernel on GPU), nothing sown.
ATTENTION_IMPLS = ("explicit", "dot_product")


# Which relative-position index reads the V1 bias table (``WindowAttention.position_index``):
# Swin's, in any rank, or nnFormer's 3D one with its colliding strides (kept for its weights).
POSITION_INDEXES = {"swin": window_ops.relative_position_index,
                    "nnformer": window_ops.nnformer_relative_position_index}


def gather_relative_bias(table: jnp.ndarray, window: window_ops.Sizes,
                         position_index: str = "swin") -> jnp.ndarray:
  """``table`` ``(prod(2w-1), heads)`` (2D: ``(2wh-1)(2ww-1)``) -> bias ``(heads, N, N)`` via
  the official index (``POSITION_INDEXES[position_index]``)."""
  index = POSITION_INDEXES[position_index](window)
  n = index.shape[0]
  bias = jnp.take(table, index.reshape(-1), axis=0).reshape(n, n, -1)
  return bias.transpose(2, 0, 1)


def add_window_mask(logits: jnp.ndarray, mask: np.ndarray | None) -> jnp.ndarray:
  """Adds the ``(nW, N, N)`` shift mask to logits ``(B*nW, heads, N, N)``, window by window."""
  if mask is None:
    return logits
  num_windows = mask.shape[0]
  bnw, heads, n, _ = logits.shape
  logits = logits.reshape(bnw // num_windows, num_windows, heads, n, n) + mask[None, :, None]
  return logits.reshape(bnw, heads, n, n)


def l2_normalize(x: jnp.ndarray, eps: float = NORMALIZE_EPS) -> jnp.ndarray:
  """``F.normalize(x, dim=-1)``: ``x / max(||x||, eps)``, in float32.

  Written as ``sqrt(max(sum x^2, eps^2))`` (the same value) so that an all-zero row, e.g. a
  padded token's query without a bias, has the torch gradient ``g / eps`` and not NaN.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  sum_sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sum_sq, eps * eps))


class WindowAttention(nn.Module):
  """``(B*nW, N, C) -> (B*nW, N, C)``: attention inside each window of ``N = wh*ww`` tokens.

  ``version=1``: ``logits = (q * head_dim**-0.5) @ k^T + table[index]``, with a learnt
  ``relative_position_bias_table`` ``((2wh-1)(2ww-1), heads)`` and a biased ``qkv``. Windows
  may have any rank (3D: ``prod(2w-1)`` table rows); ``position_index`` picks the index
  (``POSITION_INDEXES``: ``'swin'``, or ``'nnformer'`` for nnFormer's 3D quirk).

  ``version=2``: ``logits = normalize(q) @ normalize(k)^T * exp(min(logit_scale, log 100))
  + 16 sigmoid(cpb_mlp(coords)[index])``: cosine attention with a per-head temperature
  ``logit_scale`` ``(heads, 1, 1)`` and a continuous position bias, an MLP
  ``cpb_mlp_0`` (2 -> 512, ReLU) ``cpb_mlp_2`` (512 -> heads, no bias) over the log-spaced
  coordinates of ``pretrained_window`` (see ``window.relative_coords_table``). ``qkv`` has
  no bias; with ``qkv_bias`` the q and v rows get the params ``q_bias`` and ``v_bias``
  (k none).

  Both then add the shift mask (-100), softmax in float32 and sow the probabilities as
  ``intermediates/attn_probs`` with shape ``(B, nW, heads, N, N)`` (a no-op unless
  ``mutable=['intermediates']``).
  """
  dim: int
  num_heads: int
  window: window_ops.Pair
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  version: int = 1
  pretrained_window: window_ops.Pair = (0, 0)
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"
  position_index: str = "swin"

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: np.ndarray | None, num_windows: int,
               train: bool) -> jnp.ndarray:
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, "
                       f"got {self.attention_impl!r}")
    # Attention dropout (0 in every official config) needs the explicit probabilities.
    if self.attention_impl == "dot_product" and not (train and self.attn_drop_rate > 0):
      return self._fused_attention(x, mask, num_windows, train)
    bnw, n, _ = x.shape
    qkv = self._qkv(x)
    c = qkv.shape[-1] // 3   # the attention's width (x may carry more: SkipWindowAttention)
    head_dim = c // self.num_heads
    # Output rows are [q | k | v], each split into heads of head_dim channels.
    qkv = qkv.reshape(bnw, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, head_dim)
    if self.version == 1:
      logits = self._scaled_dot_product_logits(q, k)
    else:
      logits = self._cosine_logits(q, k)
    logits = add_window_mask(logits + self._position_bias()[None], mask)
    probs = nn.softmax(logits, axis=-1)
    self.sow("intermediates", "attn_probs",
             probs.reshape(bnw // num_windows, num_windows, self.num_heads, n, n))

    probs = nn.Dropout(self.attn_drop_rate)(probs, deterministic=not train)
    out = jnp.einsum("bhnm,bhmd->bhnd", probs.astype(self.dtype), v)
    out = out.transpose(0, 2, 1, 3).reshape(bnw, n, c)
    out = layers.dense(c, "proj", self.dtype)(out)
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=not train)

  # The helpers below run inside the compact __call__ and create its params.

  def _fused_attention(self, x: jnp.ndarray, mask: np.ndarray | None, num_windows: int,
                       train: bool) -> jnp.ndarray:
    """The same attention through ``jax.nn.dot_product_attention`` (cuDNN's fused kernel
    on GPU where it applies, XLA elsewhere); no probabilities are sown.

    Tokens stay in the ``(B*nW, N, heads, head_dim)`` layout the kernel takes, so the
    head transposes of the explicit path disappear. The position bias is passed as
    ``(1, heads, N, N)``; in shifted blocks the per-window mask is added to it and the sum
    broadcast over the batch, ``(B*nW, heads, N, N)``. V2's per-head temperature scales the
    normalised queries (``scale=1``).
    """
    bnw, n, _ = x.shape
    qkv = self._qkv(x)
    c = qkv.shape[-1] // 3
    head_dim = c // self.num_heads
    qkv = qkv.reshape(bnw, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B*nW, N, heads, head_dim)
    if self.version == 1:
      scale = head_dim**-0.5
    else:
      q = l2_normalize(q) * jnp.exp(self._logit_scale()).reshape(self.num_heads, 1)
      k = l2_normalize(k)
      scale = 1.0
    bias = self._position_bias()[None]  # (1, heads, N, N)
    if mask is not None:
      bias = bias + jnp.asarray(mask)[:, None]  # (nW, heads, N, N)
      bias = jnp.broadcast_to(bias[None], (bnw // num_windows,) + bias.shape)
      bias = bias.reshape(bnw, self.num_heads, n, n)
    out = jax.nn.dot_product_attention(q.astype(self.dtype), k.astype(self.dtype),
                                       v.astype(self.dtype), bias=bias.astype(self.dtype),
                                       scale=scale)
    out = layers.dense(c, "proj", self.dtype)(out.reshape(bnw, n, c))
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=not train)

  def _position_bias(self) -> jnp.ndarray:
    """The ``(heads, N, N)`` float32 logit bias: V1's learnt relative-position table,
    gathered by the official index; V2's continuous position bias."""
    if self.version == 2:
      return self._continuous_position_bias()
    rows = math.prod(2 * w - 1 for w in self.window)
    table = self.param("relative_position_bias_table", layers.trunc_normal_init,
                       (rows, self.num_heads), jnp.float32)
    return gather_relative_bias(table, self.window, self.position_index)

  def _logit_scale(self) -> jnp.ndarray:
    """V2's per-head log-temperature ``(heads, 1, 1)``, clamped at ``log 100``."""
    logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(10.0)),
                             (self.num_heads, 1, 1), jnp.float32)
    # torch.clamp(max=...): the gradient passes where logit_scale <= max, ties included.
    return jnp.where(logit_scale <= MAX_LOGIT_SCALE, logit_scale, MAX_LOGIT_SCALE)

  def _qkv(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    if self.version == 1:
      return layers.dense(3 * c, "qkv", self.dtype, use_bias=self.qkv_bias)(x)
    qkv = layers.dense(3 * c, "qkv", self.dtype, use_bias=False)(x)
    if not self.qkv_bias:
      return qkv
    q_bias = self.param("q_bias", nn.initializers.zeros, (c,), jnp.float32)
    v_bias = self.param("v_bias", nn.initializers.zeros, (c,), jnp.float32)
    bias = jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias])
    return qkv + bias.astype(qkv.dtype)

  def _scaled_dot_product_logits(self, q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """V1: ``(q / sqrt(head_dim)) @ k^T``, float32 ``(B*nW, heads, N, N)``."""
    q = q * q.shape[-1]**-0.5
    return jnp.einsum("bhnd,bhmd->bhnm", q, k).astype(jnp.float32)

  def _cosine_logits(self, q: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """V2: cosine similarity times the clamped temperature, at least float32."""
    q = l2_normalize(q).astype(self.dtype)
    k = l2_normalize(k).astype(self.dtype)
    cosine = jnp.einsum("bhnd,bhmd->bhnm", q, k,
                        preferred_element_type=jnp.promote_types(self.dtype, jnp.float32))
    return cosine * jnp.exp(self._logit_scale())

  def _continuous_position_bias(self) -> jnp.ndarray:
    """``16 * sigmoid(cpb_mlp(coords))`` gathered to ``(heads, N, N)``, at least float32."""
    dtype = jnp.promote_types(self.dtype, jnp.float32)
    coords = window_ops.relative_coords_table(self.window, self.pretrained_window)
    hidden = layers.dense(CPB_HIDDEN, "cpb_mlp_0", dtype)(jnp.asarray(coords, dtype))
    table = layers.dense(self.num_heads, "cpb_mlp_2", dtype, use_bias=False)(nn.relu(hidden))
    bias = gather_relative_bias(table.reshape(-1, self.num_heads), self.window)
    return CPB_RANGE * nn.sigmoid(bias)
