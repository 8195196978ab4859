"""3-D volumes in the Medical Segmentation Decathlon / nnU-Net raw layout, preprocessed as
nnU-Net (v1, plans v2.1, "3d_fullres") does, as a TFDS dataset ``medical_volumes/<task>``.

This is how nnFormer's data (Synapse, ACDC, BraTS) is prepared: nnFormer trains on nnU-Net
v1's preprocessed arrays. The raw folder is a TFDS manual dir:

    <manual_dir>/dataset.json             MSD keys: "name", "modality" {"0": "CT", ...},
                                          "labels" {"0": "background", "1": ...},
                                          "training" [{"image": "./imagesTr/x.nii.gz",
                                                       "label": "./labelsTr/x.nii.gz"}, ...]
    <manual_dir>/imagesTr/x.nii.gz        MSD: one NIfTI per case (4-D for several modalities)
      or imagesTr/x_0000.nii.gz, _0001..  nnU-Net: one 3-D NIfTI per modality
    <manual_dir>/labelsTr/x.nii.gz        class ids, the image's voxel grid
    <manual_dir>/splits.json              optional: {"validation": [case ids]}

(nnU-Net v2's ``dataset.json`` is read too: ``channel_names`` for ``modality``, ``labels`` as
{name: id}, and without a ``training`` list every ``labelsTr/*<file_ending>`` is a case.)

Arrays are (D, H, W) = (z, y, x), as SimpleITK gives them to nnU-Net: nibabel's (x, y, z)
voxel array transposed, spacing the header's zooms reversed. The orientation (affine) is not
applied, as SimpleITK's GetArrayFromImage does not apply the direction either.

Preprocessing (nnU-Net v1: ``cropping.py``, ``DatasetAnalyzer``, ``ExperimentPlanner3D_v21``,
``GenericPreprocessor``):

1. Crop. The nonzero mask is the union over modalities of ``image != 0`` with its holes
   filled (``binary_fill_holes``); every modality and the label are cropped to its bounding
   box. Inside the box, label-0 voxels outside the mask are marked -1 ("outside the body");
   they are stored as background (0), as nnU-Net's trainer maps -1 to 0.
2. Plan (over every case of ``dataset.json``'s training list, as nnU-Net plans over all of
   imagesTr before its cross-validation folds):
   * target spacing: per axis the median of the cases' spacings. nnU-Net v2.1's anisotropy
     rule: let ``w`` be the axis of the largest median spacing; if its median spacing is more
     than 3x the largest other median spacing AND its median size after cropping times 3 is
     smaller than the smallest other median size, axis ``w``'s target is instead the 10th
     percentile of its spacings, raised to (largest other median spacing + 1e-5) when below
     it.
   * CT intensities (modality "CT", any case): every 10th foreground (label > 0) voxel of
     each cropped case (C order over (z, y, x)), pooled over the cases: the 0.5 / 99.5
     percentiles, mean and (population) standard deviation.
   * nonzero-mask normalisation (non-CT modalities only): used when the median over cases of
     (voxels after cropping / voxels before) is below 3/4, i.e. cropping typically removed
     more than a quarter of the volume (BraTS-like skull-stripped data).
3. Resample each case from its spacing to the target spacing; new shape =
   round(spacing / target * shape). If max/min spacing > 3 for the case's spacing (else for
   the target spacing) and exactly one axis has the largest spacing, that axis is resampled
   separately: every slice across it is resized in-plane (images: order-3 spline, labels:
   order 1 on one-hot masks), then the axis itself is resampled with order 0 (nearest
   slice; ``map_coordinates`` with skimage's pixel-centre coordinate map) for images and
   labels. Otherwise all three axes at once: images order 3, labels order 1 on one-hot
   masks. Resizing is skimage's ``resize(mode='edge', anti_aliasing=False)``. Labels are
   nnU-Net's ``resize_segmentation``: for each present value v in ascending order (the -1
   mark included), voxels whose resized mask of v is >= 0.5 become v; voxels no value reaches
   0.5 become 0 (this is not an argmax; ties go to the larger value). NaNs become 0.
4. Normalise each modality: CT -- clip to [p0.5, p99.5] then (x - mean) / std with the
   dataset's statistics; other modalities -- z-score per case, over the voxels not marked -1
   (the resampled nonzero mask) when the nonzero-mask rule holds, with the voxels outside set
   to 0, else over the whole volume: (x - mean) / (std + 1e-8).

Left out of nnU-Net: the ``transpose_forward`` axis reordering (nnU-Net moves the axis of the
largest target spacing first; for the usual z-anisotropic data that is already (z, y, x)),
the "3d_lowres" cascade stage, and nnU-Net's patch-size / network planning.

Examples (``disable_shuffling``: sorted by case id): ``image`` float32 (D, H, W, C),
``label`` uint8 (D, H, W), ``spacing`` float32 (3,) (the target spacing, (z, y, x) in mm),
``case_id`` str. Splits ``train`` and ``validation``: validation is ``splits.json``'s list,
else every 5th case by sorted id (the 1st, 6th, 11th, ...: ceil(n / 5) cases); neither split
may be empty. The plan (``Plan.to_metadata``) is
stored in ``builder.info.metadata`` with each case's original spacing, shape and crop box;
``Plan.from_metadata(builder.info.metadata)`` and ``preprocess`` apply it to new volumes.

Build (ArrayRecord, which grain needs for random access):

    python -m swin_jax.data.medical_volumes --manual_dir /data/Task002_Synapse \\
        --data_dir ~/tfds [--name synapse]

and read it as ``config.dataset.name = 'medical_volumes/synapse'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from swin_jax.data import sources

NAME = "medical_volumes"
DATASET_JSON, SPLITS_JSON = "dataset.json", "splits.json"
NIFTI_ENDINGS = (".nii.gz", ".nii")
ANISOTROPY_THRESHOLD = 3.0          # nnU-Net's anisotropy_threshold / separate-z threshold
ANISOTROPIC_AXIS_PERCENTILE = 10    # target spacing of the low-resolution axis
FOREGROUND_SAMPLE_STEP = 10         # every 10th foreground voxel for the CT statistics
CT_PERCENTILES = (0.5, 99.5)
NONZERO_MASK_MAX_SIZE_REDUCTION = 0.75
VALIDATION_EVERY = 5
OUTSIDE = -1                        # label mark of the voxels outside the nonzero mask


class MedicalVolumesError(ValueError):
  """A raw folder that does not follow the MSD / nnU-Net layout (names the file)."""


# --- the raw folder --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
  """One training case: its image file(s) (one per modality, or one 4-D file) and label."""
  case_id: str
  image_files: tuple[str, ...]
  label_file: str | None
  four_d: bool   # MSD: a single file holding every modality


@dataclasses.dataclass(frozen=True)
class RawDataset:
  """A parsed raw folder: modalities in channel order, label names by id, cases by id."""
  root: str
  name: str
  modalities: tuple[str, ...]
  labels: dict[int, str]
  cases: tuple[Case, ...]


def _strip_ending(filename: str) -> str | None:
  for ending in NIFTI_ENDINGS:
    if filename.endswith(ending):
      return filename[:-len(ending)]
  return None


def _modalities(spec: Any, path: str) -> tuple[str, ...]:
  if not isinstance(spec, Mapping) or not spec:
    raise MedicalVolumesError(f"{path}: 'modality' must map channel indices to modality "
                              f"names, e.g. {{\"0\": \"CT\"}}; got {spec!r}")
  try:
    by_index = {int(k): v for k, v in spec.items()}
  except (TypeError, ValueError):
    raise MedicalVolumesError(f"{path}: 'modality' keys must be channel indices \"0\", "
                              f"\"1\", ...; got {sorted(spec)}") from None
  if sorted(by_index) != list(range(len(by_index))):
    raise MedicalVolumesError(f"{path}: 'modality' keys must be the channels 0..{len(spec) - 1}"
                              f", got {sorted(by_index)}")
  names = tuple(by_index[i] for i in range(len(by_index)))
  bad = [n for n in names if not isinstance(n, str) or not n.strip()]
  if bad:
    raise MedicalVolumesError(f"{path}: unknown modality {bad[0]!r} (modalities are named, "
                              f"e.g. 'CT', 'MRI', 'FLAIR', 'T1w'); got {spec!r}")
  return tuple(n.strip() for n in names)


def _labels(spec: Any, path: str) -> dict[int, str]:
  if not isinstance(spec, Mapping) or not spec:
    raise MedicalVolumesError(f"{path}: 'labels' must map class ids to names, e.g. "
                              f"{{\"0\": \"background\", \"1\": \"liver\"}}; got {spec!r}")
  if all(isinstance(v, int) and not isinstance(v, bool) for v in spec.values()):
    labels = {v: str(k) for k, v in spec.items()}   # nnU-Net v2: {name: id}
  else:
    try:
      labels = {int(k): str(v) for k, v in spec.items()}
    except (TypeError, ValueError):
      raise MedicalVolumesError(f"{path}: 'labels' keys must be class ids; got "
                                f"{sorted(spec)} (region-based labels are not supported)"
                                ) from None
  if 0 not in labels or min(labels) < 0 or max(labels) > 255:
    raise MedicalVolumesError(f"{path}: 'labels' must include 0 (background) and ids in "
                              f"0..255 (stored as uint8); got {sorted(labels)}")
  return dict(sorted(labels.items()))


def _resolve(root: str, relative: str) -> str:
  return os.path.normpath(os.path.join(root, relative))


def _case(root: str, entry: Any, num_channels: int, path: str) -> Case:
  if not isinstance(entry, Mapping) or not isinstance(entry.get("image"), str):
    raise MedicalVolumesError(f"{path}: each 'training' entry needs an 'image' path (and a "
                              f"'label' path); got {entry!r}")
  image = _resolve(root, entry["image"])
  stem = _strip_ending(os.path.basename(image))
  if stem is None:
    raise MedicalVolumesError(f"{path}: {entry['image']!r} is not a NIfTI file "
                              f"({' or '.join(NIFTI_ENDINGS)})")
  ending = os.path.basename(image)[len(stem):]
  label = entry.get("label")
  label = _resolve(root, label) if isinstance(label, str) else None
  if label is None:
    raise MedicalVolumesError(f"{path}: training case {stem!r} has no 'label'")
  if not os.path.isfile(label):
    raise FileNotFoundError(f"{NAME}: label file {label} of case {stem!r} (listed in {path}) "
                            f"does not exist")
  if os.path.isfile(image):
    return Case(stem, (image,), label, four_d=True)
  per_channel = tuple(os.path.join(os.path.dirname(image), f"{stem}_{c:04d}{ending}")
                      for c in range(num_channels))
  missing = [f for f in per_channel if not os.path.isfile(f)]
  if not missing:
    return Case(stem, per_channel, label, four_d=False)
  if len(missing) == num_channels:
    raise FileNotFoundError(f"{NAME}: no image of case {stem!r} (listed in {path}): neither "
                            f"{image} (MSD) nor {per_channel[0]} (nnU-Net) exists")
  raise FileNotFoundError(f"{NAME}: case {stem!r} lacks modality file(s) {missing} "
                          f"('modality' in {path} declares {num_channels} channels)")


def read_raw_dataset(manual_dir: str) -> RawDataset:
  """Parses ``manual_dir/dataset.json`` and finds every case's files; raises naming what is
  missing or malformed. Cases are sorted by id."""
  root = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{NAME}: manual dir {root} does not exist; it must hold "
                            f"{DATASET_JSON}, imagesTr/ and labelsTr/ (MSD / nnU-Net raw layout)")
  path = os.path.join(root, DATASET_JSON)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{NAME}: {path} is missing; the MSD / nnU-Net raw layout "
                            f"describes its modalities, labels and cases there")
  try:
    with open(path) as f:
      spec = json.load(f)
  except (OSError, ValueError) as e:
    raise MedicalVolumesError(f"{path}: cannot read it as JSON: {e}") from e
  if not isinstance(spec, Mapping):
    raise MedicalVolumesError(f"{path}: expected a JSON object")
  if "labels" not in spec:
    raise MedicalVolumesError(f"{path}: key 'labels' is missing")
  if "modality" not in spec and "channel_names" not in spec:
    raise MedicalVolumesError(f"{path}: key 'modality' is missing")
  modalities = _modalities(spec.get("modality", spec.get("channel_names")), path)
  labels = _labels(spec["labels"], path)
  entries = spec.get("training")
  if entries is None:   # nnU-Net v2: the cases are the label files
    ending = spec.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
      raise MedicalVolumesError(f"{path}: file_ending {ending!r}: only NIfTI is supported")
    labels_dir = os.path.join(root, "labelsTr")
    if not os.path.isdir(labels_dir):
      raise FileNotFoundError(f"{NAME}: {path} has no 'training' list and {labels_dir} "
                              f"does not exist")
    entries = [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"}
               for n in sorted(os.listdir(labels_dir))
               if n.endswith(ending) and not n.startswith(".")]
  if not isinstance(entries, list) or not entries:
    raise MedicalVolumesError(f"{path}: 'training' must be a non-empty list of cases")
  cases = sorted((_case(root, e, len(modalities), path) for e in entries),
                 key=lambda c: c.case_id)
  ids = [c.case_id for c in cases]
  duplicates = sorted({i for i in ids if ids.count(i) > 1})
  if duplicates:
    raise MedicalVolumesError(f"{path}: case(s) {duplicates} are listed more than once")
  name = spec.get("name") if isinstance(spec.get("name"), str) else ""
  return RawDataset(root=root, name=name, modalities=modalities, labels=labels,
                    cases=tuple(cases))


def config_name(name: str) -> str:
  """A TFDS config name from a task name: lower case, runs of other characters -> '_'."""
  cleaned = re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_")
  if not cleaned:
    raise MedicalVolumesError(f"{NAME}: {name!r} gives no usable dataset name; pass --name")
  return cleaned


# --- reading volumes -------------------------------------------------------------------

def read_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
  """``(array, spacing)``: the voxels as (z, y, x) (a 4-D file: (C, z, y, x)), float32, and
  the spacing (z, y, x) in mm from the header's zooms. Trailing length-1 axes beyond the
  third are dropped."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel  (only while building)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{NAME}: {path} does not exist")
  try:
    image = nib.load(path)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    zooms = image.header.get_zooms()
  except Exception as e:  # nibabel / gzip errors of a truncated or foreign file
    raise MedicalVolumesError(f"{NAME}: cannot read {path} as NIfTI: {e}") from e
  while data.ndim > 3 and data.shape[-1] == 1:
    data = data[..., 0]
  if data.ndim not in (3, 4):
    raise MedicalVolumesError(f"{NAME}: {path} has shape {data.shape}; expected a 3-D "
                              f"volume (or 4-D: volume x modality)")
  spacing = np.array([float(z) for z in zooms[:3]][::-1])
  if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
    raise MedicalVolumesError(f"{NAME}: {path} has voxel spacing {spacing[::-1]} (x, y, z); "
                              f"spacings must be positive")
  axes = (2, 1, 0) if data.ndim == 3 else (3, 2, 1, 0)
  return np.ascontiguousarray(data.transpose(axes)), spacing


