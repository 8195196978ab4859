"""Detection train batches grouped onto a few static canvases ("buckets"), one compile each.

    buckets = parse_buckets(((800, 1344), (1344, 800)), scales=MSTRAIN_SCALES)
    it = BucketedTrainIterator(source, sizes, transform, buckets, global_batch=16, seed=0)
    batch = next(it)          # one bucket's canvas (Hc, Wc): 'image' (b, Hc, Wc, 3), ...
    it.set_state(it.get_state())                      # JSON-able; resumes bit for bit

``source`` is the train split (random access), ``sizes`` its images' ``(H, W)`` (int
``(N, 2)``, ``train_image_sizes``), ``transform`` a ``DetectionTrainTransform``, ``b`` the
global batch divided by ``process_count``.

**The stream is the single-canvas one.** Position ``j`` is the image the one-canvas pipeline
reads at ``j`` (the split shuffled per epoch with ``seed_for(seed, 'shuffle')``, repeated)
with the generator it augments ``j`` with (grain's ``random_map``, ``seed_for(seed,
'augment')``). Every draw of the mmdet train pipeline (flip, crop branch, crop, short side
480-800 / long side 1333) depends on the source size alone (``DetectionTrainTransform.plan``),
so the output size of every position is known from ``sizes`` before any pixel is read. Each
image keeps the official scale distribution: its draws are the ones the one-canvas run makes.

**Buckets.** An output ``(h, w)`` goes to the smallest-area canvas that holds it (the first
listed on a tie). ``parse_buckets`` checks the canvases hold every size the scales can
produce: for each orientation, one canvas at least ``(max short, max long)``.

**Grouping.** Positions are read in order and queued per bucket; the first bucket whose queue
reaches the global batch ``B`` is that step's batch (its ``B`` positions, in order). So the
bucket and positions of global step ``s`` are a function of ``(seed, s, sizes)`` only: every
host computes the same plan (sizes and draws, no pixels) and reads only its slice ``[i b,
(i + 1) b)`` of each batch, so all hosts feed the same shape at the same step. Only which
images share a batch changes, as mmdet's ``GroupSampler`` (per-GPU batches of one aspect
ratio flag) changes it; the key here is the augmented size, as the static canvas must hold
the augmented image (a crop can turn a landscape image portrait). Every position is used
once; at most ``buckets x (B - 1)`` wait in the queues at any time.

**Resume.** The state is ``{'position', 'pending', 'step'}`` (the next unplanned position,
the queued positions per bucket, the batches emitted): JSON, and enough to continue exactly.

Segmentation's ``bucket_plan`` plans a finite eval set (sorted by bucket, padded with masked
examples); training needs an infinite stream, no masked padding (the train loss has no
example mask) and buckets interleaved as the stream fills them, hence this grouper.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Sequence

import grain
import numpy as np

from swin_jax.data import detection_transforms as dt
from swin_jax.data import pipeline

Canvas = tuple[int, int]


# ----------------------------------------------------------------------------- canvases


def scale_envelope(scales: Sequence[Sequence[int]]) -> tuple[int, int]:
  """``(max short, max long)`` side a keep-ratio resize to any of ``scales`` can give."""
  return max(min(s) for s in scales), max(max(s) for s in scales)


def parse_buckets(value: Any, scales: Sequence[Sequence[int]],
                  what: str = "task.train_buckets") -> tuple[Canvas, ...]:
  """``value`` as canvases ``((h, w), ...)``; a ValueError naming ``what`` unless each is two
  positive multiples of 32, none repeats, and together they hold both orientations of every
  size ``scales`` can produce. ``()`` stays ``()`` (one canvas, no buckets)."""
  try:
    buckets = tuple(tuple(int(s) for s in c) for c in value)
  except (TypeError, ValueError):
    raise ValueError(f"{what} {value!r} must be (h, w) canvas pairs, e.g. "
                     "((800, 1344), (1344, 800))") from None
  d = dt.SIZE_DIVISOR
  for c in buckets:
    if len(c) != 2 or any(s <= 0 or s % d for s in c):
      raise ValueError(f"{what}: canvas {c} must be two positive multiples of {d}")
  if len(set(buckets)) != len(buckets):
    raise ValueError(f"{what} {buckets} lists a canvas twice")
  if buckets:
    short, long = scale_envelope(scales)
    for need in ((short, long), (long, short)):
      if not any(c[0] >= need[0] and c[1] >= need[1] for c in buckets):
        raise ValueError(f"{what} {buckets}: no canvas holds {need[0]} x {need[1]} (h x w), "
                         f"the largest output of the train scales in that orientation")
  return buckets


def bucket_of(hw: Sequence[int], buckets: Sequence[Canvas]) -> int:
  """The index of the smallest-area canvas of ``buckets`` holding ``hw`` (first on a tie)."""
  h, w = hw
  best = None
  for k, (ch, cw) in enumerate(buckets):
    if h <= ch and w <= cw and (best is None or ch * cw < buckets[best][0] * buckets[best][1]):
      best = k
  if best is None:
    raise ValueError(f"no bucket of {tuple(buckets)} holds an output of {h} x {w}")
  return best


def swin_token_grids(canvas: Canvas, patch: int = 4, window: int = 7,
                     stages: int = 4) -> list[tuple[int, int]]:
  """The dense-mode Swin's attention grid of each stage on ``canvas``: the stage's tokens
  (``canvas / (patch 2^i)``, odd maps rounded up by the merge) padded to a window multiple.
  A side whose ``side / 32`` is a multiple of 7 pads nothing at any stage."""
  h, w = -(-canvas[0] // patch), -(-canvas[1] // patch)
  grids = []
  for _ in range(stages):
    grids.append((-(-h // window) * window, -(-w // window) * window))
    h, w = -(-h // 2), -(-w // 2)
  return grids


# ---------------------------------------------------------------------------- the plan


def geometry_stream(sizes: np.ndarray, transform: dt.DetectionTrainTransform,
                    seed: int) -> grain.MapDataset:
  """Position ``j`` -> ``(source index, TrainGeometry)``: the one-canvas pipeline's image and
  draws at ``j`` (``pipeline.train_dataset``'s shuffle, repeat and ``random_map`` seeds),
  computed from the sizes alone."""
  return (grain.MapDataset.range(len(sizes))
          .shuffle(seed=pipeline.seed_for(seed, "shuffle"))
          .repeat(None)
          .random_map(_Plan(np.asarray(sizes), transform),
                      seed=pipeline.seed_for(seed, "augment")))


@dataclasses.dataclass(frozen=True)
class _Plan:
  """``(index, rng) -> (index, transform.plan(sizes[index], rng))``."""
  sizes: np.ndarray
  transform: dt.DetectionTrainTransform

  def __call__(self, index, rng: np.random.Generator):
    index = int(index)
    return index, self.transform.plan(tuple(self.sizes[index]), rng)


class BucketGrouper:
  """Global batches of ``global_batch`` positions of one bucket each, from an infinite
  stream whose position ``j`` is in bucket ``bucket_at(j)`` (see the module docstring)."""

  def __init__(self, bucket_at: Callable[[int], int], num_buckets: int, global_batch: int):
    self.bucket_at, self.num_buckets, self.global_batch = bucket_at, num_buckets, global_batch
    self.set_state({"position": 0, "pending": [[] for _ in range(num_buckets)], "step": 0})

  def get_state(self) -> dict[str, Any]:
    return {"position": self.position, "pending": [list(p) for p in self.pending],
            "step": self.step}

  def set_state(self, state: dict[str, Any]) -> None:
    pending = [[int(j) for j in p] for p in state["pending"]]
    if len(pending) != self.num_buckets:
      raise ValueError(f"an iterator state of {len(pending)} buckets cannot resume a run of "
                       f"{self.num_buckets} (task.train_buckets changed?)")
    self.position, self.pending, self.step = int(state["position"]), pending, int(state["step"])

  def next(self) -> tuple[int, list[int]]:
    """``(bucket, its global_batch positions)`` of the next step."""
    while True:
      j = self.position
      k = self.bucket_at(j)
      self.position += 1
      self.pending[k].append(j)
      if len(self.pending[k]) == self.global_batch:
        positions, self.pending[k] = self.pending[k], []
        self.step += 1
        return k, positions


# ---------------------------------------------------------------------------- iterator


class BucketedTrainIterator:
  """This host's infinite train batches, each on one bucket's canvas (module docstring).

  Examples are read and transformed by ``threads`` threads, ``prefetch`` steps ahead;
  ``get_state`` is the state after the last batch returned (prefetched work is redone
  after a ``set_state``)."""

  def __init__(self, source: Sequence[Any], sizes: np.ndarray,
               transform: dt.DetectionTrainTransform, buckets: Sequence[Canvas],
               global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
               threads: int = 1, prefetch: int = 2):
    self.local_batch = pipeline.per_host_batch_size(global_batch, process_count)
    if len(sizes) != len(source):
      raise ValueError(f"{len(sizes)} image sizes for a split of {len(source)} examples")
    if len(source) < global_batch:
      raise ValueError(f"batch_size {global_batch} is larger than the {len(source)} train "
                       "examples")
    self.source, self.transform, self.sizes = source, transform, np.asarray(sizes)
    self.buckets = tuple(tuple(int(s) for s in c) for c in buckets)
    self.offset = process_index * self.local_batch
    self.geometry = geometry_stream(sizes, transform, seed)
    self.grouper = BucketGrouper(self._bucket_at, len(self.buckets), global_batch)
    self.prefetch = max(1, int(prefetch))
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, int(threads)),
                                                       thread_name_prefix="buckets")
    self._queue: collections.deque = collections.deque()
    self._state = self.grouper.get_state()

  def _bucket_at(self, position: int) -> int:
    return bucket_of(self.geometry[position][1].out_hw, self.buckets)

  def plan_step(self) -> tuple[Canvas, list[int]]:
    """The next step's canvas and this host's positions (advances the grouper only)."""
    k, positions = self.grouper.next()
    return self.buckets[k], positions[self.offset:self.offset + self.local_batch]

  def load(self, position: int, canvas: Canvas) -> dict[str, np.ndarray]:
    """The train example at stream ``position`` on ``canvas``."""
    index, geometry = self.geometry[position]
    example = self.transform.read(self.source[index])
    size = tuple(int(s) for s in example["image"].shape[:2])
    if size != tuple(int(s) for s in self.sizes[index]):
      # The plan (and so the canvas) came from the listed size; a different image would
      # be shrunk to fit its canvas silently.
      raise ValueError(f"train example {index} is {size[0]} x {size[1]} but its listed size "
                       f"is {tuple(self.sizes[index])} (a stale image-size cache?)")
    return self.transform.place(example, geometry, canvas)

  def _schedule(self):
    canvas, positions = self.plan_step()
    futures = [self._pool.submit(self.load, j, canvas) for j in positions]
    return self.grouper.get_state(), futures

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    while len(self._queue) < self.prefetch:
      self._queue.append(self._schedule())
    state, futures = self._queue.popleft()
    examples = [f.result() for f in futures]
    self._state = state
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def get_state(self) -> dict[str, Any]:
    return {"position": self._state["position"],
            "pending": [list(p) for p in self._state["pending"]], "step": self._state["step"]}

  def set_state(self, state: dict[str, Any]) -> None:
    for _, futures in self._queue:
      for f in futures:
        f.cancel()
    self._queue.clear()
    self.grouper.set_state(state)
    self._state = self.grouper.get_state()

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------- sizes


def train_image_sizes(dataset_config, split: str, data_dir: str,
                      image_key: str = "image") -> np.ndarray:
  """``(N, 2)`` int32 ``(H, W)`` of every image of ``split``, in order: read from the image
  headers once (no decoding) and cached under ``{data_dir}/image_sizes/``."""
  name = f"{dataset_config.name.replace('/', '_').replace(':', '_')}_{split}.npy"
  path = os.path.join(data_dir, "image_sizes", name)
  if os.path.exists(path):
    return np.load(path)
  # Imported here: it reads TFDS (and lives with the segmentation task's eval buckets).
  from swin_jax.tasks import segmentation  # pylint: disable=import-outside-toplevel
  sizes = np.asarray(segmentation.source_image_sizes(dataset_config, split, image_key),
                     np.int32)
  sizes = sizes.reshape(-1, 2)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npy"   # one per process: hosts may share the data dir
  np.save(tmp, sizes)
  os.replace(tmp, path)
  return sizes


def bucket_counts(sizes: np.ndarray, transform: dt.DetectionTrainTransform,
                  buckets: Sequence[Canvas], seed: int, positions: int) -> np.ndarray:
  """How many of the first ``positions`` stream positions fall in each bucket (a cheap look
  at a plan: sizes and draws only)."""
  stream = geometry_stream(sizes, transform, seed)
  counts = np.zeros(len(buckets), np.int64)
  for j in range(positions):
    counts[bucket_of(stream[j][1].out_hw, buckets)] += 1
  return counts

