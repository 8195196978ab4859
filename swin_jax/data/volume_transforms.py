"""Host transforms for 3D volume segmentation: nnU-Net v1's training patches, as nnFormer trains.

    train = VolumeTrainTransform((64, 128, 128))
    out = train({'image': float32 (D, H, W, C), 'label': uint8/int (D, H, W)}, rng)
        -> {'image': float32 (64, 128, 128, C), 'label': int32 (64, 128, 128)}
    targets = deep_supervision_labels(out['label'], 3)   # full, 1/2, 1/4 resolution

nnFormer's trainers are nnU-Net v1's (``nnUNetTrainerV2``): ``DataLoader3D`` cuts a patch
larger than the network's out of the preprocessed case, batchgenerators' ``SpatialTransform``
rotates/scales a network-sized grid inside it (``augment_spatial``), ``MirrorTransform``
flips, and ``DownsampleSegForDSTransform2`` makes the deep-supervision targets. This module
does the same for one example; every random draw comes from the ``np.random.Generator``
passed in (in the order: foreground decision, patch location, rotation, scaling, mirrors).

1. Patch sampling (``DataLoader3D.generate_train_batch``). The loader's patch is the
   *generator* patch ``G = generator_patch_size(patch_size)`` (nnU-Net's ``get_patch_size``:
   the largest |coordinate| of the patch-size vector rotated by the maximum angle about
   each axis alone, at most 90 degrees, divided by the smallest scale, truncated to int;
   nnUNetTrainerV2 calls it while ``scale_range`` is still the default (0.85, 1.25), so
   the divisor is 0.85, not 0.7). Per axis, ``need_to_pad = G - patch`` (``pad_sides`` is
   None in nnFormer), raised to ``G - shape`` when ``shape + need_to_pad < G``; the patch
   start is drawn from ``lb = -ceil(need_to_pad / 2)`` (Python's ``-n // 2``) to
   ``ub = shape + ceil(need_to_pad / 2) - G`` inclusive (``np.random.randint(lb, ub + 1)``).
   A forced-foreground patch picks one foreground class present in the case uniformly,
   then one voxel of it uniformly (nnU-Net draws it from ``class_locations``, a subset of
   min(10000, n) -- at least 1 % -- of the class's n voxels fixed at preprocessing with
   seed 1234; here all voxels of the class are eligible), and starts at
   ``max(lb, voxel - G // 2)``: only the lower bound is clamped, so near the far border
   the patch may run past ``ub`` (v1 behaviour). A case
   without foreground falls back to the uniform draw. Outside the volume the image is
   padded with 0 (``pad_mode="constant"``) and the label with -1, which nnU-Net turns
   into 0 after augmentation (``RemoveLabelTransform(-1, 0)``); here the label is padded
   with 0 directly, which gives the same final labels (-1 and 0 both end as 0 and sort
   below every foreground class in the interpolation below). nnU-Net forces foreground
   for batch positions ``j >= round(batch_size * (1 - 0.33))`` -- the last third, one of
   two with batch size 2 (``forced_foreground_fraction``); a per-example transform does
   not know its position, so it forces foreground with probability
   ``oversample_foreground``. (v1 also mutates the loader's ``need_to_pad`` in place, so
   one small case enlarges the padding of every later case; each example here starts
   from ``G - patch``.)

2. Spatial augmentation (``augment_spatial`` with ``random_crop=False``, elastic off in
   nnUNetTrainerV2). With probability ``p_rotation`` (``p_rot``, 0.2) a rotation: for each
   axis in turn, with probability ``p_rot_per_axis`` (``rotation_p_per_axis``, 1 in the 3D
   defaults) an angle ~ U(-a, a), a = ``rotation_degrees / 360 * 2 pi`` (30 degrees in
   nnUNetTrainerV2), else 0. With probability ``p_scale`` (0.2) an isotropic scale: if
   ``scale_range[0] < 1`` and a coin (p 0.5) says so, U(scale_range[0], 1), else
   U(max(scale_range[0], 1), scale_range[1]) -- half the draws below 1, half above, not
   uniform over the range. The network-sized grid centred at 0 (index - (patch - 1) / 2)
   is multiplied as row vectors by ``Rx(a_x) @ Ry(a_y) @ Rz(a_z)`` (batchgenerators'
   matrices; ``Rx`` turns axes 1 and 2, ...), then by the scale (> 1 samples a larger
   region: zoom out), then moved to the generator patch's centre ``G / 2 - 0.5``. The
   image is sampled with ``map_coordinates(order=3, mode='constant', cval=0)`` (spline
   prefilter on), the label as ``interpolate_img(is_seg=True)`` does: for every label
   value in ascending order its 0/1 indicator is sampled with ``order=1`` and the label
   written wherever that is >= 0.5, so the highest such label wins and voxels where none
   reaches 0.5 stay 0 -- no new label value can appear. Samples outside the generator
   patch read 0 (not the rest of the volume: with scale 1.4 > 1 / 0.85 the grid can leave
   the generator patch, and nnU-Net then sees zeros there too). If neither rotation nor
   scaling was drawn, the patch is the plain centre crop at offset ``(G - patch) // 2``
   (``center_crop``), no interpolation. Implementation note: only the sub-block of the
   generator patch that the grid covers is read (for the cubic spline with a 12-voxel
   margin, whose prefilter influence is < 2e-7 of the values), so results match
   interpolating the whole generator patch to float rounding (labels exactly).

3. Mirroring (``MirrorTransform``): each axis in ``mirror_axes`` flipped with p 0.5
   (one draw per axis, in order).

Left out: the intensity augmentations of ``get_moreDA_augmentation`` -- Gaussian noise
(p 0.1), Gaussian blur (p 0.2), multiplicative brightness (p 0.15), contrast (p 0.15),
low-resolution simulation (p 0.25), inverted and plain gamma (p 0.1, 0.3). They are
per-channel intensity maps independent of the geometry and can be chained after this
transform; they are not part of the patch/geometry sampling this module reproduces.
Also left out: elastic deformation (off in nnUNetTrainerV2), the cascade's previous-stage
segmentation, the dummy-2D mode (nnU-Net's option for strongly anisotropic patches) and
``MaskTransform`` (only with mask-based intensity normalisation).

Deep supervision (``DownsampleSegForDSTransform2(order=0)``): every scale is resized from
the full-resolution label with batchgenerators' ``resize_segmentation(order=0)`` (skimage
``resize``, nearest, no anti-aliasing): size ``m = round(n * s)`` (NumPy rounding) and
output index ``o`` reads input index ``floor((o + 0.5) * n / m)`` per axis -- for a factor
``f = 2^i`` that is ``f * o + f // 2`` (``label[1::2]`` at 1/2, ``label[2::4]`` at 1/4).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

# nnU-Net v1 / nnFormer 3D defaults (default_3D_augmentation_params + nnUNetTrainerV2).
ROTATION_P_PER_AXIS = 1.0
GENERATOR_SCALE_MIN = 0.85     # min(scale_range) when get_patch_size is called
NNUNET_OVERSAMPLE_PERCENT = 0.33

# Spline prefilter margin of the sub-block read for the cubic interpolation.
_CUBIC_MARGIN = 12


def degrees_to_radians(degrees: float) -> float:
  """nnU-Net's own conversion ``degrees / 360 * 2 pi`` (kept for bit-identical angles)."""
  return degrees / 360. * 2. * np.pi


