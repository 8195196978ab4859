"""nnU-Net's sliding-window inference over whole volumes, with static patch shapes.

nnU-Net v1 (``SegmentationNetwork._internal_predict_3D_3Dconv_tiled``), which nnFormer's
validation and ``inference_*.py`` use:

* a volume smaller than the patch is zero-padded, the difference split ``d // 2`` before and
  the rest after (``pad_nd_image``); the prediction is cropped back;
* window starts per axis (``_compute_steps_for_sliding_window``): ``n = ceil((size - patch) /
  (patch * step_size)) + 1`` windows, evenly spread, ``round(i * (size - patch) / (n - 1))``;
* each window's prediction is ``softmax(net(x))`` averaged over the 8 mirrorings of the 3
  axes (``do_mirroring``; each mirrored input's output is flipped back), times a Gaussian
  importance map (``_get_gaussian``: sigma = patch / 8 around voxel ``patch // 2``,
  scaled to a maximum of 1, zeros raised to the smallest non-zero value);
* the weighted predictions are summed over windows and divided by the summed weights;
  the class is the argmax.

Here the windows of every evaluated volume are cut on the host into batches of one patch
shape (``window_plan``), so the model compiles once; ``mirrored_probabilities`` runs on the
device, and ``VolumeAccumulator`` adds each window into its volume on the host and hands a
volume over when its last window is in.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

Sizes = tuple[int, ...]
GAUSSIAN_SIGMA_SCALE = 1.0 / 8


def window_starts(size: int, patch: int, step_size: float = 0.5) -> list[int]:
  """nnU-Net's window starts along one axis of ``size`` (>= ``patch``) voxels."""
  if size < patch:
    raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch}); pad first")
  if size == patch:
    return [0]
  count = int(math.ceil((size - patch) / (patch * step_size))) + 1
  step = (size - patch) / (count - 1)
  return [int(np.round(step * i)) for i in range(count)]


