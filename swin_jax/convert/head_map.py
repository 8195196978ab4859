"""The official ImageNet-22K -> ImageNet-1K classifier-head map."""

from __future__ import annotations

import functools

import importlib_resources
import numpy as np

NUM_CLASSES_22K = 21841
NUM_CLASSES_1K = 1000


@functools.lru_cache(maxsize=1)
def map_22k_to_1k() -> np.ndarray:
  """``(1000,)`` int: entry i is the 22K head row used for ImageNet-1K class i."""
  text = importlib_resources.files("swin_jax.data").joinpath("map22kto1k.txt").read_text()
  indices = np.array([int(line) for line in text.split()], dtype=np.int64)
  assert indices.shape == (NUM_CLASSES_1K,), indices.shape
  indices.flags.writeable = False
  return indices


def head_22k_to_1k(weight_or_bias: np.ndarray) -> np.ndarray:
  """Selects the 1K rows of a 22K head tensor (torch layout, classes first): ``W[map]``."""
  return weight_or_bias[map_22k_to_1k()]
