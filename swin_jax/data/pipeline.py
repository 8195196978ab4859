"""Per-host input pipelines (grain over TFDS ArrayRecord): what the training loop calls.

    train_iterator(config, process_index, process_count, transform=task.train_transform())
        -> infinite grain DatasetIterator of batched train examples, e.g.
           {'image': float32 (b, S, S, 3), 'label': int32 (b,)} for classification
    eval_iterator(config, process_index, process_count, transform=..., padding=...)
        -> finite iterable of eval examples plus 'mask': float32 (b,), last batch padded

``b`` is the global batch size divided by ``process_count``. The per-example transforms
come from the task (``swin_jax.tasks``); without one, the task that ``config.task.name``
names supplies them. The train pipeline is a pure
function of (config, seed, step), the same global batches for any number of hosts, each
host reading only its slice of every global batch: ``it.get_state()`` is a small JSON-able dict, and an iterator
given that state with ``set_state`` yields exactly the batches the original would have.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from absl import flags
import grain
import numpy as np

from swin_jax.data import sources


def train_examples(config) -> int:
  """Examples in ``config.dataset.train_split`` (all hosts together)."""
  return sources.num_examples(config.dataset, config.dataset.train_split)


def per_host_batch_size(batch_size: int, process_count: int, what: str = "batch_size") -> int:
  """``batch_size // process_count``; an error if it does not divide."""
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"{what} {batch_size} must be a positive multiple of the number of "
                     f"hosts ({process_count})")
  return batch_size // process_count


def _task(config):
  from swin_jax import tasks  # pylint: disable=import-outside-toplevel
  return tasks.get_task(config)


def train_dataset(config, process_index: int = 0, process_count: int = 1,
                  transform: Any = None) -> grain.IterDataset:
  """The train pipeline as a grain IterDataset (``train_iterator`` iterates it).

  The shuffled, augmented example stream is defined globally (its seeds do not depend on
  the host), and global batch ``s`` is stream positions ``[s*B, (s+1)*B)``. Host ``i``
  reads only its slice ``[s*B + i*b, s*B + (i+1)*b)`` of each. So the global batches, and
  the losses, are the same on one host or many, and only accessed examples are decoded.
  """
  per_host_batch_size(config.batch_size, process_count)   # the error before any reading
  transform = transform or _task(config).train_transform()
  source = sources.open_source(config.dataset, config.dataset.train_split)
  if len(source) < config.batch_size:
    raise ValueError(f"batch_size {config.batch_size} is larger than the "
                     f"{len(source)} examples of {config.dataset.name}:"
                     f"{config.dataset.train_split}")
  stream = (grain.MapDataset.source(source)
            # Shuffle before repeat: grain folds the epoch into the seed (a new order per epoch).
            .shuffle(seed=seed_for(config.seed, "shuffle"))
            .repeat(None)
            # The generator is seeded from (seed, position in the repeated stream), so
            # augmentations differ per epoch and are reproduced exactly after a restore.
            .random_map(transform, seed=seed_for(config.seed, "augment")))
  return batched_train_dataset(config, stream, process_index, process_count)


def batched_train_dataset(config, stream: grain.MapDataset, process_index: int = 0,
                          process_count: int = 1) -> grain.IterDataset:
  """This host's share of every global batch of ``config.batch_size`` consecutive elements
  of ``stream`` (an infinite, transformed example stream), batched."""
  batch = per_host_batch_size(config.batch_size, process_count)
  host_share = _HostShare(stream, config.batch_size, process_index, process_count)
  return _to_iter(host_share.batch(batch, drop_remainder=True), config)


class _HostShare(grain.MapDataset):
  """This host's ``b = B / hosts`` consecutive elements of every ``B`` of its parent."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._offset = process_index * self._local_batch
    self._length = (len(parent) // global_batch) * self._local_batch

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    step, position = divmod(index, self._local_batch)
    return step * self._global_batch + self._offset + position

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def __str__(self) -> str:
    return f"_HostShare(offset={self._offset}, {self._local_batch} of {self._global_batch})"


def train_iterator(config, process_index: int = 0, process_count: int = 1,
                   transform: Any = None) -> grain.DatasetIterator:
  """Infinite iterator of per-host train batches; ``get_state``/``set_state`` resume it."""
  return iter(train_dataset(config, process_index, process_count, transform))


def eval_iterator(config, process_index: int = 0, process_count: int = 1,
                  transform: Any = None, padding: dict[str, Any] | None = None
                  ) -> grain.IterDataset:
  """Finite, re-iterable per-host eval batches: the transform's keys plus ``'mask'``.

  Every host yields the same number of batches (collectives need it): each host's share is
  padded to ``ceil(ceil(N / hosts) / b) * b`` examples with ``padding`` (``mask`` 0).
  """
  batch = per_host_batch_size(config.eval_batch_size or config.batch_size, process_count,
                              "eval_batch_size")
  if transform is None or padding is None:
    task = _task(config)
    transform = transform or task.eval_transform()
    padding = padding if padding is not None else task.eval_padding()
  source = sources.open_source(config.dataset, config.dataset.eval_split)
  host_share = grain.MapDataset.source(source)[process_index::process_count]
  largest_share = math.ceil(len(source) / process_count)
  total = math.ceil(largest_share / batch) * batch
  ds = grain.MapDataset.concatenate([
      host_share.map(_Masked(transform)),
      grain.MapDataset.source(_Padding(total - len(host_share), padding)),
  ])
  return _to_iter(ds.batch(batch, drop_remainder=False), config)


@dataclasses.dataclass(frozen=True)
class _Masked:
  """Adds ``mask`` 1 (a real example) to a transform's output."""
  transform: Any

  def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
    return {**self.transform(example), "mask": np.float32(1.0)}


@dataclasses.dataclass(frozen=True)
class _Padding(Sequence):
  """``length`` copies of the padding example (``mask`` 0) for the last eval batch."""
  length: int
  example: dict[str, Any]

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index):
    if not 0 <= index < self.length:
      raise IndexError(index)
    return {**self.example, "mask": np.float32(0.0)}


def _to_iter(ds: grain.MapDataset, config) -> grain.IterDataset:
  threads = config.dataset.read_threads
  # Elements here are whole batches: a short buffer keeps memory and wasted work bounded.
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                 prefetch_buffer_size=max(2, 2 * threads)))
  if config.dataset.num_workers > 0:
    # grain's workers read absl flags; outside an absl app (tests, notebooks) they are unparsed.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.dataset.num_workers))
  return iter_ds


def seed_for(seed: int, purpose: str) -> int:
  """A 32-bit seed per (run seed, purpose: 'shuffle', 'augment', ...), the same on every
  host."""
  salt = int.from_bytes(purpose.encode(), "little")
  return int(np.random.SeedSequence([seed % 2**64, salt]).generate_state(1)[0])
