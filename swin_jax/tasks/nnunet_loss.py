"""nnU-Net v1's training loss, as nnFormer's trainers use it: Dice + CE with deep supervision.

    loss = deep_supervision_loss(logits_list, labels_list, weights)   # weights 4/7, 2/7, 1/7

``dice_ce_loss`` is ``DC_and_CE_loss({'batch_dice': True, 'smooth': 1e-5, 'do_bg': False},
{})``: cross-entropy averaged over every voxel, plus ``SoftDiceLoss``, which returns the
*negative* mean Dice (so the loss can go below zero): with ``p = softmax(logits)`` and
one-hot ``y``, summed over the batch and every voxel (batch Dice), per class
``tp = sum p y``, ``fp = sum p (1 - y)``, ``fn = sum (1 - p) y``, then
``dc = (2 tp + smooth) / (2 tp + fp + fn + smooth + 1e-8)``, background left out.
``deep_supervision_loss`` is ``MultipleOutputLoss2``: the weighted sum over the outputs,
with nnU-Net's weights ``1 / 2**i`` normalised (``deep_supervision_weights``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DICE_SMOOTH = 1e-5
# SoftDiceLoss adds this to the denominator on top of the smoothing.
_DENOMINATOR_EPS = 1e-8


def deep_supervision_weights(num_outputs: int) -> np.ndarray:
  """nnU-Net's ``1 / 2**i`` per output, normalised to sum 1 (3 outputs: 4/7, 2/7, 1/7)."""
  weights = np.array([1.0 / 2**i for i in range(num_outputs)])
  return weights / weights.sum()


def soft_dice(logits: jnp.ndarray, labels: jnp.ndarray, smooth: float = DICE_SMOOTH,
              background: bool = False) -> jnp.ndarray:
  """Batch soft Dice per class ``(K,)`` (or ``(K-1,)`` without background) of logits
  ``(B, *S, K)`` against integer ``labels`` ``(B, *S)``, in float32."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  axes = tuple(range(logits.ndim - 1))
  tp = jnp.sum(probs * onehot, axis=axes)
  fp = jnp.sum(probs * (1.0 - onehot), axis=axes)
  fn = jnp.sum((1.0 - probs) * onehot, axis=axes)
  dice = (2.0 * tp + smooth) / (2.0 * tp + fp + fn + smooth + _DENOMINATOR_EPS)
  return dice if background else dice[1:]


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Mean voxel cross-entropy (``nn.CrossEntropyLoss``), float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)
  return -jnp.mean(picked)


def dice_ce_loss(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(CE - mean foreground Dice, mean foreground Dice)`` of one output."""
  dice = jnp.mean(soft_dice(logits, labels))
  return cross_entropy(logits, labels) - dice, dice


def deep_supervision_loss(logits: Sequence[jnp.ndarray], labels: Sequence[jnp.ndarray],
                          weights: Sequence[float]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(sum_i w_i dice_ce_loss(logits_i, labels_i), full-resolution soft Dice)``."""
  if not len(logits) == len(labels) == len(weights):
    raise ValueError(f"{len(logits)} outputs, {len(labels)} targets, {len(weights)} weights")
  total, first_dice = 0.0, None
  for out, target, weight in zip(logits, labels, weights):
    loss, dice = dice_ce_loss(out, target)
    total = total + weight * loss
    first_dice = dice if first_dice is None else first_dice
  return total, first_dice
