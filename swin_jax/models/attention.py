"""Window multi-head self-attention with a relative-position bias (Swin V1)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers
from swin_jax.models import window as window_ops

Dtype = Any


def gather_relative_bias(table: jnp.ndarray, window: window_ops.Pair) -> jnp.ndarray:
  """``table`` ``((2wh-1)(2ww-1), heads)`` -> bias ``(heads, N, N)`` via the official index."""
  index = window_ops.relative_position_index(window)
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


class WindowAttention(nn.Module):
  """``(B*nW, N, C) -> (B*nW, N, C)``: attention inside each window of ``N = wh*ww`` tokens.

  ``logits = (q * head_dim**-0.5) @ k^T + relative_bias (+ shift mask)``, softmax in float32.
  The probabilities are sown as ``intermediates/attn_probs`` with shape
  ``(B, nW, heads, N, N)`` (a no-op unless ``mutable=['intermediates']``).
  """
  dim: int
  num_heads: int
  window: window_ops.Pair
  qkv_bias: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: np.ndarray | None, num_windows: int,
               train: bool) -> jnp.ndarray:
    bnw, n, c = x.shape
    head_dim = c // self.num_heads
    qkv = layers.dense(3 * c, "qkv", self.dtype, use_bias=self.qkv_bias)(x)
    # Output rows are [q | k | v], each split into heads of head_dim channels.
    qkv = qkv.reshape(bnw, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, head_dim)
    q = q * head_dim**-0.5
    logits = jnp.einsum("bhnd,bhmd->bhnm", q, k)

    wh, ww = self.window
    table = self.param("relative_position_bias_table", layers.trunc_normal_init,
                       ((2 * wh - 1) * (2 * ww - 1), self.num_heads), jnp.float32)
    logits = logits.astype(jnp.float32) + gather_relative_bias(table, self.window)[None]
    logits = add_window_mask(logits, mask)
    probs = nn.softmax(logits, axis=-1)
    self.sow("intermediates", "attn_probs",
             probs.reshape(bnw // num_windows, num_windows, self.num_heads, n, n))

    probs = nn.Dropout(self.attn_drop_rate)(probs, deterministic=not train)
    out = jnp.einsum("bhnm,bhmd->bhnd", probs.astype(self.dtype), v)
    out = out.transpose(0, 2, 1, 3).reshape(bnw, n, c)
    out = layers.dense(c, "proj", self.dtype)(out)
    return nn.Dropout(self.proj_drop_rate)(out, deterministic=not train)