def load_case(case: Case, num_channels: int,
              check_labels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None,
                                                                   np.ndarray]:
  """``(image float32 (C, D, H, W), label int16 (D, H, W) or None, spacing (3,))``.

  Raises if the modalities, or the label, disagree with the image in shape or spacing, if
  the channel count is not ``num_channels``, or if the label holds non-integer values or ids
  outside ``check_labels``.
  """
  volumes, spacing = [], None
  for path in case.image_files:
    array, this_spacing = read_nifti(path)
    if array.ndim == 3:
      array = array[None]
    elif not case.four_d:
      raise MedicalVolumesError(f"{NAME}: {path} is 4-D {array.shape[::-1]}; nnU-Net-style "
                                f"files (_0000, _0001, ...) hold one modality each")
    if volumes and array.shape[1:] != volumes[0].shape[1:]:
      raise MedicalVolumesError(f"{NAME}: case {case.case_id!r}: {path} has shape "
                                f"{array.shape[1:]} (z, y, x) but {case.image_files[0]} has "
                                f"{volumes[0].shape[1:]}")
    if spacing is not None and not np.allclose(this_spacing, spacing, rtol=1e-3):
      raise MedicalVolumesError(f"{NAME}: case {case.case_id!r}: {path} has spacing "
                                f"{this_spacing} (z, y, x) but {case.image_files[0]} has "
                                f"{spacing}")
    spacing = this_spacing if spacing is None else spacing
    volumes.append(array)
  image = np.concatenate(volumes, axis=0) if len(volumes) > 1 else volumes[0]
  if image.shape[0] != num_channels:
    raise MedicalVolumesError(f"{NAME}: case {case.case_id!r}: {case.image_files[0]} holds "
                              f"{image.shape[0]} modalities but 'modality' in {DATASET_JSON} "
                              f"declares {num_channels}")
  image = np.nan_to_num(image, nan=0.0, copy=False)
  label = None
  if case.label_file is not None:
    raw, label_spacing = read_nifti(case.label_file)
    if raw.shape != image.shape[1:]:
      raise MedicalVolumesError(f"{NAME}: case {case.case_id!r}: label {case.label_file} has "
                                f"shape {raw.shape} (z, y, x) but the image has "
                                f"{image.shape[1:]}")
    if not np.allclose(label_spacing, spacing, rtol=1e-3):
      raise MedicalVolumesError(f"{NAME}: case {case.case_id!r}: label {case.label_file} has "
                                f"spacing {label_spacing} (z, y, x) but the image has {spacing}")
    rounded = np.rint(raw)
    if not np.all(np.isfinite(raw)) or np.any(np.abs(raw - rounded) > 1e-3):
      raise MedicalVolumesError(f"{NAME}: label {case.label_file} holds non-integer values")
    label = rounded.astype(np.int16)
    if check_labels is not None:
      unexpected = sorted(set(np.unique(label).tolist()) - set(check_labels))
      if unexpected:
        raise MedicalVolumesError(f"{NAME}: label {case.label_file} holds ids {unexpected} "
                                  f"that 'labels' in {DATASET_JSON} does not declare "
                                  f"({sorted(check_labels)})")
  return image, label, spacing


