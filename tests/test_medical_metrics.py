"""Dice / HD95 (medpy's definitions) against a brute-force reference, and VolumeEvaluator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from swin_jax.tasks import medical_metrics as mm


# --- an independent reference: explicit neighbours and all pairwise distances ---

def brute_surface(mask: np.ndarray) -> np.ndarray:
  """Foreground voxels with a face neighbour that is background or outside the array."""
  padded = np.pad(mask, 1, constant_values=False)
  inner = tuple(slice(1, -1) for _ in range(mask.ndim))
  all_neighbours_in = np.ones_like(mask)
  for axis in range(mask.ndim):
    for step in (-1, 1):
      all_neighbours_in &= np.roll(padded, step, axis=axis)[inner]
  return mask & ~all_neighbours_in


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing=None) -> float:
  spacing = np.ones(a.ndim) if spacing is None else np.broadcast_to(spacing, (a.ndim,))
  pa = np.argwhere(brute_surface(a)) * spacing
  pb = np.argwhere(brute_surface(b)) * spacing
  d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
  return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


def brute_dice(a: np.ndarray, b: np.ndarray) -> float:
  return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def random_mask(rng, shape, p) -> np.ndarray:
  mask = rng.random(shape) < p
  mask.flat[rng.integers(mask.size)] = True
  return mask


@pytest.mark.parametrize("shape", [(5, 7, 6), (9, 8), (3, 12, 10)])
@pytest.mark.parametrize("spacing", [None, (2.5, 1.0, 0.7), 1.5])
def test_dice_and_hd95_match_brute_force(shape, spacing):
  if isinstance(spacing, tuple):
    spacing = spacing[:len(shape)]
  rng = np.random.default_rng(len(shape) * 7 + (0 if spacing is None else 1))
  for trial in range(8):
    p = (0.05, 0.2, 0.5, 0.9)[trial % 4]
    a, b = random_mask(rng, shape, p), random_mask(rng, shape, 0.3)
    if trial % 3 == 0:
      # Blobs off the array border: the bounding-box crop then has a background margin.
      seeds = np.zeros(shape, bool)
      inner = tuple(slice(1, n - 1) for n in shape)
      seeds[inner] = rng.random(seeds[inner].shape) < 0.1
      seeds[tuple(n // 2 for n in shape)] = True
      a = ndimage.binary_dilation(seeds) & np.pad(np.ones(seeds[inner].shape, bool), 1)
    assert mm.dice(a, b) == pytest.approx(brute_dice(a, b), abs=1e-12)
    assert mm.hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing), abs=1e-9)
    assert mm.hd95(b, a, spacing) == pytest.approx(mm.hd95(a, b, spacing), abs=1e-9)


def test_known_values():
  a = np.zeros((4, 10, 10), bool)
  b = np.zeros_like(a)
  a[1, 2, 3] = True
  b[1, 5, 7] = True                    # 3-4-5 triangle
  assert mm.hd95(a, b) == pytest.approx(5.0)
  assert mm.hd95(a, b, voxelspacing=(1.0, 2.0, 1.0)) == pytest.approx(np.hypot(6.0, 4.0))
  assert mm.dice(a, b) == 0.0
  assert mm.dice(a, a) == 1.0 and mm.hd95(a, a) == 0.0
  # A filled cube: only its faces are surface, so it is at distance 0 from its own hollow shell.
  cube = np.zeros((7, 7, 7), bool)
  cube[1:6, 1:6, 1:6] = True
  assert brute_surface(cube).sum() == 5 ** 3 - 3 ** 3
  assert mm.hd95(cube, brute_surface(cube)) == 0.0


def test_metric_per_case_edge_cases():
  full = np.zeros((3, 6, 6), np.int64)
  full[1, 2:4, 2:4] = 1
  empty = np.zeros_like(full)
  assert mm.metric_per_case(full, empty) == (1.0, 0.0)      # prediction only
  assert mm.metric_per_case(empty, full) == (0.0, 0.0)      # missed organ
  assert mm.metric_per_case(empty, empty) == (0.0, 0.0)     # both empty: official (0, 0)
  assert mm.metric_per_case(full * 3, full) == (1.0, 0.0)   # any non-zero is foreground
  with pytest.raises(ValueError, match="non-empty"):
    mm.hd95(full, empty)


# --- VolumeEvaluator ---

def feed(evaluator, volumes, predictions, batch_size=3, rng=None, pad_to=None):
  """Streams every slice of ``volumes`` (id -> label (D, H0, W0)) in shuffled batches."""
  items = [(v, k) for v, label in volumes.items() for k in range(label.shape[0])]
  if rng is not None:
    items = [items[i] for i in rng.permutation(len(items))]
  for start in range(0, len(items), batch_size):
    chunk = items[start:start + batch_size]
    count = len(chunk)
    pad = batch_size - count
    chunk = chunk + [chunk[0]] * pad     # padding repeats a real slice, masked out
    evaluator.update({
        "prediction": np.stack([predictions[v][k] for v, k in chunk]),
        "label_full": np.stack([volumes[v][k] for v, k in chunk]),
        "volume_id": np.array([v for v, _ in chunk], np.int32),
        "slice_index": np.array([k for _, k in chunk], np.int32),
        "mask": np.array([1.0] * count + [0.0] * pad, np.float32)})


def cube_volume(shape, box, value, base=None):
  volume = np.zeros(shape, np.int64) if base is None else base.copy()
  volume[tuple(slice(lo, hi) for lo, hi in box)] = value
  return volume


def test_evaluator_identical_prediction_is_perfect():
  label = cube_volume((4, 16, 16), [(1, 3), (2, 9), (3, 8)], 1)
  label = cube_volume(label.shape, [(0, 4), (10, 14), (10, 15)], 2, base=label)
  evaluator = mm.VolumeEvaluator(num_classes=3)
  feed(evaluator, {0: label}, {0: label}, rng=np.random.default_rng(0))
  result = evaluator.result()
  assert result == {"eval/mean_dice": 1.0, "eval/mean_hd95": 0.0, "eval/dice/1": 1.0,
                    "eval/hd95/1": 0.0, "eval/dice/2": 1.0, "eval/hd95/2": 0.0}


def test_evaluator_shifted_cubes_and_averaging():
  shape = (5, 16, 16)
  # Volume 0: class 1 shifted by 2 voxels along W, class 2 exact.
  label0 = cube_volume(shape, [(1, 4), (2, 7), (2, 7)], 1)
  label0 = cube_volume(shape, [(0, 2), (10, 14), (10, 14)], 2, base=label0)
  pred0 = cube_volume(shape, [(1, 4), (2, 7), (4, 9)], 1)
  pred0 = cube_volume(shape, [(0, 2), (10, 14), (10, 14)], 2, base=pred0)
  # Volume 1: class 1 shifted by one slice in depth; class 2 absent from the label but
  # predicted (official (1, 0)); volume 2: class 1 missed entirely (official (0, 0)).
  label1 = cube_volume(shape, [(1, 3), (5, 9), (5, 9)], 1)
  pred1 = cube_volume(shape, [(2, 4), (5, 9), (5, 9)], 1)
  pred1 = cube_volume(shape, [(4, 5), (0, 2), (0, 2)], 2, base=pred1)
  label2 = cube_volume(shape, [(2, 3), (3, 6), (3, 6)], 1)
  pred2 = np.zeros(shape, np.int64)
  volumes = {0: label0, 7: label1, 3: label2}
  predictions = {0: pred0, 7: pred1, 3: pred2}
  evaluator = mm.VolumeEvaluator(num_classes=3)
  feed(evaluator, volumes, predictions, batch_size=4, rng=np.random.default_rng(1))

  expect = {0: [(brute_dice(pred0 == 1, label0 == 1), brute_hd95(pred0 == 1, label0 == 1)),
                (1.0, 0.0)],
            7: [(brute_dice(pred1 == 1, label1 == 1), brute_hd95(pred1 == 1, label1 == 1)),
                (1.0, 0.0)],
            3: [(0.0, 0.0), (0.0, 0.0)]}
  assert expect[0][0][0] == pytest.approx(0.6) and expect[0][0][1] > 0
  per_volume = evaluator.per_volume()
  assert sorted(per_volume) == [0, 3, 7]
  for v in expect:
    np.testing.assert_allclose(per_volume[v], np.array(expect[v]), atol=1e-9)
  per_class = np.mean([expect[v] for v in expect], axis=0)
  result = evaluator.result()
  assert result["eval/dice/1"] == pytest.approx(per_class[0, 0])
  assert result["eval/hd95/2"] == pytest.approx(per_class[1, 1])
  assert result["eval/mean_dice"] == pytest.approx(per_class[:, 0].mean())
  assert result["eval/mean_hd95"] == pytest.approx(per_class[:, 1].mean())


def test_evaluator_zooms_predictions_back_like_test_single_volume():
  rng = np.random.default_rng(2)
  label = np.zeros((3, 32, 30), np.int64)
  label[:, 4:20, 6:25] = 1
  label[1:, 22:30, 2:12] = 2
  small = np.zeros((3, 16, 16), np.int64)      # the network's output size
  small[:, 2:10, 3:13] = 1
  small[1:, 11:15, 1:6] = 2
  small[0, rng.integers(16, size=5), rng.integers(16, size=5)] = 2
  # What the official code scores: zoom(out, (x / patch, y / patch), order=0) per slice.
  full = np.stack([ndimage.zoom(s, (32 / 16, 30 / 16), order=0) for s in small])
  assert full.shape == label.shape
  evaluator = mm.VolumeEvaluator(num_classes=3)
  feed(evaluator, {5: label}, {5: small}, batch_size=2)
  prediction, stacked_label = evaluator.volume(5)
  np.testing.assert_array_equal(prediction, full)
  np.testing.assert_array_equal(stacked_label, label)
  for k in (1, 2):
    np.testing.assert_allclose(evaluator.per_volume()[5][k - 1],
                               [brute_dice(full == k, label == k),
                                brute_hd95(full == k, label == k)], atol=1e-9)


def test_evaluator_rejects_missing_and_repeated_slices():
  label = np.ones((3, 4, 4), np.int64)
  evaluator = mm.VolumeEvaluator(num_classes=2)
  batch = {"prediction": label[[0, 2]], "label_full": label[[0, 2]],
           "volume_id": np.zeros(2, np.int32), "slice_index": np.array([0, 2]),
           "mask": np.ones(2, np.float32)}
  evaluator.update(batch)
  with pytest.raises(ValueError, match=r"lacks slices \[1\]"):
    evaluator.result()
  with pytest.raises(ValueError, match="added twice"):
    evaluator.update(batch)
  assert mm.VolumeEvaluator(num_classes=2).result() == {}