def rotation_matrix(angle_x: float, angle_y: float, angle_z: float) -> np.ndarray:
  """``I @ Rx @ Ry @ Rz`` as batchgenerators builds it; coordinates are row vectors (v @ R)."""
  cx, sx = np.cos(angle_x), np.sin(angle_x)
  cy, sy = np.cos(angle_y), np.sin(angle_y)
  cz, sz = np.cos(angle_z), np.sin(angle_z)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return np.identity(3).dot(rx).dot(ry).dot(rz)


def generator_patch_size(patch_size: Sequence[int], rotation_degrees: float = 30.0,
                         scale_min: float = GENERATOR_SCALE_MIN) -> tuple[int, int, int]:
  """nnU-Net's ``get_patch_size``: the loader's (larger) patch for a network patch."""
  angle = min(degrees_to_radians(90.), abs(degrees_to_radians(rotation_degrees)))
  vector = np.array(patch_size)
  shape = np.copy(vector).astype(float)
  for angles in ((angle, 0, 0), (0, angle, 0), (0, 0, angle)):
    rotated = vector.reshape(1, 3).dot(rotation_matrix(*angles)).reshape(3)
    shape = np.maximum(shape, np.abs(rotated))
  return tuple(int(v) for v in (shape / scale_min).astype(int))


