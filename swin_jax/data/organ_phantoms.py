"""Organ phantoms: procedural 3-D "MR" volumes for 3-D segmentation, with exact labels.

Each volume (default ``(D, H, W) = (32, 64, 64)`` voxels of ``SPACING = (2, 1, 1)`` mm, so
a 64 mm cube) is a dark background holding a *body*: a large ellipsoid of soft tissue
(rotated a little about the D axis) that fills the volume in D, as an abdominal crop does.
Inside the body lie ``NUM_ORGANS = 4`` organ classes, each made of ellipsoids (a random
centre inside the body, random semi-axes in the class's range, a uniformly random 3-D
rotation), clipped to the body; later classes overwrite earlier ones where they overlap:

  label  name     blobs  semi-axes (mm, at a 64 mm field)  mean intensity (noise sigmas)
  1      liver    1      13-19, 13-19, 13-19               +4  (the largest)
  2      kidney   2      6-8, 6-8, 10-13                   +2  (a mirrored pair)
  3      spleen   1      6-9, 8-11, 10-14                  -2  (darker than tissue)
  4      vessel   1      5-6.5, 5-6.5, 16-24               +6  (a long tube)

Label 0 is everything else (background and body tissue, mean 0; the air outside the body
-5). Intensities are ``gain * (mean + jitter + texture + noise) + offset``: each region's
mean jittered per volume (``INTENSITY_JITTER``), one smooth low-frequency texture over the
body (``TEXTURE_SIGMA``), white Gaussian noise (``NOISE_SIGMA = 1``), a random gain and
offset; then the volume is z-scored as a whole, as nnU-Net normalises MR. Adjacent levels
are 2 noise sigmas apart, so a voxel alone is ambiguous (labelling each voxel by the
nearest of its volume's true levels gives a mean foreground Dice near 0.45), but its
neighbourhood and the organ's shape and size are not (a tiny 3-D U-Net trained for 450
steps on 16x32x32 crops, a few CPU minutes, reached a test Dice of about 0.81); classes
adjacent in intensity differ in size or shape. Sizes scale with the field of view
(``size * SPACING``).

Labels are exact by construction: a voxel (centre ``(index - (n - 1) / 2) * spacing`` mm
from the volume centre) is organ ``k`` where it lies inside the body and inside one of
``k``'s ellipsoids (``|diag(1 / semi_axes) R^T (p - centre)| <= 1``) and inside no later
class's; ``make_phantom`` returns those parameters. Every class is present in every
volume: an organ whose part inside the body and the volume is under ``MIN_KEPT`` of its
smallest nominal volume, or that would leave an earlier class under ``MIN_VISIBLE`` of the
voxels it had when painted, is redrawn. A volume depends only on ``(seed, split, index)``
and ``size``.

An example (``make_example``; the TFDS features)::

  image    float32 (D, H, W, 1)  z-scored intensities
  label    uint8   (D, H, W)     0 background, 1..4 the organs above
  spacing  float32 (3,)          mm along D, H, W
  case_id  str                   '<split>_<index:04d>'

The TFDS build (``ensure_organ_phantoms``) is an ArrayRecord dataset
``organ_phantoms/<config>`` (config ``32x64x64`` by default: 24 train and 6 test volumes),
built on first use like ``digit_scenes``; read it with ``sources.open_source``
(``config.dataset.name = 'organ_phantoms/32x64x64'``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from swin_jax.data import staged_build

DATASET = "organ_phantoms"
VERSION = "1.0.0"
DEFAULT_SIZE = (32, 64, 64)
DEFAULT_NUM_TRAIN = 24
DEFAULT_NUM_TEST = 6
DEFAULT_SEED = 0
MIN_SIZE = (16, 32, 32)            # smaller volumes would leave organs a few voxels wide
SPACING = (2.0, 1.0, 1.0)          # mm along D, H, W
REFERENCE_FIELD_MM = 64.0          # the field of view the mm sizes below are given for

NUM_ORGANS = 4
CLASS_NAMES = ("background", "liver", "kidney", "spleen", "vessel")
NOISE_SIGMA = 1.0
BACKGROUND_MEAN = -5.0             # air outside the body
TISSUE_MEAN = 0.0                  # the body's soft tissue (label 0 too)
# Organ means in noise sigmas, label 1..4: the levels spleen -2, tissue 0, kidney 2, liver 4,
# vessel 6 are 2 sigma apart, and neighbours on this ladder differ in size or shape (the
# similar kidneys and spleen are 4 sigma apart).
CLASS_MEANS = (4.0, 2.0, -2.0, 6.0)
INTENSITY_JITTER = 0.25            # each region's mean moves by up to this, per volume
TEXTURE_SIGMA = 0.3                # std of the smooth texture over the body
TEXTURE_SCALE_MM = 16.0            # spacing of the texture's control points
GAIN_RANGE = (0.8, 1.25)           # scanner gain and offset: removed again by the z-score
OFFSET_RANGE = (-1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class OrganClass:
  label: int
  name: str
  blobs: int
  semi_axes_mm: tuple[tuple[float, float], ...]   # (low, high) of each semi-axis


ORGANS = (
    OrganClass(1, "liver", 1, ((13, 19), (13, 19), (13, 19))),
    OrganClass(2, "kidney", 2, ((6, 8), (6, 8), (10, 13))),
    OrganClass(3, "spleen", 1, ((6, 9), (8, 11), (10, 14))),
    OrganClass(4, "vessel", 1, ((5, 6.5), (5, 6.5), (16, 24))),
)
# Body semi-axes as fractions of the half field along D, H, W (D: beyond the volume).
BODY_SEMI_AXES = ((1.3, 1.6), (0.68, 0.8), (0.82, 0.94))
BODY_TILT_DEGREES = 10.0           # rotation about the D axis
ORGAN_CENTRE_REACH = 0.65          # organ centres lie in the body shrunk by this
MIN_KEPT = 0.4                     # of an organ's nominal volume, inside body and volume
MIN_VISIBLE = 0.5                  # of a class's voxels left uncovered by later classes
MAX_DRAWS = 200
# Separate random streams per split: the same seed never repeats a volume across splits.
_SPLIT_CODES = {"train": 0, "test": 1}


# --- geometry ----------------------------------------------------------------------------

def check_size(size: Sequence[int]) -> tuple[int, int, int]:
  """``size`` as a ``(D, H, W)`` int tuple; ValueError unless it is 3 ints >= ``MIN_SIZE``."""
  try:
    dims = tuple(int(s) for s in size)
    whole = all(int(s) == s for s in size)
  except (TypeError, ValueError):
    dims, whole = (), False
  if len(dims) != 3 or not whole or any(d < m for d, m in zip(dims, MIN_SIZE)):
    raise ValueError(f"organ phantom size must be 3 ints (D, H, W), each at least "
                     f"{MIN_SIZE}, got {size!r}")
  return dims


def voxel_coordinates(size: Sequence[int],
                      spacing: Sequence[float] = SPACING) -> tuple[np.ndarray, ...]:
  """Per axis, the voxel centres in mm from the volume centre: ``(index - (n-1)/2) * s``."""
  return tuple((np.arange(n, dtype=np.float64) - (n - 1) / 2) * s
               for n, s in zip(size, spacing))


def ellipsoid_mask(size: Sequence[int], centre: np.ndarray, semi_axes: np.ndarray,
                   rotation: np.ndarray, spacing: Sequence[float] = SPACING) -> np.ndarray:
  """Bool ``size``: voxels with ``|diag(1/semi_axes) rotation^T (p - centre)| <= 1``.

  ``rotation``'s columns are the ellipsoid's axes (mm coordinates along D, H, W). Only the
  ellipsoid's bounding box is evaluated.
  """
  mask = np.zeros(tuple(size), bool)
  coordinates = voxel_coordinates(size, spacing)
  reach = np.sqrt(((rotation * semi_axes) ** 2).sum(1))   # the box's half-widths (mm)
  window = []
  for axis, (p, c, r) in enumerate(zip(coordinates, centre, reach)):
    inside = np.flatnonzero(np.abs(p - c) <= r)
    if not len(inside):
      return mask
    window.append(slice(inside[0], inside[-1] + 1))
  local = [p[w] - c for p, w, c in zip(coordinates, window, centre)]
  grid = (local[0][:, None, None, None] * rotation[0] + local[1][None, :, None, None] *
          rotation[1] + local[2][None, None, :, None] * rotation[2])   # (d, h, w, 3)
  mask[tuple(window)] = ((grid / semi_axes) ** 2).sum(-1) <= 1
  return mask


def random_rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random 3-D rotation matrix (from a random unit quaternion)."""
  w, x, y, z = (q := rng.standard_normal(4)) / np.linalg.norm(q)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rotation_about_depth(angle: float) -> np.ndarray:
  """The rotation by ``angle`` (radians) in the H-W plane."""
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def field_scale(size: Sequence[int], spacing: Sequence[float] = SPACING) -> float:
  """Organ sizes scale with the smallest extent of the field of view (1 at 64 mm)."""
  return min(n * s for n, s in zip(size, spacing)) / REFERENCE_FIELD_MM


