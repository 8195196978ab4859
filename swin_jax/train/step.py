"""The pure, jittable train and eval steps, the same for every task.

    train_step(state, batch, task=..., model=..., tx=..., schedule=...) -> (state, metrics)
    eval_step(params, model_state, batch, task=..., model=...) -> the task's eval outputs

The task supplies the loss (``task.loss_fn``), the eval outputs and the post-update hook
(see ``swin_jax.tasks.base``); everything else here is task-agnostic.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from swin_jax.tasks.base import Task
from swin_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict[str, jax.Array], *, task: Task,
               model: nn.Module, tx: optax.GradientTransformation,
               schedule: Callable[[Any], Any]) -> tuple[TrainState, dict]:
  """One optimizer step on a global batch: ``value_and_grad(task.loss_fn)`` -> ``tx`` ->
  ``task.post_update``. Randomness comes from ``fold_in(state.rng, state.step)``.

  Returns the new state and scalar metrics: ``train/loss``, ``train/lr``,
  ``train/grad_norm``, ``train/update_norm`` and the task's own ``train/<name>``.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)

  extra = {"extra": state.extra, "step": state.step} if task.reads_extra else {}

  def loss_fn(params):
    return task.loss_fn(model, params, state.model_state, batch, step_rng, **extra)

  (loss, (task_metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "train/loss": loss,
      "train/lr": jnp.asarray(schedule(state.step), jnp.float32),
      "train/grad_norm": optax.tree.norm(grads),
      # Finite loss and grads do not guarantee finite new params (e.g. a NaN lr); the loop
      # checks this too before it writes a checkpoint.
      "train/update_norm": optax.tree.norm(updates),
      **{f"train/{name}": value for name, value in task_metrics.items()},
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=model_state)
  return task.post_update(new_state), metrics


def eval_step(params: Any, model_state: Any, batch: dict[str, jax.Array], *, task: Task,
              model: nn.Module) -> dict:
  """The task's outputs for one eval batch (``'mask'`` marks real examples)."""
  return task.eval_step(model, params, model_state, batch)
