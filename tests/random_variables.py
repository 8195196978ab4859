"""Seeded random variables for a swin_jax model, without running its init.

Every param and BatchNorm statistic gets a random value (a mis-mapped or transposed tensor
then changes the output instead of hiding behind an init value), with the scales of
``torch_oracle.randomize_``: kernels ``N(0, 1/fan_in)``; norm scales ``1 + 0.1 N``; bias
tables ``0.5 N``; running variances ``U(0.5, 1.5)``; everything else (biases, running means)
``0.1 N``.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np


def random_variables(model: nn.Module, example: jax.ShapeDtypeStruct | np.ndarray, seed: int,
                     method: Any = None) -> dict[str, Any]:
  """``{'params', 'batch_stats', ...}`` of ``model.init(rng, example)`` (shapes only), random."""
  kwargs = {} if method is None else {"method": method}
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, **kwargs), example)
  return randomize(shapes, seed)


def randomize(variables: Any, seed: int) -> dict[str, Any]:
  """Random numpy float32 values in the shapes of ``variables`` (arrays or shape structs)."""
  rng = np.random.default_rng(seed)
  out = {}
  for collection, tree in dict(variables).items():
    flat = flax.traverse_util.flatten_dict(dict(tree))
    new = {}
    for path, value in flat.items():
      shape, leaf = tuple(value.shape), path[-1]
      noise = rng.standard_normal(shape)
      if leaf == "var":
        x = rng.uniform(0.5, 1.5, shape)
      elif leaf == "kernel":
        x = noise / math.sqrt(math.prod(shape[:-1]))  # Flax kernels are (..., in, out)
      elif leaf == "scale":
        x = 1.0 + 0.1 * noise
      elif leaf == "relative_position_bias_table":
        x = 0.5 * noise
      else:
        x = 0.1 * noise
      new[path] = x.astype(np.float32)
    out[collection] = flax.traverse_util.unflatten_dict(new)
  return out