# --- cropping ----------------------------------------------------------------------------

def nonzero_mask(image: np.ndarray) -> np.ndarray:
  """Voxels nonzero in any modality of ``image`` (C, D, H, W), holes filled."""
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  return ndimage.binary_fill_holes(np.any(image != 0, axis=0))


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
  """``((start, stop),) * ndim``: the smallest box holding every True voxel."""
  if not mask.any():
    raise MedicalVolumesError(f"{NAME}: the image is zero everywhere (nothing to crop to)")
  box = []
  for axis in range(mask.ndim):
    hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
    box.append((int(hit[0]), int(hit[-1]) + 1))
  return tuple(box)


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
  """``(image (C, d, h, w), seg int16 (d, h, w), box)``: cropped to the nonzero box.

  ``seg`` is the cropped label (zeros without one) with label-0 voxels outside the nonzero
  mask set to -1.
  """
  mask = nonzero_mask(image)
  box = bounding_box(mask)
  window = tuple(slice(a, b) for a, b in box)
  cropped = image[(slice(None),) + window]
  seg = (np.zeros(mask.shape, np.int16) if label is None else label.astype(np.int16))[window]
  seg = seg.copy()
  seg[(seg == 0) & ~mask[window]] = OUTSIDE
  return cropped, seg, box


