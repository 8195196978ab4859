"""The training state: one pytree that is sharded, donated and checkpointed whole."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly where it stopped.

  ``step`` (int32 scalar), ``params``, ``opt_state`` (optax), ``rng`` (base PRNG key),
  ``model_state`` (the model's non-param collections, e.g. ``{'batch_stats': ...}`` for
  BatchNorm; ``{}`` for Swin classifiers) and ``extra`` (what a task keeps besides the
  params, e.g. an EMA teacher; ``{}`` by default). Each step draws its randomness from
  ``fold_in(rng, step)``, so a restored state replays exactly the same dropout, stochastic
  depth and augmentation as the uninterrupted run.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any = flax.struct.field(default_factory=dict)
  extra: Any = flax.struct.field(default_factory=dict)


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                       model_state: Any = None, extra: Any = None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, model_state={} if model_state is None else model_state,
                    extra={} if extra is None else extra)
