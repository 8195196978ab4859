"""Mixup / CutMix on device, timm's 'batch' mode, as a pure jittable function.

One lambda ~ Beta(alpha, alpha) for the whole batch, applied with probability ``prob``;
with both alphas > 0, CutMix is chosen with probability ``switch_prob``. Each example is
mixed with its mirror in the batch (``x[::-1]``, timm's ``flip(0)``), and the targets are
the label-smoothed one-hots mixed with the same lambda (for CutMix: corrected to the area
of the clipped box actually pasted).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_one_hot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
  """``(B,)`` int -> ``(B, num_classes)`` float32: off = s/K, on = 1 - s + s/K."""
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), on, off).astype(
      jnp.float32)


def cutmix_box(rng: jax.Array, height: int, width: int,
               lam: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """timm's ``rand_bbox``: a box of sides ``int(side * sqrt(1 - lam))`` centred uniformly.

  Returns int32 ``(top, bottom, left, right)`` (exclusive ends), clipped to the image, so
  the box can be smaller than asked near a border.
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  key_y, key_x = jax.random.split(rng)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  top = jnp.clip(cy - cut_h // 2, 0, height)
  bottom = jnp.clip(cy + (cut_h + 1) // 2, 0, height)
  left = jnp.clip(cx - cut_w // 2, 0, width)
  right = jnp.clip(cx + (cut_w + 1) // 2, 0, width)
  return top, bottom, left, right


def mixup_cutmix(rng: jax.Array, images: jax.Array, labels: jax.Array, *, num_classes: int,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5,
                 label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """``images (B, H, W, C)``, ``labels (B,)`` int -> ``(images, targets (B, num_classes))``.

  The alphas, probabilities and ``num_classes`` are static (Python floats/ints); with both
  alphas 0 the images come back unchanged and the targets are the smoothed one-hots.
  """
  targets = smoothed_one_hot(labels, num_classes, label_smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets

  key_apply, key_switch, key_lam, key_box = jax.random.split(rng, 4)
  # Which of the two is used: a coin when both are on, otherwise the one that is on.
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(key_switch) < switch_prob
    alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
    alpha = max(mixup_alpha, cutmix_alpha)
  # One Beta draw with the chosen alpha (its sampler is costly to compile; one is enough).
  lam = jax.random.beta(key_lam, alpha, alpha)
  # Not applied: lam = 1, which leaves images and targets unchanged in both branches.
  lam = jnp.where(jax.random.uniform(key_apply) < prob, lam, 1.0).astype(jnp.float32)

  partner = images[::-1]
  height, width = images.shape[1], images.shape[2]

  def _mixup(_):
    mixed = images * lam.astype(images.dtype) + partner * (1.0 - lam).astype(images.dtype)
    return mixed, lam

  def _cutmix(_):
    top, bottom, left, right = cutmix_box(key_box, height, width, lam)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    mixed = jnp.where(inside[None, :, :, None], partner, images)
    box_area = ((bottom - top) * (right - left)).astype(jnp.float32)
    return mixed, 1.0 - box_area / (height * width)

  images, lam = jax.lax.cond(use_cutmix, _cutmix, _mixup, None)
  targets = lam * targets + (1.0 - lam) * targets[::-1]
  return images, targets