# --- the plan ----------------------------------------------------------------------------

def target_spacing(spacings: Sequence[Sequence[float]], sizes: Sequence[Sequence[int]],
                   threshold: float = ANISOTROPY_THRESHOLD) -> np.ndarray:
  """nnU-Net v2.1's target spacing from the cases' spacings and sizes after cropping
  (both (z, y, x)): the median per axis, with the anisotropy rule of the module docstring."""
  spacings, sizes = np.asarray(spacings, float), np.asarray(sizes, float)
  target = np.percentile(spacings, 50, axis=0)
  median_size = np.percentile(sizes, 50, axis=0)
  worst = int(np.argmax(target))
  others = [a for a in range(3) if a != worst]
  other_spacing = max(target[a] for a in others)
  anisotropic_spacing = target[worst] > threshold * other_spacing
  anisotropic_voxels = median_size[worst] * threshold < min(median_size[a] for a in others)
  if anisotropic_spacing and anisotropic_voxels:
    axis_target = np.percentile(spacings[:, worst], ANISOTROPIC_AXIS_PERCENTILE)
    if axis_target < other_spacing:
      axis_target = max(other_spacing, axis_target) + 1e-5
    target[worst] = axis_target
  return target


def intensity_statistics(voxels: np.ndarray) -> dict[str, float]:
  """The CT statistics nnU-Net keeps of the pooled foreground samples."""
  voxels = np.asarray(voxels, np.float64)
  if voxels.size == 0:
    raise MedicalVolumesError(f"{NAME}: no foreground (label > 0) voxels to compute the CT "
                              f"intensity statistics from")
  lower, upper = np.percentile(voxels, CT_PERCENTILES)
  return {"mean": float(voxels.mean()), "std": float(voxels.std()),
          "lower": float(lower), "upper": float(upper)}