def smooth_texture(rng: np.random.Generator, size: Sequence[int],
                   spacing: Sequence[float] = SPACING,
                   scale_mm: float = TEXTURE_SCALE_MM) -> np.ndarray:
  """Float64 ``size``, mean 0 and std 1: random control points every ``scale_mm`` mm
  (one beyond each edge), blended by normalised Gaussian weights (smooth everywhere)."""
  weights = []
  for p in voxel_coordinates(size, spacing):
    count = int(np.ceil((p[-1] - p[0]) / scale_mm)) + 3
    points = (np.arange(count) - (count - 1) / 2) * scale_mm
    w = np.exp(-0.5 * ((p[:, None] - points[None]) / (0.6 * scale_mm)) ** 2)
    weights.append(w / w.sum(1, keepdims=True))
  grid = rng.standard_normal(tuple(w.shape[1] for w in weights))
  field = np.einsum("ai,bj,ck,ijk->abc", *weights, grid, optimize=True)
  return (field - field.mean()) / max(float(field.std()), 1e-12)


# --- one phantom -------------------------------------------------------------------------

def _draw_body(rng: np.random.Generator, size: Sequence[int]) -> dict[str, np.ndarray]:
  half = np.array([n * s / 2 for n, s in zip(size, SPACING)])
  semi_axes = np.array([rng.uniform(*r) for r in BODY_SEMI_AXES]) * half
  centre = rng.uniform(-1, 1, 3) * np.array([0.1, 0.05, 0.05]) * half
  angle = np.deg2rad(rng.uniform(-BODY_TILT_DEGREES, BODY_TILT_DEGREES))
  return {"centre": centre, "semi_axes": semi_axes, "rotation": rotation_about_depth(angle)}


