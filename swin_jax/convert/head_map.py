"""ImageNet-22K -> ImageNet-1K classifier-head maps, per 22K label space.

A 21,841-class head can be in one of two label orders:

* ``'official'``: the official Swin 22K checkpoints' head order. Its 1K map is the official
  ``map22kto1k.txt`` (shipped), which the official fine-tuning code uses as ``W1k = W22k[map]``.
* ``'fall11'``: the sorted fall11 synsets (``swin_jax/data/imagenet22k_synsets.txt``), the
  labels of swin_jax's own ImageNet-22K builder. 1K class i takes the row of the fall11 synset
  equal to ImageNet-1K synset i, derived here by synset from the shipped lists.

The two agree for the first 718 1K classes only (the official head order has entries that
fall11 lacks), so a head must be mapped in the space it was trained in. ImageNet-1K's
n04399382 (teddy bear) is not a fall11 synset: in the fall11 space it has no row (``-1``).
"""

from __future__ import annotations

import functools

import importlib_resources
import numpy as np

NUM_CLASSES_22K = 21841
NUM_CLASSES_1K = 1000
LABEL_SPACES = ("official", "fall11")
NO_ROW = -1  # map entry of a 1K class that the 22K label space does not have


def _read_lines(name: str) -> list[str]:
  return importlib_resources.files("swin_jax.data").joinpath(name).read_text().split()


def _frozen(indices: np.ndarray) -> np.ndarray:
  indices.flags.writeable = False
  return indices


@functools.lru_cache(maxsize=None)
def _official_map() -> np.ndarray:
  indices = np.array([int(line) for line in _read_lines("map22kto1k.txt")], dtype=np.int64)
  assert indices.shape == (NUM_CLASSES_1K,), indices.shape
  return _frozen(indices)


@functools.lru_cache(maxsize=None)
def _fall11_map() -> np.ndarray:
  fall11 = _read_lines("imagenet22k_synsets.txt")
  imagenet_1k = _read_lines("imagenet_synsets.txt")
  assert len(fall11) == NUM_CLASSES_22K and len(imagenet_1k) == NUM_CLASSES_1K
  row_of = {wnid: i for i, wnid in enumerate(fall11)}
  return _frozen(np.array([row_of.get(wnid, NO_ROW) for wnid in imagenet_1k], dtype=np.int64))


def check_label_space(label_space: str) -> str:
  if label_space not in LABEL_SPACES:
    raise ValueError(f"label_space must be one of {LABEL_SPACES}, got {label_space!r}")
  return label_space


def map_22k_to_1k(label_space: str = "official") -> np.ndarray:
  """``(1000,)`` int64: entry i is the 22K head row of ImageNet-1K class i, or ``NO_ROW`` (-1)
  where ``label_space`` lacks the class (only ``'fall11'``: n04399382, teddy bear)."""
  return {"official": _official_map, "fall11": _fall11_map}[check_label_space(label_space)]()


def missing_1k_classes(label_space: str = "official") -> list[int]:
  """The 1K classes with no row in ``label_space`` (``[850]`` for fall11, ``[]`` officially)."""
  return [int(i) for i in np.flatnonzero(map_22k_to_1k(label_space) == NO_ROW)]


def head_22k_to_1k(weight_or_bias: np.ndarray, label_space: str = "official",
                   fill: np.ndarray | None = None) -> np.ndarray:
  """The 1K rows of a 22K head tensor (torch layout, classes first): ``W[map]``.

  Classes the label space lacks take their row from ``fill`` (the 1K model's own values,
  ``(1000, ...)``, same layout), which is required when there are any.
  """
  index = map_22k_to_1k(label_space)
  missing = index == NO_ROW
  out = weight_or_bias[np.where(missing, 0, index)]
  if missing.any():
    if fill is None:
      raise ValueError(f"1K classes {np.flatnonzero(missing).tolist()} have no row in the "
                       f"{label_space!r} 22K head; pass fill= (the model's own rows)")
    out[missing] = fill[missing]
  return out