@dataclasses.dataclass(frozen=True)
class Plan:
  """How every volume of a task is preprocessed (stored as the builder's metadata).

  ``intensity[c]``: CT channels ``{'mean', 'std', 'lower', 'upper'}`` (lower/upper: the 0.5 /
  99.5 foreground percentiles), else None.
  """
  name: str
  modalities: tuple[str, ...]
  labels: dict[int, str]
  target_spacing: tuple[float, float, float]
  normalization: tuple[str, ...]          # 'CT' | 'nonCT' per channel
  use_nonzero_mask: tuple[bool, ...]
  intensity: tuple[dict[str, float] | None, ...]

  @property
  def num_channels(self) -> int:
    return len(self.modalities)

  def to_metadata(self) -> dict[str, Any]:
    """JSON-ready (label ids become strings, as JSON keys must)."""
    return {"name": self.name, "modalities": list(self.modalities),
            "labels": {str(k): v for k, v in self.labels.items()},
            "target_spacing": [float(s) for s in self.target_spacing],
            "normalization": list(self.normalization),
            "use_nonzero_mask": [bool(u) for u in self.use_nonzero_mask],
            "intensity": [None if i is None else dict(i) for i in self.intensity]}

  @classmethod
  def from_metadata(cls, metadata: Mapping[str, Any]) -> "Plan":
    return cls(name=metadata["name"], modalities=tuple(metadata["modalities"]),
               labels={int(k): v for k, v in metadata["labels"].items()},
               target_spacing=tuple(float(s) for s in metadata["target_spacing"]),
               normalization=tuple(metadata["normalization"]),
               use_nonzero_mask=tuple(bool(u) for u in metadata["use_nonzero_mask"]),
               intensity=tuple(None if i is None else {k: float(v) for k, v in i.items()}
                               for i in metadata["intensity"]))


def is_ct(modality: str) -> bool:
  return modality.strip().upper() == "CT"


def plan_dataset(raw: RawDataset, name: str | None = None,
                 progress: Callable[[str], None] | None = None
                 ) -> tuple[Plan, dict[str, dict[str, Any]]]:
  """Reads and crops every case once: ``(plan, {case_id: properties})``; the properties are
  the original spacing and shape (z, y, x) and the crop box."""
  spacings, sizes, reductions, properties = [], [], [], {}
  ct_channels = [c for c, m in enumerate(raw.modalities) if is_ct(m)]
  foreground = {c: [] for c in ct_channels}
  for k, case in enumerate(raw.cases):
    image, label, spacing = load_case(case, len(raw.modalities), tuple(raw.labels))
    cropped, seg, box = crop_to_nonzero(image, label)
    spacings.append(spacing)
    sizes.append(cropped.shape[1:])
    reductions.append(np.prod(cropped.shape[1:]) / np.prod(image.shape[1:]))
    for c in ct_channels:
      foreground[c].append(cropped[c][seg > 0][::FOREGROUND_SAMPLE_STEP])
    properties[case.case_id] = {"original_spacing": [float(s) for s in spacing],
                                "original_shape": [int(s) for s in image.shape[1:]],
                                "crop_box": [list(b) for b in box]}
    if progress:
      progress(f"plan [{k + 1}/{len(raw.cases)}] {case.case_id}: shape {image.shape[1:]} "
               f"spacing {np.round(spacing, 4).tolist()} -> cropped {cropped.shape[1:]}")
  use_mask = bool(np.median(reductions) < NONZERO_MASK_MAX_SIZE_REDUCTION)
  plan = Plan(
      name=name or config_name(raw.name or os.path.basename(raw.root)),
      modalities=raw.modalities, labels=dict(raw.labels),
      target_spacing=tuple(float(s) for s in target_spacing(spacings, sizes)),
      normalization=tuple("CT" if is_ct(m) else "nonCT" for m in raw.modalities),
      use_nonzero_mask=tuple(False if is_ct(m) else use_mask for m in raw.modalities),
      intensity=tuple(intensity_statistics(np.concatenate(foreground[c])) if c in foreground
                      else None for c in range(len(raw.modalities))))
  return plan, properties