def _draw_organ(rng: np.random.Generator, organ: OrganClass, body: dict, size: Sequence[int],
                scale: float) -> list[dict[str, np.ndarray]]:
  """The blobs of one organ: centres inside the shrunk body and the volume (in D)."""
  half_depth = size[0] * SPACING[0] / 2
  direction = rng.standard_normal(3)
  unit_ball = direction / np.linalg.norm(direction) * rng.random() ** (1 / 3)
  in_body = unit_ball * body["semi_axes"] * ORGAN_CENTRE_REACH
  blobs = []
  for k in range(organ.blobs):
    if k:  # the pair's second blob: mirrored across the body's mid-sagittal plane
      in_body = in_body * np.array([1, 1, -1]) + rng.uniform(-2, 2, 3) * scale
    centre = body["centre"] + body["rotation"] @ in_body
    centre[0] = np.clip(centre[0], -0.8 * half_depth, 0.8 * half_depth)
    semi_axes = np.array([rng.uniform(*r) for r in organ.semi_axes_mm]) * scale
    blobs.append({"centre": centre, "semi_axes": semi_axes, "rotation": random_rotation(rng)})
  return blobs


def _nominal_voxels(organ: OrganClass, scale: float) -> float:
  """The smallest volume (voxels) the organ's blobs can have, before clipping."""
  axes = np.array([r[0] for r in organ.semi_axes_mm]) * scale
  return organ.blobs * 4 / 3 * np.pi * float(np.prod(axes)) / float(np.prod(SPACING))


