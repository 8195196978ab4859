"""The training state: one pytree that is sharded, donated and checkpointed whole."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """``step`` (int32 scalar), ``params``, ``opt_state`` (optax), ``rng`` (base PRNG key).

  Each step draws its randomness from ``fold_in(rng, step)``, so a restored state replays
  exactly the same dropout, stochastic depth and mixup as the uninterrupted run.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(params: Any, tx: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng)
