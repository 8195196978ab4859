"""Human-readable ImageNet class names for 1K and 22K classifier heads."""

from __future__ import annotations

import functools

import importlib_resources

NUM_CLASSES_1K = 1000
NUM_CLASSES_22K = 21841
# The official 22K heads do not follow the sorted fall11 synset list exactly: from about
# head index 9211 on, names taken from it can be off by one or two (shared/data/README.md).
APPROXIMATE_22K_FROM = 9211


def _read_lines(name: str) -> list[str]:
  return importlib_resources.files("swin_jax.data").joinpath(name).read_text().split("\n")


@functools.lru_cache(maxsize=1)
def _lemmas() -> dict[str, str]:
  pairs = (line.split("\t", 1) for line in _read_lines("imagenet_synset_to_lemma.txt") if line)
  return {synset: lemma for synset, lemma in pairs}


@functools.lru_cache(maxsize=None)
def class_names(num_classes: int) -> list[str]:
  """Names for a head of ``num_classes`` outputs (1000 or 21841); ``class i`` otherwise."""
  files = {NUM_CLASSES_1K: "imagenet_synsets.txt", NUM_CLASSES_22K: "imagenet22k_synsets.txt"}
  if num_classes not in files:
    return [f"class {i}" for i in range(num_classes)]
  synsets = [s for s in _read_lines(files[num_classes]) if s]
  lemmas = _lemmas()
  return [lemmas.get(s, s) for s in synsets]
