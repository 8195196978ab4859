"""Pure, jittable train and eval steps for classification."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from swin_jax.data import mixup
from swin_jax.tasks import classification
from swin_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: Callable[[Any], Any],
               num_classes: int,
               mixup_config: ml_collections.ConfigDict) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch ``{'image': (B, H, W, 3), 'label': (B,)}``.

  Mixup/CutMix and label smoothing run on device; stochastic depth and dropout draw from
  the ``dropout`` stream. Returns the new state and scalar metrics.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  mix_rng, dropout_rng = jax.random.split(step_rng)
  images, targets = mixup.mixup_cutmix(
      mix_rng, batch["image"], batch["label"], num_classes=num_classes,
      mixup_alpha=mixup_config.mixup_alpha, cutmix_alpha=mixup_config.cutmix_alpha,
      prob=mixup_config.prob, switch_prob=mixup_config.switch_prob,
      label_smoothing=mixup_config.label_smoothing)

  def loss_fn(params):
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
    return classification.soft_target_cross_entropy(logits, targets)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "train/loss": loss,
      "train/lr": jnp.asarray(schedule(state.step), jnp.float32),
      "train/grad_norm": optax.tree.norm(grads),
      # Finite loss and grads do not guarantee finite new params (e.g. a NaN lr); the loop
      # checks this too before it writes a checkpoint.
      "train/update_norm": optax.tree.norm(updates),
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: nn.Module) -> dict:
  """Masked metric sums of one eval batch (``'mask'`` marks real examples)."""
  logits = model.apply({"params": params}, batch["image"], train=False)
  return classification.eval_sums(logits, batch["label"], batch["mask"])