def forced_foreground_fraction(batch_size: int,
                               oversample_percent: float = NNUNET_OVERSAMPLE_PERCENT) -> float:
  """Share of a batch nnU-Net forces to foreground: positions ``j >= round(b (1 - p))``."""
  return (batch_size - round(batch_size * (1 - oversample_percent))) / batch_size


def foreground_classes(label: np.ndarray, num_classes: int | None = None) -> np.ndarray:
  """The foreground classes (> 0) present in ``label``, ascending."""
  counts = np.bincount(np.asarray(label).ravel(),
                       minlength=num_classes or 0)
  present = np.flatnonzero(counts)
  return present[present > 0]


def _need_to_pad(shape: Sequence[int], patch: Sequence[int],
                 need_to_pad: Sequence[int] | None) -> np.ndarray:
  need = np.zeros(3, int) if need_to_pad is None else np.array(need_to_pad, int).copy()
  for d in range(3):
    if need[d] + shape[d] < patch[d]:
      need[d] = patch[d] - shape[d]
  return need


def patch_start_bounds(shape: Sequence[int], patch: Sequence[int],
                       need_to_pad: Sequence[int] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """DataLoader3D's inclusive ``(lb, ub)`` for the start of a ``patch``-sized box."""
  need = _need_to_pad(shape, patch, need_to_pad)
  lb = -need // 2
  ub = np.array(shape) + need // 2 + need % 2 - np.array(patch)
  return lb, ub


def sample_patch_start(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                       force_foreground: bool = False, label: np.ndarray | None = None, *,
                       need_to_pad: Sequence[int] | None = None,
                       classes: np.ndarray | None = None) -> np.ndarray:
  """Start (may be negative or run past the volume) of the loader's ``patch`` box.

  ``need_to_pad`` is the base padding (``G - patch_size`` for the generator patch ``G``);
  ``classes`` the foreground classes of ``label`` if already known.
  """
  lb, ub = patch_start_bounds(shape, patch, need_to_pad)
  if force_foreground:
    if label is None:
      raise ValueError("force_foreground needs the label volume")
    if classes is None:
      classes = foreground_classes(label)
    if len(classes):
      chosen = classes[rng.integers(len(classes))]
      voxels = np.flatnonzero(np.asarray(label).ravel() == chosen)
      voxel = np.unravel_index(voxels[rng.integers(len(voxels))], np.shape(label))
      return np.maximum(lb, np.array(voxel) - np.array(patch) // 2)
  return np.array([rng.integers(lb[d], ub[d] + 1) for d in range(3)])


@dataclasses.dataclass(frozen=True)
class SpatialParams:
  """One draw of ``augment_spatial``: angles in radians (0 where not drawn), scale or None."""
  rotate: bool = False
  angles: tuple[float, float, float] = (0.0, 0.0, 0.0)
  scale: float | None = None

  @property
  def modified(self) -> bool:
    """Whether the grid is interpolated (else: the plain centre crop)."""
    return self.rotate or self.scale is not None


def draw_spatial_params(rng: np.random.Generator, *, rotation_degrees: float = 30.0,
                        p_rotation: float = 0.2, scale_range: tuple[float, float] = (0.7, 1.4),
                        p_scale: float = 0.2,
                        p_rot_per_axis: float = ROTATION_P_PER_AXIS) -> SpatialParams:
  """batchgenerators' draws, in its order (rotation, then scale)."""
  rotate, angles, scale = False, (0.0, 0.0, 0.0), None
  limit = degrees_to_radians(rotation_degrees)
  if rng.uniform() < p_rotation:
    rotate = True
    angles = tuple(float(rng.uniform(-limit, limit)) if rng.uniform() <= p_rot_per_axis else 0.0
                   for _ in range(3))
  if rng.uniform() < p_scale:
    low, high = scale_range
    if low < 1 and rng.random() < 0.5:
      scale = float(rng.uniform(low, 1))
    else:
      scale = float(rng.uniform(max(low, 1), high))
  return SpatialParams(rotate, angles, scale)


def draw_mirror_axes(rng: np.random.Generator,
                     mirror_axes: Sequence[int] = (0, 1, 2)) -> tuple[int, ...]:
  """The axes to flip: each of ``mirror_axes`` with p 0.5 (``uniform() < 0.5``)."""
  return tuple(axis for axis in (0, 1, 2) if axis in mirror_axes and rng.uniform() < 0.5)


def sampling_coordinates(generator_size: Sequence[int], patch_size: Sequence[int],
                         params: SpatialParams) -> np.ndarray:
  """``(3, d, h, w)`` float64 positions, in generator-patch voxels, of the network patch.

  ``(index - (patch - 1) / 2) @ R * scale + G / 2 - 0.5`` (rows ``i, j, k``); computed per
  axis by broadcasting instead of batchgenerators' dense ``np.dot``.
  """
  axes = [np.arange(n, dtype=float) - (n - 1) / 2. for n in patch_size]
  grids = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
  matrix = rotation_matrix(*params.angles) if params.rotate else np.identity(3)
  shape = tuple(int(n) for n in patch_size)
  centre = np.array(generator_size) / 2. - 0.5
  coords = np.empty((3,) + shape)
  for d in range(3):
    if params.rotate:
      coords[d] = grids[0] * matrix[0, d] + grids[1] * matrix[1, d] + grids[2] * matrix[2, d]
    else:
      coords[d] = grids[d]
    if params.scale is not None:
      coords[d] *= params.scale
    coords[d] += centre[d]
  return coords


def crop_padded(array: np.ndarray, start: Sequence[int], size: Sequence[int],
                pad_value: float = 0) -> np.ndarray:
  """``array[start:start + size]`` over the first three axes, ``pad_value`` outside."""
  start = np.asarray(start, int)
  stop = start + np.asarray(size, int)
  lo = np.clip(start, 0, array.shape[:3])
  hi = np.clip(stop, 0, array.shape[:3])
  out = np.full(tuple(int(s) for s in size) + array.shape[3:], pad_value, dtype=array.dtype)
  if np.all(hi > lo):
    dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
    out[dst] = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
  return out


def _covered_block(coords: np.ndarray, generator_size: Sequence[int],
                   margin: int) -> tuple[np.ndarray, np.ndarray] | None:
  """``[lo, hi)`` of the generator patch that holds every in-range sample (+ margin)."""
  low = np.array([coords[d].min() for d in range(3)])
  high = np.array([coords[d].max() for d in range(3)])
  size = np.array(generator_size)
  if np.any(high < 0) or np.any(low > size - 1):
    return None
  lo = np.maximum(np.floor(low).astype(int) - margin, 0)
  hi = np.minimum(np.floor(high).astype(int) + 2 + margin, size)
  return lo, hi


def interpolate_labels(block: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """``interpolate_img(is_seg=True, order=1)`` with ``mode='constant'``: per label value,
  ascending, its 0/1 indicator sampled linearly; the label is written where that is >= 0.5.

  Label 0 is skipped (the output starts at 0). Each indicator is only sampled at the
  positions strictly within one voxel of its bounding box (elsewhere all 8 neighbours
  are 0), from the box grown by one voxel -- the same values as sampling it everywhere.
  """
  out = np.zeros(coords.shape[1:], np.int32)
  flat_out = out.reshape(-1)
  points = coords.reshape(3, -1)
  for index, box in enumerate(ndimage.find_objects(block)):
    if box is None:
      continue
    value = index + 1
    low = np.array([b.start for b in box])
    high = np.array([b.stop for b in box])      # exclusive
    inside = np.ones(points.shape[1], bool)
    for d in range(3):
      inside &= (points[d] > low[d] - 1) & (points[d] < high[d])
    where = np.flatnonzero(inside)
    if where.size == 0:
      continue
    crop_lo = np.maximum(low - 1, 0)
    crop_hi = np.minimum(high + 1, block.shape)
    region = block[crop_lo[0]:crop_hi[0], crop_lo[1]:crop_hi[1], crop_lo[2]:crop_hi[2]]
    indicator = (region == value).astype(np.float64)
    local = points[:, where] - crop_lo[:, None]
    sampled = ndimage.map_coordinates(indicator, local, order=1, mode="constant", cval=0.0)
    flat_out[where[sampled >= 0.5]] = value
  return out


def spatial_transform(image: np.ndarray, label: np.ndarray, start: Sequence[int],
                      generator_size: Sequence[int], patch_size: Sequence[int],
                      params: SpatialParams) -> tuple[np.ndarray, np.ndarray]:
  """The network patch from the generator patch at ``start`` of the whole volume.

  ``image`` ``(D, H, W, C)``, ``label`` ``(D, H, W)`` non-negative integers. Returns float32
  ``(d, h, w, C)`` and int32 ``(d, h, w)``.
  """
  start = np.asarray(start, int)
  generator_size = np.asarray(generator_size, int)
  patch_size = tuple(int(p) for p in patch_size)
  if not params.modified:
    corner = start + (generator_size - np.array(patch_size)) // 2
    return (crop_padded(image, corner, patch_size, 0).astype(np.float32),
            crop_padded(label, corner, patch_size, 0).astype(np.int32))

  coords = sampling_coordinates(generator_size, patch_size, params)
  channels = image.shape[3]
  out_image = np.zeros(patch_size + (channels,), np.float32)
  out_label = np.zeros(patch_size, np.int32)
  block = _covered_block(coords, generator_size, _CUBIC_MARGIN)
  if block is not None:
    lo, hi = block
    local = coords - lo.reshape(3, 1, 1, 1)
    sub = crop_padded(image, start + lo, hi - lo, 0)
    for c in range(channels):
      out_image[..., c] = ndimage.map_coordinates(
          sub[..., c].astype(np.float64), local, order=3, mode="constant", cval=0.0)
  block = _covered_block(coords, generator_size, 0)
  if block is not None:
    lo, hi = block
    out_label = interpolate_labels(crop_padded(label, start + lo, hi - lo, 0),
                                   coords - lo.reshape(3, 1, 1, 1))
  return out_image, out_label


def _pool_scales(num_scales: int, pool_factors: Sequence[Sequence[int]] | None
                 ) -> list[np.ndarray]:
  if pool_factors is None:
    pool_factors = [(2, 2, 2)] * max(num_scales - 1, 0)
  if len(pool_factors) < num_scales - 1:
    raise ValueError(f"{num_scales} scales need {num_scales - 1} pool factors, "
                     f"got {len(pool_factors)}")
  scales = [np.ones(3)]
  if num_scales > 1:
    cumulative = np.cumprod(np.vstack(pool_factors[:num_scales - 1]), axis=0)
    scales += list(1 / cumulative)
  return scales


def deep_supervision_offset(factor: int) -> int:
  """First input index the order-0 resize reads at downsampling ``factor``: ``factor // 2``.

  For an axis of size ``n`` divisible by ``factor`` the resized axis is exactly
  ``label[factor // 2::factor]`` (``floor((o + 0.5) * factor)``), so batched on-device
  strided slicing gives the same targets as ``deep_supervision_labels``.
  """
  return int(factor) // 2


def deep_supervision_labels(label: np.ndarray, num_scales: int, *,
                            pool_factors: Sequence[Sequence[int]] | None = None
                            ) -> list[np.ndarray]:
  """``DownsampleSegForDSTransform2(order=0)`` of one ``(d, h, w)`` label.

  Scale ``i`` has per-axis factor ``1 / prod(pool_factors[:i])`` (nnU-Net's
  ``deep_supervision_scales``; default 2 per axis and level, i.e. ``1 / 2^i``), size
  ``round(n * s)`` and reads input index ``floor((o + 0.5) * n / m)`` (module docstring).
  Scale 0 is the label itself.
  """
  label = np.asarray(label)
  if label.ndim != 3:
    raise ValueError(f"expected a (d, h, w) label, got shape {label.shape}")
  outputs = []
  for scale in _pool_scales(num_scales, pool_factors):
    if np.all(scale == 1):
      outputs.append(label)
      continue
    new_shape = np.round(np.array(label.shape, float) * scale).astype(int)
    index = [np.minimum(((2 * np.arange(m) + 1) * n) // (2 * m), n - 1)
             for n, m in zip(label.shape, new_shape)]
    outputs.append(label[np.ix_(*index)])
  return outputs


@dataclasses.dataclass(frozen=True)
class VolumePlan:
  """Every random choice of one example: forced foreground, generator-patch start,
  spatial parameters, flipped axes."""
  force_foreground: bool
  start: tuple[int, int, int]
  spatial: SpatialParams
  mirror_axes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class VolumeTrainTransform:
  """``(example, rng) -> {'image': float32 (d, h, w, C), 'label': int32 (d, h, w)}``.

  nnU-Net v1's training patch (module docstring): generator patch sampling with
  foreground forced with probability ``oversample_foreground`` (nnU-Net forces the last
  third of each batch; per example that is a probability), rotation/scaling of the
  network-sized grid, mirroring. ``generator_size`` defaults to nnU-Net's
  ``get_patch_size(patch_size, rotation, scale_min=0.85)``. ``num_classes``, if given,
  bounds the label values (``ValueError`` otherwise). Intensity augmentations are left out.
  """
  patch_size: tuple[int, int, int]
  _: dataclasses.KW_ONLY
  oversample_foreground: float = 1 / 3
  rotation_degrees: float = 30.0
  scale_range: tuple[float, float] = (0.7, 1.4)
  p_rotation: float = 0.2
  p_scale: float = 0.2
  mirror_axes: tuple[int, ...] = (0, 1, 2)
  num_classes: int | None = None
  p_rot_per_axis: float = ROTATION_P_PER_AXIS
  generator_size: tuple[int, int, int] | None = None
  image_key: str = "image"
  label_key: str = "label"

  def __post_init__(self):
    patch = tuple(int(p) for p in self.patch_size)
    if len(patch) != 3:
      raise ValueError(f"patch_size must have 3 entries, got {self.patch_size}")
    object.__setattr__(self, "patch_size", patch)
    if self.generator_size is None:
      size = generator_patch_size(patch, self.rotation_degrees)
    else:
      size = tuple(int(g) for g in self.generator_size)
    if any(g < p for g, p in zip(size, patch)):
      raise ValueError(f"generator_size {size} is smaller than patch_size {patch}")
    object.__setattr__(self, "generator_size", size)
    object.__setattr__(self, "mirror_axes", tuple(self.mirror_axes))

  def _label(self, example: dict[str, Any]) -> np.ndarray:
    label = np.asarray(example[self.label_key])
    if label.ndim == 4 and label.shape[-1] == 1:
      label = label[..., 0]
    if label.ndim != 3:
      raise ValueError(f"expected a (D, H, W) label, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
      raise ValueError(f"expected an integer label, got dtype {label.dtype}")
    if label.size and label.min() < 0:
      raise ValueError("labels must be non-negative")
    if self.num_classes is not None and label.size and label.max() >= self.num_classes:
      raise ValueError(f"label value {label.max()} >= num_classes {self.num_classes}")
    return label

  def plan(self, label: np.ndarray, rng: np.random.Generator) -> VolumePlan:
    """Draw every random choice for an example with this ``(D, H, W)`` label."""
    force = bool(rng.uniform() < self.oversample_foreground)
    need = np.array(self.generator_size) - np.array(self.patch_size)
    classes = foreground_classes(label, self.num_classes) if force else None
    start = sample_patch_start(label.shape, self.generator_size, rng, force, label,
                               need_to_pad=need, classes=classes)
    spatial = draw_spatial_params(rng, rotation_degrees=self.rotation_degrees,
                                  p_rotation=self.p_rotation, scale_range=self.scale_range,
                                  p_scale=self.p_scale, p_rot_per_axis=self.p_rot_per_axis)
    mirror = draw_mirror_axes(rng, self.mirror_axes)
    return VolumePlan(force, tuple(int(s) for s in start), spatial, mirror)

  def apply(self, example: dict[str, Any], plan: VolumePlan) -> dict[str, np.ndarray]:
    """The patch that ``plan`` describes."""
    return self._apply(example, self._label(example), plan)

  def _apply(self, example: dict[str, Any], label: np.ndarray,
             plan: VolumePlan) -> dict[str, np.ndarray]:
    image = np.asarray(example[self.image_key])
    if image.ndim == 3:
      image = image[..., None]
    if image.shape[:3] != label.shape:
      raise ValueError(f"image {image.shape} and label {label.shape} differ in size")
    out_image, out_label = spatial_transform(image, label, plan.start, self.generator_size,
                                             self.patch_size, plan.spatial)
    if plan.mirror_axes:
      out_image = np.flip(out_image, plan.mirror_axes)
      out_label = np.flip(out_label, plan.mirror_axes)
    return {"image": np.ascontiguousarray(out_image, np.float32),
            "label": np.ascontiguousarray(out_label, np.int32)}

  def __call__(self, example: dict[str, Any],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    label = self._label(example)
    return self._apply(example, label, self.plan(label, rng))
