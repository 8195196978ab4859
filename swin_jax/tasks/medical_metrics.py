"""Per-volume Dice and HD95, computed the way medpy (and so Swin-Unet / TransUNet) does.

``dice`` and ``hd95`` follow ``medpy.metric.binary.dc`` / ``hd95``: the surface of a binary
object is the object minus its binary erosion by the connectivity-1 structuring element
(voxels on the array border count as surface), distances come from
``scipy.ndimage.distance_transform_edt`` with the voxel spacing, and HD95 is the 95th
percentile (numpy's linear interpolation) of both directed surface-distance sets pooled.
``metric_per_case`` adds the edge cases of Swin-Unet's ``calculate_metric_percase``.

``VolumeEvaluator`` scores a segmentation model slice by slice as Swin-Unet's
``test_single_volume`` does: each predicted slice (network size, e.g. 224) is zoomed back to
the label size (e.g. 512) with nearest-neighbour ``scipy.ndimage.zoom``, the slices of a
volume are stacked in slice order, and every class 1..K-1 is scored in 3-D per volume.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
from scipy import ndimage

from swin_jax.tasks.base import Evaluator


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
  """Dice of two binary arrays (any non-zero is foreground); 0 if both are empty."""
  pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
  total = np.count_nonzero(pred) + np.count_nonzero(gt)
  if total == 0:
    return 0.0  # medpy's ZeroDivisionError branch
  return 2.0 * np.count_nonzero(pred & gt) / float(total)


def _crop_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
  """The bounding box of ``a | b`` grown by one voxel (clipped to the array).

  Cropping to it changes no surface distance: every surface voxel lies inside, the one-voxel
  margin is background (so the erosion sees the same neighbours) unless the box reaches the
  array border, where erosion's border value 0 is what the full array would see too; and the
  nearest surface voxel of a point inside the box is found inside the box.
  """
  box = []
  for axis in range(a.ndim):
    other = tuple(i for i in range(a.ndim) if i != axis)
    hit = np.flatnonzero(np.any(a, axis=other) | np.any(b, axis=other))
    box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, a.shape[axis])))
  return tuple(box)


def surface(mask: np.ndarray) -> np.ndarray:
  """The surface voxels of a binary array: the mask minus its connectivity-1 erosion."""
  footprint = ndimage.generate_binary_structure(mask.ndim, 1)
  return mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def _directed_surface_distances(from_surface: np.ndarray, to_surface: np.ndarray,
                                spacing: np.ndarray | None) -> np.ndarray:
  """For every voxel of ``from_surface``: distance to the nearest voxel of ``to_surface``."""
  distance = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
  return distance[from_surface]


def hd95(pred: np.ndarray, gt: np.ndarray, voxelspacing=None) -> float:
  """95th-percentile symmetric Hausdorff distance of two non-empty binary arrays.

  ``voxelspacing``: one number or one per axis (medpy's default None = 1 per axis).
  Raises ValueError if either array has no foreground (medpy raises RuntimeError).
  """
  pred, gt = np.atleast_1d(np.asarray(pred, bool)), np.atleast_1d(np.asarray(gt, bool))
  if pred.shape != gt.shape:
    raise ValueError(f"hd95: shapes differ: {pred.shape} vs {gt.shape}")
  if not pred.any() or not gt.any():
    raise ValueError("hd95 needs a non-empty prediction and a non-empty reference")
  spacing = None
  if voxelspacing is not None:
    spacing = np.broadcast_to(np.asarray(voxelspacing, np.float64), (pred.ndim,)).copy()
  # Organs fill a small part of a CT volume; the EDT on their bounding box is exact and far
  # cheaper than on the whole (D, 512, 512) volume.
  box = _crop_box(pred, gt)
  pred_surface, gt_surface = surface(pred[box]), surface(gt[box])
  pooled = np.hstack((_directed_surface_distances(pred_surface, gt_surface, spacing),
                      _directed_surface_distances(gt_surface, pred_surface, spacing)))
  return float(np.percentile(pooled, 95))


def metric_per_case(pred: np.ndarray, gt: np.ndarray, voxelspacing=None) -> tuple[float, float]:
  """``(dice, hd95)`` of one class in one case, with Swin-Unet's edge cases.

  Both non-empty -> medpy's values; prediction non-empty, reference empty -> (1, 0);
  prediction empty -> (0, 0) (whatever the reference).
  """
  pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
  if pred.any() and gt.any():
    return dice(pred, gt), hd95(pred, gt, voxelspacing)
  if pred.any():
    return 1.0, 0.0
  return 0.0, 0.0


class VolumeEvaluator(Evaluator):
  """Dice / HD95 per class, per 3-D volume, from per-slice eval outputs.

  ``update`` takes ``{'prediction': int (B, h, w) (network size), 'label_full': int
  (B, H0, W0) (original size), 'volume_id': int (B,), 'slice_index': int (B,),
  'mask': float (B,) (0 = padding)}``. ``result`` gives ``eval/mean_dice``,
  ``eval/mean_hd95`` (per class averaged over volumes, then over classes 1..K-1, as
  Swin-Unet's ``test.py``) and ``eval/dice/<k>``, ``eval/hd95/<k>`` per class k.
  ``voxelspacing`` is passed to hd95 (Swin-Unet: None, i.e. voxel units).
  """

  def __init__(self, num_classes: int, voxelspacing=None):
    if num_classes < 2:
      raise ValueError(f"VolumeEvaluator needs num_classes >= 2 (background + one class), "
                       f"got {num_classes}")
    self.num_classes = num_classes
    self.voxelspacing = voxelspacing
    # volume id -> slice index -> (prediction, label), both at the label's size.
    self.slices: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = \
        collections.defaultdict(dict)
    # Small class ids fit uint8; this keeps 12 volumes of (~150, 512, 512) at ~1 GB.
    self._dtype = np.uint8 if num_classes <= 256 else np.int32

  def update(self, outputs: dict[str, np.ndarray]) -> None:
    prediction = np.asarray(outputs["prediction"])
    label = np.asarray(outputs["label_full"])
    volume_ids = np.asarray(outputs["volume_id"]).reshape(-1)
    slice_indices = np.asarray(outputs["slice_index"]).reshape(-1)
    mask = np.asarray(outputs["mask"]).reshape(-1)
    for i in np.flatnonzero(mask > 0):
      volume, index = int(volume_ids[i]), int(slice_indices[i])
      if index in self.slices[volume]:
        raise ValueError(f"VolumeEvaluator: slice {index} of volume {volume} was added twice")
      self.slices[volume][index] = (
          self.zoom_to(prediction[i], label[i].shape).astype(self._dtype),
          label[i].astype(self._dtype))

  @staticmethod
  def zoom_to(prediction: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A predicted slice at the label's ``shape``, as ``test_single_volume`` zooms it back."""
    if prediction.shape == tuple(shape):
      return prediction
    factors = tuple(s / p for s, p in zip(shape, prediction.shape))
    zoomed = ndimage.zoom(prediction, factors, order=0)
    if zoomed.shape != tuple(shape):  # zoom rounds the output size; never expected here
      raise ValueError(f"zooming a {prediction.shape} prediction by {factors} gave "
                       f"{zoomed.shape}, not the label's {tuple(shape)}")
    return zoomed

  def volume(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prediction, label)`` of one volume, (D, H0, W0) each, stacked in slice order."""
    slices = self.slices[volume_id]
    order = sorted(slices)
    if order[-1] - order[0] + 1 != len(order):
      missing = sorted(set(range(order[0], order[-1] + 1)) - set(order))
      raise ValueError(f"VolumeEvaluator: volume {volume_id} lacks slices {missing[:10]}; "
                       f"every slice of a volume must be evaluated")
    return (np.stack([slices[k][0] for k in order]), np.stack([slices[k][1] for k in order]))

  def per_volume(self) -> dict[int, np.ndarray]:
    """Volume id -> (K-1, 2) array of (dice, hd95) for classes 1..K-1."""
    return {volume_id: score_volume(*self.volume(volume_id), self.num_classes,
                                    self.voxelspacing)
            for volume_id in sorted(self.slices)}

  def result(self) -> dict[str, float]:
    """The metrics over every volume added (``{}`` if none was)."""
    return summarize_volume_scores(list(self.per_volume().values()), self.num_classes)


def score_volume(prediction: np.ndarray, label: np.ndarray, num_classes: int,
                 voxelspacing=None) -> np.ndarray:
  """``(K-1, 2)`` float64: (dice, hd95) of classes 1..K-1 of one volume
  (``metric_per_case``)."""
  return np.array([metric_per_case(prediction == k, label == k, voxelspacing)
                   for k in range(1, num_classes)], np.float64)


def summarize_volume_scores(scores: list[np.ndarray], num_classes: int,
                            mean_over: Sequence[int] = ()) -> dict[str, float]:
  """Per-class means over volumes of ``score_volume`` arrays: ``eval/mean_dice``,
  ``eval/mean_hd95`` (then averaged over classes 1..K-1, as Swin-Unet's ``test.py``, or
  over the classes ``mean_over``) and ``eval/dice/<k>``, ``eval/hd95/<k>``; ``{}`` without
  volumes."""
  if not scores:
    return {}
  per_class = np.mean(np.stack(scores), axis=0)   # (K-1, 2) over volumes
  classes = tuple(mean_over) or tuple(range(1, num_classes))
  if not all(0 < k < num_classes for k in classes):
    raise ValueError(f"mean_over classes {classes} must be in 1..{num_classes - 1}")
  chosen = per_class[[k - 1 for k in classes]]
  metrics = {"eval/mean_dice": float(chosen[:, 0].mean()),
             "eval/mean_hd95": float(chosen[:, 1].mean())}
  for k in range(1, num_classes):
    metrics[f"eval/dice/{k}"] = float(per_class[k - 1, 0])
    metrics[f"eval/hd95/{k}"] = float(per_class[k - 1, 1])
  return metrics