def padding_to_patch(shape: Sizes, patch: Sizes) -> tuple[tuple[int, int], ...]:
  """``(before, after)`` zero padding per axis that brings ``shape`` up to ``patch``
  (``pad_nd_image``: the difference split ``d // 2`` before, the rest after)."""
  pads = []
  for size, p in zip(shape, patch):
    extra = max(p - size, 0)
    pads.append((extra // 2, extra - extra // 2))
  return tuple(pads)


@functools.lru_cache(maxsize=None)
def gaussian_importance(patch: Sizes, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
  """nnU-Net's ``_get_gaussian``: ``(d, h, w)`` float32 weights, 1 at voxel ``patch // 2``."""
  delta = np.zeros(patch, np.float64)
  delta[tuple(p // 2 for p in patch)] = 1.0
  gaussian = ndimage.gaussian_filter(delta, [p * sigma_scale for p in patch], 0,
                                     mode="constant", cval=0.0)
  gaussian = (gaussian / gaussian.max()).astype(np.float32)
  gaussian[gaussian == 0] = gaussian[gaussian != 0].min()
  gaussian.flags.writeable = False
  return gaussian


def volume_windows(shape: Sizes, patch: Sizes, step_size: float = 0.5) -> list[Sizes]:
  """Every window start of a (padded) volume of ``shape``, row-major over the axes."""
  return list(itertools.product(*(window_starts(s, p, step_size)
                                  for s, p in zip(shape, patch))))


def window_plan(shapes: Sequence[Sizes], patch: Sizes,
                step_size: float = 0.5) -> list[tuple[int, Sizes]]:
  """``(volume index, window start)`` for every window of every volume (after padding to
  the patch), volume by volume."""
  plan = []
  for index, shape in enumerate(shapes):
    padded = tuple(s + sum(p) for s, p in zip(shape, padding_to_patch(shape, patch)))
    plan += [(index, start) for start in volume_windows(padded, patch, step_size)]
  return plan


MIRROR_AXES = (0, 1, 2)


def mirrored_probabilities(apply_fn: Callable[[jnp.ndarray], jnp.ndarray], x: jnp.ndarray,
                           mirror_axes: Sequence[int] = MIRROR_AXES) -> jnp.ndarray:
  """``softmax(apply_fn(x))`` averaged over every mirroring of ``mirror_axes`` (spatial
  axes of ``x`` ``(B, D, H, W, C)``, 0 = D), each flipped back: ``(B, D, H, W, K)`` float32.
  No axes: the plain softmax."""
  total = None
  subsets = [s for r in range(len(mirror_axes) + 1)
             for s in itertools.combinations(mirror_axes, r)]
  for subset in subsets:
    axes = tuple(1 + a for a in subset)
    inputs = jnp.flip(x, axes) if axes else x
    probs = jax.nn.softmax(apply_fn(inputs).astype(jnp.float32), axis=-1)
    probs = jnp.flip(probs, axes) if axes else probs
    total = probs if total is None else total + probs
  return total / len(subsets)


class VolumeAccumulator:
  """Adds Gaussian-weighted window probabilities into their volumes (host, numpy).

  ``shapes[i]`` is volume i's shape before padding; ``add(index, start, weighted)`` adds a
  window's ``(d, h, w, K)`` weighted probabilities at ``start`` of the padded volume; once
  the volume's last window is in, ``add`` returns its predicted labels ``(D, H, W)`` (the
  argmax of the weighted mean, padding cropped off), else None.
  """

  def __init__(self, shapes: Sequence[Sizes], patch: Sizes, num_classes: int,
               step_size: float = 0.5):
    self.shapes, self.patch, self.num_classes = [tuple(s) for s in shapes], tuple(patch), \
        num_classes
    self.pads = [padding_to_patch(s, self.patch) for s in self.shapes]
    counts: dict[int, int] = {}
    for index, _ in window_plan(self.shapes, self.patch, step_size):
      counts[index] = counts.get(index, 0) + 1
    self.remaining = counts
    self._sums: dict[int, np.ndarray] = {}
    self._weights: dict[int, np.ndarray] = {}

  def add(self, index: int, start: Sizes, weighted: np.ndarray) -> np.ndarray | None:
    if self.remaining.get(index, 0) <= 0:
      raise ValueError(f"volume {index} got more windows than its plan has")
    padded = tuple(s + sum(p) for s, p in zip(self.shapes[index], self.pads[index]))
    if index not in self._sums:
      self._sums[index] = np.zeros((*padded, self.num_classes), np.float32)
      self._weights[index] = np.zeros(padded, np.float32)
    region = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
    self._sums[index][region] += weighted
    self._weights[index][region] += gaussian_importance(self.patch)
    self.remaining[index] -= 1
    if self.remaining[index]:
      return None
    mean = self._sums.pop(index) / self._weights.pop(index)[..., None]
    crop = tuple(slice(before, before + size)
                 for (before, _), size in zip(self.pads[index], self.shapes[index]))
    return np.argmax(mean[crop], axis=-1)

  def pending(self) -> list[int]:
    """Volumes still missing windows."""
    return sorted(i for i, n in self.remaining.items() if n > 0)


def padded_window(volume: np.ndarray, start: Sizes, patch: Sizes) -> np.ndarray:
  """The ``patch`` window at ``start`` of ``volume`` ``(D, H, W, C)`` zero-padded to the
  patch (``padding_to_patch``)."""
  pads = padding_to_patch(volume.shape[:3], patch)
  if any(sum(p) for p in pads):
    volume = np.pad(volume, (*pads, (0, 0)))
  region = tuple(slice(s, s + p) for s, p in zip(start, patch))
  return volume[region]


def iterate_windows(volumes: Iterator[np.ndarray], patch: Sizes, step_size: float = 0.5
                    ) -> Iterator[tuple[int, Sizes, np.ndarray]]:
  """``(volume index, start, window)`` for every window of each volume, in plan order."""
  for index, volume in enumerate(volumes):
    shape = volume.shape[:3]
    padded = tuple(s + sum(p) for s, p in zip(shape, padding_to_patch(shape, patch)))
    for start in volume_windows(padded, patch, step_size):
      yield index, start, padded_window(volume, start, patch)


def predict_volume(window_probabilities: Callable[[np.ndarray], np.ndarray],
                   volume: np.ndarray, patch: Sizes, num_classes: int,
                   step_size: float = 0.5, batch_size: int = 1) -> np.ndarray:
  """Labels ``(D, H, W)`` of one volume ``(D, H, W, C)`` by the sliding windows above, in a
  single process: ``window_probabilities(windows (b, *patch, C)) -> (b, *patch, K)``
  class probabilities (e.g. a jitted ``mirrored_probabilities``), called on batches of
  ``batch_size`` windows (the last one padded with zeros, so the shape never changes)."""
  shape = volume.shape[:3]
  accumulator = VolumeAccumulator([shape], patch, num_classes, step_size)
  gaussian = gaussian_importance(tuple(patch))[..., None]
  windows = list(iterate_windows(iter([volume]), tuple(patch), step_size))
  labels = None
  for first in range(0, len(windows), batch_size):
    chunk = windows[first:first + batch_size]
    batch = np.stack([w for _, _, w in chunk])
    if len(chunk) < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - len(chunk), *batch.shape[1:]),
                                              batch.dtype)])
    probs = np.asarray(window_probabilities(batch))
    for row, (_, start, _) in enumerate(chunk):
      done = accumulator.add(0, start, probs[row] * gaussian)
      labels = done if done is not None else labels
  return labels
