"""Image classification: soft-target cross-entropy and top-k accuracy.

Batches are ``{'image': (B, H, W, 3) float32, 'label': (B,) int32}``; evaluation batches
also carry ``'mask': (B,)`` (1 for real examples, 0 for padding of the last batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_target_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """Mean over the batch of ``-sum(targets * log_softmax(logits))``; logits/targets (B, K)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def topk_correct(logits: jnp.ndarray, labels: jnp.ndarray, k: int) -> jnp.ndarray:
  """``(B,)`` float32: 1 where the label is among the ``k`` highest logits."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = number of classes scoring strictly higher; ties count in the label's favour.
  rank = jnp.sum(logits > label_logit, axis=-1)
  return (rank < k).astype(jnp.float32)


def eval_sums(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray) -> dict:
  """Masked sums for one eval batch: loss, top-1 / top-5 hits and the example count."""
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return {
      "loss": jnp.sum(nll * mask),
      "top1": jnp.sum(topk_correct(logits, labels, 1) * mask),
      "top5": jnp.sum(topk_correct(logits, labels, min(5, num_classes)) * mask),
      "count": jnp.sum(mask),
  }