# --- resampling --------------------------------------------------------------------------

def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    new_spacing: Sequence[float]) -> tuple[int, ...]:
  """round(spacing / new_spacing * shape), at least 1 per axis."""
  ratio = np.asarray(spacing, float) / np.asarray(new_spacing, float)
  return tuple(max(1, int(n)) for n in np.round(ratio * np.asarray(shape, float)))


def separate_axis(spacing: Sequence[float], new_spacing: Sequence[float],
                  threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
  """The axis resampled on its own (order 0), or None: nnU-Net's ``do_separate_z`` rule."""
  for candidate in (np.asarray(spacing, float), np.asarray(new_spacing, float)):
    if candidate.max() / candidate.min() > threshold:
      lowres = np.flatnonzero(candidate.max() / candidate == 1)
      return int(lowres[0]) if len(lowres) == 1 else None
  return None


def _resize(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
  from skimage.transform import resize  # pylint: disable=import-outside-toplevel
  return resize(volume.astype(np.float64), tuple(shape), order=order, mode="edge",
                anti_aliasing=False)


def _resize_segmentation(seg: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
  """nnU-Net's (batchgenerators') resize_segmentation: per-value masks, >= 0.5 wins."""
  if tuple(seg.shape) == tuple(shape):
    return seg.copy()
  out = np.zeros(tuple(shape), seg.dtype)
  for value in np.unique(seg):
    out[_resize((seg == value).astype(np.float64), shape, order) >= 0.5] = value
  return out


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """The source slice of each output slice for order-0 ``map_coordinates`` with skimage's
  pixel-centre coordinate map (what nnU-Net's out-of-plane step computes)."""
  from scipy.ndimage import map_coordinates  # pylint: disable=import-outside-toplevel
  coords = n_in / n_out * (np.arange(n_out) + 0.5) - 0.5
  picked = map_coordinates(np.arange(n_in, dtype=np.float64), coords[None], order=0,
                           mode="nearest")
  return np.rint(picked).astype(np.int64)


def _resample(volume: np.ndarray, shape: Sequence[int], axis: int | None,
              resize2d: Callable, resize3d: Callable) -> np.ndarray:
  if tuple(volume.shape) == tuple(shape):
    return volume.copy()
  if axis is None:
    return resize3d(volume, shape)
  in_plane = [s for a, s in enumerate(shape) if a != axis]
  slices = [resize2d(np.take(volume, k, axis=axis), in_plane)
            for k in range(volume.shape[axis])]
  stacked = np.stack(slices, axis=axis)
  if volume.shape[axis] != shape[axis]:
    stacked = np.take(stacked, _nearest_indices(volume.shape[axis], shape[axis]), axis=axis)
  return stacked


def resample_image(image: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float],
                   order: int = 3) -> np.ndarray:
  """``image`` (C, D, H, W) at ``new_spacing``: order ``order`` (order 0 across a separate
  axis), float32."""
  shape = resampled_shape(image.shape[1:], spacing, new_spacing)
  axis = separate_axis(spacing, new_spacing)
  out = [_resample(channel, shape, axis, lambda v, s: _resize(v, s, order),
                   lambda v, s: _resize(v, s, order)) for channel in image]
  return np.stack(out).astype(np.float32)


def resample_label(seg: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float],
                   order: int = 1) -> np.ndarray:
  """``seg`` (D, H, W) at ``new_spacing``: per-value masks of order ``order`` (order 0 across
  a separate axis); only values of ``seg`` appear."""
  shape = resampled_shape(seg.shape, spacing, new_spacing)
  axis = separate_axis(spacing, new_spacing)
  return _resample(seg, shape, axis, lambda v, s: _resize_segmentation(v, s, order),
                   lambda v, s: _resize_segmentation(v, s, order))


# --- normalisation and the whole pipeline ------------------------------------------------

def normalize(image: np.ndarray, seg: np.ndarray, plan: Plan) -> np.ndarray:
  """nnU-Net's per-channel normalisation of ``image`` (C, D, H, W); ``seg`` marks the
  voxels outside the nonzero mask with -1."""
  out = np.empty(image.shape, np.float32)
  for c in range(image.shape[0]):
    channel = image[c].astype(np.float64)
    if plan.normalization[c] == "CT":
      stats = plan.intensity[c]
      channel = (np.clip(channel, stats["lower"], stats["upper"]) - stats["mean"]) / stats["std"]
      if plan.use_nonzero_mask[c]:
        channel[seg < 0] = 0
    else:
      mask = seg >= 0 if plan.use_nonzero_mask[c] else np.ones(seg.shape, bool)
      values = channel[mask]
      channel = np.where(mask, (channel - values.mean()) / (values.std() + 1e-8), 0.0)
    out[c] = channel
  return out


@dataclasses.dataclass(frozen=True)
class Preprocessed:
  """A preprocessed case: ``image`` (C, D, H, W) float32, ``seg`` int16 (D, H, W) with -1
  outside the nonzero mask, and where it came from."""
  image: np.ndarray
  seg: np.ndarray
  crop_box: tuple[tuple[int, int], ...]
  original_shape: tuple[int, ...]
  cropped_shape: tuple[int, ...]

  @property
  def label(self) -> np.ndarray:
    """The class ids as stored: uint8, -1 -> 0."""
    return np.maximum(self.seg, 0).astype(np.uint8)


def preprocess(image: np.ndarray, spacing: Sequence[float], plan: Plan,
               label: np.ndarray | None = None) -> Preprocessed:
  """Crop, resample to ``plan.target_spacing`` and normalise one case (``image`` (C, D, H,
  W), ``spacing`` (z, y, x)); ``label`` optional (inference)."""
  image = np.asarray(image, np.float32)
  if image.ndim != 4 or image.shape[0] != plan.num_channels:
    raise MedicalVolumesError(f"{NAME}: expected an image (C={plan.num_channels}, D, H, W), "
                              f"got {image.shape}")
  if label is not None and tuple(label.shape) != image.shape[1:]:
    raise MedicalVolumesError(f"{NAME}: label shape {label.shape} != image shape "
                              f"{image.shape[1:]}")
  cropped, seg, box = crop_to_nonzero(np.nan_to_num(image, nan=0.0), label)
  resampled = resample_image(cropped, spacing, plan.target_spacing)
  seg = resample_label(seg, spacing, plan.target_spacing)
  return Preprocessed(image=normalize(resampled, seg, plan), seg=seg, crop_box=box,
                      original_shape=tuple(image.shape[1:]), cropped_shape=cropped.shape[1:])


# --- splits --------------------------------------------------------------------------------

def split_case_ids(raw: RawDataset) -> dict[str, list[str]]:
  """``{'train': [...], 'validation': [...]}`` (sorted ids): ``splits.json``'s validation
  list, else every 5th case by sorted id (the 1st, 6th, 11th, ...)."""
  ids = [c.case_id for c in raw.cases]
  path = os.path.join(raw.root, SPLITS_JSON)
  if os.path.isfile(path):
    try:
      with open(path) as f:
        spec = json.load(f)
    except (OSError, ValueError) as e:
      raise MedicalVolumesError(f"{path}: cannot read it as JSON: {e}") from e
    listed = spec.get("validation") if isinstance(spec, Mapping) else None
    if not isinstance(listed, list) or not all(isinstance(i, str) for i in listed):
      raise MedicalVolumesError(f"{path}: expected {{\"validation\": [case ids]}}")
    unknown = sorted(set(listed) - set(ids))
    if unknown:
      raise MedicalVolumesError(f"{path}: validation case(s) {unknown} are not training cases "
                                f"of {DATASET_JSON}")
    validation = set(listed)
  else:
    validation = {i for k, i in enumerate(ids) if k % VALIDATION_EVERY == 0}
  splits = {"train": [i for i in ids if i not in validation],
            "validation": [i for i in ids if i in validation]}
  empty = [split for split, members in splits.items() if not members]
  if empty:   # TFDS cannot write an empty split
    raise MedicalVolumesError(
        f"{NAME}: split {empty[0]!r} would be empty ({len(ids)} case(s); validation "
        f"{'from ' + path if os.path.isfile(path) else 'is every 5th case'}); both the train "
        f"and the validation split need at least one case")
  return splits


# --- TFDS ----------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class MedicalVolumesConfig(tfds.core.BuilderConfig):
  """One task (``medical_volumes/<name>``); ``num_channels`` fixes the image feature."""
  num_channels: int = 1


def features(num_channels: int) -> tfds.features.FeaturesDict:
  tensor, encoding = tfds.features.Tensor, tfds.features.Encoding
  # None-dim tensors need an encoding: raw float32 bytes for images (they compress poorly),
  # zlib for the mostly-background labels.
  return tfds.features.FeaturesDict({
      "image": tensor(shape=(None, None, None, num_channels), dtype=np.float32,
                      encoding=encoding.BYTES),
      "label": tensor(shape=(None, None, None), dtype=np.uint8, encoding=encoding.ZLIB),
      "spacing": tensor(shape=(3,), dtype=np.float32),
      "case_id": tfds.features.Text(),
  })


def _stderr(line: str) -> None:
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  tqdm.write(line, file=sys.stderr)
  sys.stderr.flush()


class MedicalVolumes(tfds.core.GeneratorBasedBuilder):
  """MSD / nnU-Net raw 3-D volumes, preprocessed as nnU-Net does, from a manual dir.

  Construct with ``config=MedicalVolumesConfig(name=<task>, num_channels=C)``; a prepared
  task is read back by name (``tfds.builder('medical_volumes/<task>', data_dir=...)``, which
  TFDS serves from the stored files).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "nnU-Net v1 (plans v2.1) preprocessing of MSD / nnU-Net raw data."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  manual_dir is a Medical Segmentation Decathlon task folder or an nnU-Net raw task folder:
  dataset.json, imagesTr/ and labelsTr/ (and optionally splits.json).
  """

  def __init__(self, *args, progress: Callable[[str], None] | None = _stderr, **kwargs):
    self._progress = progress
    super().__init__(*args, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    num_channels = getattr(self.builder_config, "num_channels", 1)
    return self.dataset_info_from_configs(
        features=features(num_channels),
        homepage="http://medicaldecathlon.com/",
        disable_shuffling=True,   # examples in case-id order
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    raw = read_raw_dataset(os.fspath(dl_manager.manual_dir))
    if len(raw.modalities) != self.builder_config.num_channels:
      raise MedicalVolumesError(f"{NAME}: config {self.builder_config.name!r} has "
                                f"{self.builder_config.num_channels} channels but "
                                f"{raw.root}/{DATASET_JSON} declares {len(raw.modalities)}")
    splits = split_case_ids(raw)
    plan, properties = plan_dataset(raw, self.builder_config.name, self._progress)
    if self._progress:
      self._progress(f"plan: target spacing {np.round(plan.target_spacing, 5).tolist()} "
                     f"(z, y, x), normalisation {list(plan.normalization)}, nonzero mask "
                     f"{list(plan.use_nonzero_mask)}; {len(splits['train'])} train / "
                     f"{len(splits['validation'])} validation cases")
    self.info.metadata.update(plan.to_metadata())
    self.info.metadata["cases"] = properties
    self.info.metadata["splits"] = splits
    by_id = {c.case_id: c for c in raw.cases}
    return {split: self._generate_examples([by_id[i] for i in ids], plan, split)
            for split, ids in splits.items()}

  def _generate_examples(self, cases: Sequence[Case], plan: Plan,
                         split: str) -> Iterator[tuple[str, dict]]:
    for k, case in enumerate(cases):
      image, label, spacing = load_case(case, plan.num_channels, tuple(plan.labels))
      out = preprocess(image, spacing, plan, label)
      if self._progress:
        self._progress(f"{split} [{k + 1}/{len(cases)}] {case.case_id}: {image.shape[1:]} "
                       f"@ {np.round(spacing, 4).tolist()} -> {out.image.shape[1:]}")
      yield case.case_id, {
          "image": np.ascontiguousarray(out.image.transpose(1, 2, 3, 0)),
          "label": out.label,
          "spacing": np.asarray(plan.target_spacing, np.float32),
          "case_id": case.case_id,
      }


def build(manual_dir: str, data_dir: str, name: str | None = None, *,
          progress: Callable[[str], None] | None = _stderr) -> str:
  """Builds ``medical_volumes/<name>`` (default: dataset.json's ``name``) as ArrayRecord
  under ``data_dir``; returns its folder."""
  manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
  raw = read_raw_dataset(manual_dir)   # clear errors before TFDS's own checks
  task = config_name(name or raw.name or os.path.basename(raw.root))
  split_case_ids(raw)
  config = MedicalVolumesConfig(name=task, num_channels=len(raw.modalities),
                                description=f"{raw.name or task} ({', '.join(raw.modalities)})")
  builder = MedicalVolumes(config=config, data_dir=os.path.expanduser(os.fspath(data_dir)),
                           file_format="array_record", progress=progress)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return os.fspath(builder.data_dir)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog=f"python -m swin_jax.data.{NAME}",
      description="Build an MSD / nnU-Net raw task as a TFDS dataset (ArrayRecord), "
                  "preprocessed as nnU-Net v1 does.")
  parser.add_argument("--manual_dir", required=True,
                      help="folder with dataset.json, imagesTr/, labelsTr/ (and splits.json)")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--name", default="",
                      help="config name (default: dataset.json's 'name', lower-cased)")
  args = parser.parse_args(argv)
  data_dir = sources.resolve_data_dir(args.data_dir)
  raw = read_raw_dataset(args.manual_dir)
  task = config_name(args.name or raw.name or os.path.basename(raw.root))
  splits = split_case_ids(raw)
  print(f"{NAME}/{task}: {len(raw.cases)} cases ({len(splits['train'])} train, "
        f"{len(splits['validation'])} validation), modalities {list(raw.modalities)}, "
        f"{len(raw.labels)} labels; writing ArrayRecord under {data_dir}",
        file=sys.stderr, flush=True)
  path = build(args.manual_dir, data_dir, task)
  print(f"built {path}; use config.dataset.name = {f'{NAME}/{task}'!r}")


if __name__ == "__main__":
  main()