def make_phantom(rng: np.random.Generator, size: Sequence[int] = DEFAULT_SIZE
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """One phantom: ``(image float32 (D, H, W), label uint8 (D, H, W), params)``.

  ``params``: ``spacing``; ``body`` and each of ``organs`` (painting order, label
  ascending) a dict of ``centre`` (mm from the volume centre), ``semi_axes`` (mm) and
  ``rotation`` (columns: the axes); organs also carry ``label``. ``means`` the region means
  of this volume (noise sigmas, jittered: ``background``, ``tissue``, ``classes`` (4,)),
  ``gain``, ``offset``, and ``normalisation`` (mean, std) of the z-score, so that
  ``(image * std + mean - offset) / gain`` is the volume in noise sigmas.
  """
  size = check_size(size)
  scale = field_scale(size)
  body = _draw_body(rng, size)
  body_mask = ellipsoid_mask(size, **body)
  label = np.zeros(size, np.uint8)
  organs, placed = [], np.zeros(NUM_ORGANS, np.int64)   # voxels of each class when painted
  for organ in ORGANS:
    for _ in range(MAX_DRAWS):
      blobs = _draw_organ(rng, organ, body, size, scale)
      mask = body_mask & np.logical_or.reduce([ellipsoid_mask(size, **b) for b in blobs])
      if mask.sum() < MIN_KEPT * _nominal_voxels(organ, scale):
        continue
      painted = np.where(mask, np.uint8(organ.label), label)
      visible = np.bincount(painted.ravel(), minlength=NUM_ORGANS + 1)[1:organ.label]
      if np.all(visible >= MIN_VISIBLE * placed[:organ.label - 1]):
        label = painted
        placed[organ.label - 1] = mask.sum()
        organs.extend({"label": organ.label, **b} for b in blobs)
        break
    else:  # not reached at sizes check_size accepts
      raise RuntimeError(f"organ phantom: could not place the {organ.name} in {MAX_DRAWS} "
                         f"draws at size {size}")
  jitter = lambda: rng.uniform(-INTENSITY_JITTER, INTENSITY_JITTER)  # noqa: E731
  means = {"background": BACKGROUND_MEAN + jitter(), "tissue": TISSUE_MEAN + jitter(),
           "classes": np.array([m + jitter() for m in CLASS_MEANS])}
  region_means = np.concatenate([[means["tissue"]], means["classes"]])
  clean = np.where(body_mask, region_means[label], means["background"])
  clean += np.where(body_mask, TEXTURE_SIGMA * smooth_texture(rng, size), 0.0)
  noisy = clean + NOISE_SIGMA * rng.standard_normal(size)
  gain, offset = rng.uniform(*GAIN_RANGE), rng.uniform(*OFFSET_RANGE)
  raw = gain * noisy + offset
  mean, std = float(raw.mean()), max(float(raw.std()), 1e-8)
  image = ((raw - mean) / std).astype(np.float32)
  params = {"spacing": np.array(SPACING), "body": body, "organs": organs, "means": means,
            "gain": gain, "offset": offset, "normalisation": (mean, std)}
  return image, label, params


def phantom_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The random stream of volume ``index`` of ``split``: volumes are independent."""
  if split not in _SPLIT_CODES:
    raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
  return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def make_example(split: str, index: int, *, size: Sequence[int] = DEFAULT_SIZE,
                 seed: int = DEFAULT_SEED) -> dict[str, Any]:
  """Volume ``index`` of ``split`` with the TFDS features (module docstring)."""
  image, label, _ = make_phantom(phantom_rng(seed, split, index), size)
  return {"image": image[..., None], "label": label,
          "spacing": np.asarray(SPACING, np.float32), "case_id": f"{split}_{index:04d}"}


def generate_split(split: str, count: int, *, size: Sequence[int] = DEFAULT_SIZE,
                   seed: int = DEFAULT_SEED) -> Iterator[dict[str, Any]]:
  """``make_example`` for indices ``0..count-1`` of ``split``, lazily."""
  for index in range(count):
    yield make_example(split, index, size=size, seed=seed)


# --- the TFDS build ----------------------------------------------------------------------

def dataset_name(size: Sequence[int] = DEFAULT_SIZE, num_train: int = DEFAULT_NUM_TRAIN,
                 num_test: int = DEFAULT_NUM_TEST, seed: int = DEFAULT_SEED) -> str:
  """The TFDS name, e.g. ``'organ_phantoms/32x64x64'``; non-default counts or seed are in
  it too: ``'organ_phantoms/16x32x32_train4_test2_seed1'``."""
  size = check_size(size)
  for what, count in (("num_train", num_train), ("num_test", num_test)):
    if int(count) != count or count < 1:
      raise ValueError(f"organ phantoms: {what} must be a positive int, got {count!r}")
  if int(seed) != seed or seed < 0:
    raise ValueError(f"organ phantoms: seed must be an int >= 0, got {seed!r}")
  config = "x".join(str(d) for d in size)
  if (num_train, num_test, seed) != (DEFAULT_NUM_TRAIN, DEFAULT_NUM_TEST, DEFAULT_SEED):
    config += f"_train{int(num_train)}_test{int(num_test)}_seed{int(seed)}"
  return f"{DATASET}/{config}"


_NAME = re.compile(rf"{DATASET}/(\d+)x(\d+)x(\d+)(?:_train(\d+)_test(\d+)_seed(\d+))?"
                   r"(?::[\d.]+)?")


def parse_dataset_name(name: str) -> dict[str, Any]:
  """``dataset_name``'s inverse: ``{'size'}`` plus ``num_train``, ``num_test``, ``seed``
  when the name sets them (version ignored). ValueError for anything else."""
  match = _NAME.fullmatch(name)
  if not match:
    raise ValueError(f"not an organ phantoms name (e.g. {dataset_name()!r}, "
                     f"{dataset_name((16, 32, 32), 4, 2, 1)!r}): {name!r}")
  depth, height, width, num_train, num_test, seed = match.groups()
  options: dict[str, Any] = {"size": check_size((int(depth), int(height), int(width)))}
  if num_train is not None:
    options.update(num_train=int(num_train), num_test=int(num_test), seed=int(seed))
  dataset_name(**options)  # the same checks as building it
  return options


def is_organ_phantoms(name: str) -> bool:
  return name.split(":")[0].split("/")[0] == DATASET


def is_prepared(data_dir: str, name: str) -> bool:
  return staged_build.is_built(staged_build.version_dir(data_dir, name, VERSION))


@dataclasses.dataclass(eq=False, kw_only=True)
class OrganPhantomsConfig(tfds.core.BuilderConfig):
  """A layout: volume size (D, H, W), split sizes and seed; named as ``dataset_name``."""
  size: tuple[int, int, int] = DEFAULT_SIZE
  num_train: int = DEFAULT_NUM_TRAIN
  num_test: int = DEFAULT_NUM_TEST
  seed: int = DEFAULT_SEED


def builder_config(name: str) -> OrganPhantomsConfig:
  """The config of a name such as ``'organ_phantoms/32x64x64'`` (or just ``'32x64x64'``)."""
  if "/" not in name:
    name = f"{DATASET}/{name}"
  options = parse_dataset_name(name)
  return OrganPhantomsConfig(name=name.split(":")[0].split("/")[1], version=VERSION,
                             description=f"{options['size']} voxels of {SPACING} mm",
                             **options)


class OrganPhantoms(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The ``organ_phantoms`` builder; any config ``dataset_name`` makes (not registered:
  ``tfds.builder`` reads a build from its files)."""

  RELEASE_NOTES = {VERSION: "Ellipsoid organs (4 classes) in an ellipsoid body, MR-like."}
  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [builder_config(dataset_name())]

  def __init__(self, *, config: str | OrganPhantomsConfig | None = None, **kwargs):
    if isinstance(config, str):  # a predefined config itself, else a custom one
      config = self.builder_configs.get(config.split(":")[0]) or builder_config(config)
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    tensor, encoding = tfds.features.Tensor, tfds.features.Encoding
    # (None, ...) tensors need an encoding: raw bytes for the images (noise does not
    # compress), zlib for the mostly-background labels.
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tensor(shape=(None, None, None, 1), dtype=np.float32,
                            encoding=encoding.BYTES),
            "label": tensor(shape=(None, None, None), dtype=np.uint8, encoding=encoding.ZLIB),
            "spacing": tensor(shape=(3,), dtype=np.float32),
            "case_id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,   # example i is volume i (case_id order)
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    config = self.builder_config
    count = config.num_train if split == "train" else config.num_test
    for example in generate_split(split, count, size=config.size, seed=config.seed):
      yield example["case_id"], example


def ensure_organ_phantoms(data_dir: str, *, size: Sequence[int] = DEFAULT_SIZE,
                          num_train: int = DEFAULT_NUM_TRAIN,
                          num_test: int = DEFAULT_NUM_TEST,
                          seed: int = DEFAULT_SEED) -> str:
  """Builds the phantoms under ``data_dir`` unless there already; returns the TFDS name.

  ArrayRecord, examples in index order. Safe when processes race, like
  ``ensure_digit_scenes``: each builds in its own temporary folder inside ``data_dir`` and
  renames it into place.
  """
  name = dataset_name(size, num_train, num_test, seed)
  if is_prepared(data_dir, name):
    return name

  def build(staging: str) -> str:
    builder = OrganPhantoms(config=name.split("/")[1], data_dir=staging,
                            file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    return staged_build.version_dir(staging, name, VERSION)

  staged_build.build_and_rename(data_dir, DATASET,
                                staged_build.version_dir(data_dir, name, VERSION), build,
                                lambda: is_prepared(data_dir, name))
  return name


def ensure_for_name(name: str, data_dir: str) -> None:
  """``ensure_organ_phantoms`` for a TFDS name such as ``'organ_phantoms/32x64x64'``."""
  ensure_organ_phantoms(data_dir, **parse_dataset_name(name))
