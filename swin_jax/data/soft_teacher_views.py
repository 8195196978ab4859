"""Soft Teacher's training views (microsoft/SoftTeacher ``configs/soft_teacher/base.py``,
``ssod/datasets/pipelines/rand_aug.py``, ``geo_utils.py``) as host-side numpy, onto one
static canvas.

    sup = SupervisedView(canvas=(1344, 1344), reader=read, scale_range=SCALE_RANGE)
    sup(example, rng)
    # {'image': float32 (Hc, Wc, 3), 'image_hw': int32 (2,), 'gt_boxes': float32 (G, 4),
    #  'gt_labels': int32 (G,), 'gt_valid': bool (G,)}
    unsup = UnlabelledViews(canvas=(1344, 1344), reader=read, scale_range=SCALE_RANGE)
    unsup(example, rng)
    # {'teacher_image': float32 (Hc, Wc, 3), 'teacher_hw': int32 (2,),
    #  'teacher_matrix': float32 (3, 3), 'student_image', 'student_hw', 'student_matrix'}

``reader`` maps a dataset example to ``detection_transforms``' canonical example; every
random draw comes from the ``np.random.Generator`` passed in. Official, step by step:

* ``RandResize(img_scale=[(1333, 400), (1333, 1200)], multiscale_mode='range',
  keep_ratio=True)`` (``scale_range``): mmdet 2.x ``Resize.random_sample``, the long edge
  uniform over the integers between the pairs' long edges and the short edge between their
  short edges (both inclusive; 1333 and 400..1200), then the keep-ratio resize
  (``detection_transforms.keep_ratio_resize``: mmcv ``rescale_size``, OpenCV bilinear). Its
  matrix is ``diag(w_scale, h_scale, 1)`` with mmdet's float32 ``new / old`` factors.
* ``RandFlip(flip_ratio=0.5)``: horizontal, matrix ``[[-1, 0, w], [0, 1, 0], [0, 0, 1]]``
  (``x' = w - x``, ``detection_transforms.flip_boxes``).
* colour ``OneOf`` (uniform over ``COLOUR_OPS``; magnitude ``m`` uniform in 1..9, the
  official ``np.random.randint(1, 10)``): Identity; PIL AutoContrast and Equalize; Solarize
  at threshold ``int(256 m / 10)`` (``x >= t -> 255 - x``); Color, Contrast, Brightness and
  Sharpness by PIL's enhancers at factor ``1.8 m / 10 + 0.1``; Posterize keeping ``4 -
  int(4 m / 10)`` bits. These are ``randaugment``'s ops of the same semantics (checked equal
  to the official formulas, pixel for pixel, in the tests). Their matrix is the identity.
* the strong view's ``ShuffledSequential``: the colour ``OneOf`` and the geometric
  ``OneOf`` in a random order (each order with probability 1/2), the geometric one uniform
  over ``GEOMETRIC_BRANCHES``: translate x or y by ``U(-0.1, 0.1)`` of the width / height
  (matrix ``[[1, 0, dx], [0, 1, dy]]``); rotate by ``U(-30, 30)`` degrees (clockwise for a
  positive angle) about ``((w - 1) / 2, (h - 1) / 2)`` (matrix OpenCV's
  ``getRotationMatrix2D(centre, -angle, 1)``); shear x by ``U(-30, 30)`` degrees then shear y
  by another, the magnitudes ``tanh(-x pi / 180)`` and ``tanh(y pi / 180)`` (the official
  code's ``tanh``, not ``tan``) about the origin (matrices ``[[1, s, 0], [0, 1, 0]]`` and
  ``[[1, 0, 0], [s, 1, 0]]``). Bilinear warps to the same size, uncovered pixels filled with
  125 (``img_fill_val``).
* ``RandErase(n_iterations=(1, 5), size=[0, 0.2], squared=True)``: ``np.random.randint(1,
  5)``, so 1 to 4 patches (the official upper bound is exclusive); each a ratio ``r ~ U(0,
  0.2)`` for both sides (``squared``: the same ratio, not the same pixels), ``int(r h) x int(r
  w)``, its top-left ``x ~ randint(0, w - pw)``, ``y ~ randint(0, h - ph)``, filled with 125.
  Identity matrix.
* the matrices compose as the official ``record=True`` does (``M <- op @ M``, starting at the
  resize), so ``*_matrix`` maps source-image pixel coordinates to the view's; ``*_hw`` is the
  view's size (``img_shape``; the warps keep it). ``swin_jax.models.detection.box_transform``
  carries boxes between views with them. The views use the matrices' official convention for
  boxes (corners through ``M``), while the image warps use OpenCV's (pixel centres at integer
  coordinates), as the official code does: the two differ by under half a pixel.
* the supervised view is resize, flip, colour (crowd boxes dropped as
  ``detection_transforms`` does: the official keeps them as ``gt_bboxes_ignore``, which its
  Collect drops); the unlabelled example gives a strong (student) and a weak (teacher:
  resize, flip) view of the same image, each with its own draws; its ground truth is never
  read (the official ``PseudoSamples``).

Deliberate deviations:

* the warps are PIL's bilinear ``Image.transform`` (the project has no OpenCV; ``randaugment``
  uses PIL too), conjugated by the half-pixel shift so that they sample where
  ``cv2.warpAffine`` samples: the same geometry, but float instead of OpenCV's 1/32-pixel
  fixed point (a pixel may differ by a level or so), and at the image border PIL clamps to
  the edge pixel up to half a pixel out and fills beyond, where OpenCV blends the fill value
  in over that half pixel.
* normalisation is the Swin detectors' (ImageNet mean / std, RGB, then zero padding to the
  static canvas, ``detection_transforms.to_canvas``), not the official caffe-ResNet one; the
  official pipelines also pad before they normalise, so their padding is ``-mean``, here 0.
* the static canvas stands in for ``Pad(size_divisor=32)``; it must hold the longest edge of
  ``scale_range`` (checked), so no image is ever shrunk to fit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from swin_jax.data import detection_transforms as dt
from swin_jax.data import randaugment

# The official RandResize target for every branch (sup, weak, strong): (long, short) pairs.
SCALE_RANGE = ((1333, 400), (1333, 1200))

COLOUR_OPS = ("Identity", "AutoContrast", "RandEqualize", "RandSolarize", "RandColor",
              "RandContrast", "RandBrightness", "RandSharpness", "RandPosterize")
# The randaugment op with the same semantics at magnitude m on the 0..10 scale.
_RANDAUGMENT_OP = {"AutoContrast": "AutoContrast", "RandEqualize": "Equalize",
                   "RandSolarize": "Solarize", "RandColor": "Color",
                   "RandContrast": "Contrast", "RandBrightness": "Brightness",
                   "RandSharpness": "Sharpness", "RandPosterize": "PosterizeIncreasing"}
MAGNITUDE_RANGE = (1, 10)          # np.random.randint(1, magnitude=10): 1..9

GEOMETRIC_BRANCHES = ("translate_x", "translate_y", "rotate", "shear")
TRANSLATE_RANGE = (-0.1, 0.1)      # a fraction of the width / height
ROTATE_RANGE = (-30.0, 30.0)       # degrees
SHEAR_RANGE = (-30.0, 30.0)        # degrees (through tanh)
ERASE_ITERATIONS = (1, 5)          # np.random.randint(1, 5): 1..4 patches
ERASE_SIZE = (0.0, 0.2)
FILL = 125                         # img_fill_val of the geometric ops and RandErase

# ------------------------------------------------------------------------------ matrices


def scale_matrix(w_scale: float, h_scale: float) -> np.ndarray:
  """``geo_utils._get_scale_matrix``: ``diag(sx, sy, 1)``."""
  return np.array([[w_scale, 0, 0], [0, h_scale, 0], [0, 0, 1]], np.float64)


def flip_matrix(width: int) -> np.ndarray:
  """Horizontal flip of an image ``width`` wide: ``x' = width - x``."""
  return np.array([[-1, 0, width], [0, 1, 0], [0, 0, 1]], np.float64)


def translate_matrix(dx: float, dy: float) -> np.ndarray:
  return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)


def rotate_matrix(angle: float, hw: tuple[int, int]) -> np.ndarray:
  """``RandRotate``'s matrix: OpenCV ``getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2),
  -angle, 1)`` (a positive ``angle`` turns the image clockwise on screen)."""
  h, w = hw
  cx, cy = (w - 1) * 0.5, (h - 1) * 0.5
  rad = np.deg2rad(-angle)
  a, b = np.cos(rad), np.sin(rad)
  return np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy], [0, 0, 1]],
                  np.float64)


def shear_matrix(magnitude: float, direction: str) -> np.ndarray:
  """``geo_utils._get_shear_matrix`` (float32, as official): ``x' = x + s y`` (horizontal)
  or ``y' = y + s x`` (vertical)."""
  if direction == "horizontal":
    m = [[1, magnitude, 0], [0, 1, 0], [0, 0, 1]]
  elif direction == "vertical":
    m = [[1, 0, 0], [magnitude, 1, 0], [0, 0, 1]]
  else:
    raise ValueError(f"shear direction must be 'horizontal' or 'vertical', got {direction!r}")
  return np.array(m, np.float32).astype(np.float64)


def geometric_matrix(op: str, value: float, hw: tuple[int, int]) -> np.ndarray:
  """The matrix one geometric op records on an image of size ``hw``: ``op`` one of
  ``translate_x``, ``translate_y`` (``value`` a fraction of the width / height),
  ``rotate``, ``shear_x``, ``shear_y`` (degrees)."""
  h, w = hw
  if op == "translate_x":
    return translate_matrix(w * value, 0.0)
  if op == "translate_y":
    return translate_matrix(0.0, h * value)
  if op == "rotate":
    return rotate_matrix(value, hw)
  if op == "shear_x":
    return shear_matrix(np.tanh(-value * np.pi / 180), "horizontal")
  if op == "shear_y":
    return shear_matrix(np.tanh(value * np.pi / 180), "vertical")
  raise ValueError(f"unknown geometric op {op!r}")


# -------------------------------------------------------------------------------- draws


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
  """The official ``np.random.random() * (hi - lo) + lo``."""
  lo, hi = bounds
  return float(rng.random() * (hi - lo) + lo)


def sample_range_scale(rng: np.random.Generator,
                       scale_range: Sequence[Sequence[int]] = SCALE_RANGE) -> tuple[int, int]:
  """mmdet 2.x ``Resize.random_sample``: ``(long, short)``, each an integer uniform between
  the pairs' long (short) edges, both ends included."""
  longs = [max(s) for s in scale_range]
  shorts = [min(s) for s in scale_range]
  long_edge = int(rng.integers(min(longs), max(longs) + 1))
  short_edge = int(rng.integers(min(shorts), max(shorts) + 1))
  return long_edge, short_edge


def sample_colour(rng: np.random.Generator) -> tuple[str, int]:
  """The colour ``OneOf``: ``(op name, magnitude 1..9)``."""
  name = COLOUR_OPS[int(rng.integers(len(COLOUR_OPS)))]
  return name, int(rng.integers(*MAGNITUDE_RANGE))


def sample_geometric(rng: np.random.Generator) -> tuple[tuple[str, float], ...]:
  """The geometric ``OneOf``: the ops of one branch with their magnitudes, in order."""
  branch = GEOMETRIC_BRANCHES[int(rng.integers(len(GEOMETRIC_BRANCHES)))]
  if branch == "rotate":
    return (("rotate", _uniform(rng, ROTATE_RANGE)),)
  if branch == "shear":
    shear_x = _uniform(rng, SHEAR_RANGE)
    return (("shear_x", shear_x), ("shear_y", _uniform(rng, SHEAR_RANGE)))
  return ((branch, _uniform(rng, TRANSLATE_RANGE)),)


def sample_erase(rng: np.random.Generator, hw: tuple[int, int]
                 ) -> tuple[tuple[int, int, int, int], ...]:
  """``RandErase``'s patches ``(x1, y1, x2, y2)`` on an image of size ``hw``."""
  h, w = hw
  patches = []
  for _ in range(int(rng.integers(*ERASE_ITERATIONS))):
    ratio = _uniform(rng, ERASE_SIZE)            # squared: one ratio for both sides
    ph, pw = int(ratio * h), int(ratio * w)
    px = int(rng.integers(0, w - pw))
    py = int(rng.integers(0, h - ph))
    patches.append((px, py, px + pw, py + ph))
  return tuple(patches)


def sample_strong_ops(rng: np.random.Generator, hw: tuple[int, int]) -> dict[str, Any]:
  """Everything the strong view draws after its resize and flip, as a plan for
  ``apply_strong_ops``: ``order`` (``('colour', 'geometric')`` or reversed), ``colour``
  ``(name, magnitude)``, ``geometric`` ``((op, value), ...)``, ``erase`` patches."""
  order = ("colour", "geometric")
  order = tuple(order[i] for i in rng.permutation(2))
  plan: dict[str, Any] = {"order": order}
  for stage in order:
    plan[stage] = sample_colour(rng) if stage == "colour" else sample_geometric(rng)
  plan["erase"] = sample_erase(rng, hw)          # the warps keep the size
  return plan


# ---------------------------------------------------------------------------- the images


def apply_colour(image: np.ndarray, name: str, magnitude: int) -> np.ndarray:
  """One colour op on a uint8 RGB image."""
  if name == "Identity":
    return image
  if name not in _RANDAUGMENT_OP:
    raise ValueError(f"unknown colour op {name!r} (known: {', '.join(COLOUR_OPS)})")
  # randaugment's ops take the level on its 0..10 scale, the official magnitude's scale too;
  # these draw nothing (rng None).
  out = randaugment.apply_op(_RANDAUGMENT_OP[name], Image.fromarray(image), magnitude, None,
                             fill=(FILL,) * 3)
  return np.asarray(out, np.uint8)


def warp(image: np.ndarray, matrix: np.ndarray, fill: int = FILL) -> np.ndarray:
  """``cv2.warpAffine(image, matrix[:2], (w, h), INTER_LINEAR, borderValue=fill)`` by PIL:
  OpenCV maps pixel centres at integer coordinates, PIL's inverse map works on pixel
  corners, so PIL gets ``T(1/2) M^-1 T(-1/2)``."""
  h, w = image.shape[:2]
  half, back = translate_matrix(0.5, 0.5), translate_matrix(-0.5, -0.5)
  inverse = half @ np.linalg.inv(np.asarray(matrix, np.float64)) @ back
  out = Image.fromarray(image).transform((w, h), Image.AFFINE, tuple(inverse[:2].ravel()),
                                         resample=Image.BILINEAR, fillcolor=(fill,) * 3)
  return np.asarray(out, np.uint8)


def erase(image: np.ndarray, patches, fill: int = FILL) -> np.ndarray:
  out = image.copy()
  for x1, y1, x2, y2 in patches:
    out[y1:y2, x1:x2] = fill
  return out


def apply_strong_ops(image: np.ndarray, plan: dict[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray]:
  """A plan of ``sample_strong_ops`` on a uint8 RGB image: ``(image, matrix)``, the matrix
  the geometric ops record (float64 ``(3, 3)``, to multiply onto the resize and flip's)."""
  matrix = np.eye(3)
  hw = image.shape[:2]
  for stage in plan["order"]:
    if stage == "colour":
      image = apply_colour(image, *plan["colour"])
    else:
      for op, value in plan["geometric"]:
        step = geometric_matrix(op, value, hw)
        image = warp(image, step)
        matrix = step @ matrix
  return erase(image, plan["erase"]), matrix


def resize_flip(example: dict[str, Any], rng: np.random.Generator,
                scale_range: Sequence[Sequence[int]], flip_prob: float,
                canvas: Optional[tuple[int, int]] = None
                ) -> tuple[dict[str, Any], np.ndarray]:
  """``RandResize`` (range mode, keep ratio) then ``RandFlip``, on a canonical example (its
  boxes follow): ``(example, matrix)``, the matrix float64 ``flip @ scale``."""
  scale = sample_range_scale(rng, scale_range)
  example = dt.keep_ratio_resize(example, scale, canvas)
  h_scale, w_scale = example["scale_factor"]      # float32, (h, w) order
  matrix = scale_matrix(float(w_scale), float(h_scale))
  if rng.random() < flip_prob:
    matrix = flip_matrix(example["image"].shape[1]) @ matrix
    example = dt.hflip(example)
  return example, matrix


def _image_only(image: np.ndarray) -> dict[str, Any]:
  return {"image": image, "boxes": np.zeros((0, 4), np.float32),
          "labels": np.zeros((0,), np.int32)}


def weak_view(image: np.ndarray, rng: np.random.Generator,
              scale_range: Sequence[Sequence[int]] = SCALE_RANGE, flip_prob: float = 0.5,
              canvas: Optional[tuple[int, int]] = None) -> tuple[np.ndarray, np.ndarray]:
  """The official ``weak_pipeline`` on a uint8 RGB image: ``(image, matrix)``."""
  example, matrix = resize_flip(_image_only(image), rng, scale_range, flip_prob, canvas)
  return example["image"], matrix


def strong_view(image: np.ndarray, rng: np.random.Generator,
                scale_range: Sequence[Sequence[int]] = SCALE_RANGE, flip_prob: float = 0.5,
                canvas: Optional[tuple[int, int]] = None
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """The official ``strong_pipeline`` on a uint8 RGB image: ``(image, matrix, plan)``
  (``plan`` from ``sample_strong_ops``, for inspection)."""
  example, matrix = resize_flip(_image_only(image), rng, scale_range, flip_prob, canvas)
  plan = sample_strong_ops(rng, example["image"].shape[:2])
  out, geometric = apply_strong_ops(example["image"], plan)
  return out, geometric @ matrix, plan


# --------------------------------------------------------------------------- transforms


def _check(canvas: tuple[int, int], scale_range) -> None:
  if len(scale_range) != 2 or any(len(s) != 2 or min(s) <= 0 for s in scale_range):
    raise ValueError(f"scale_range {scale_range!r} must be two (long, short) pairs of "
                     f"positive ints, e.g. {SCALE_RANGE}")
  if any(s % dt.SIZE_DIVISOR for s in canvas):
    raise ValueError(f"canvas {canvas} must be multiples of {dt.SIZE_DIVISOR}")
  need = dt.canvas_for_scales(scale_range)
  if canvas[0] < need[0] or canvas[1] < need[1]:
    raise ValueError(f"canvas {canvas} does not hold every resize to {scale_range} in "
                     f"either orientation: it needs at least {need}")


@dataclasses.dataclass(frozen=True)
class SupervisedView:
  """``(example, rng) -> detection train example`` (the official sup ``train_pipeline``:
  ``RandResize`` range, ``RandFlip``, colour ``OneOf``); the keys of
  ``detection_transforms.DetectionTrainTransform`` without masks."""
  canvas: tuple[int, int]
  reader: dt.Reader
  scale_range: tuple[tuple[int, int], tuple[int, int]] = SCALE_RANGE
  flip_prob: float = 0.5
  max_instances: int = 100

  def __post_init__(self):
    _check(self.canvas, self.scale_range)

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    example = dt.drop_crowd(self.reader(example))
    example = {k: v for k, v in example.items() if k != "masks"}
    example, _ = resize_flip(example, rng, self.scale_range, self.flip_prob, self.canvas)
    example["image"] = apply_colour(example["image"], *sample_colour(rng))
    return dt.to_canvas(example, self.canvas, self.max_instances, with_masks=False)


@dataclasses.dataclass(frozen=True)
class UnlabelledViews:
  """``(example, rng) -> teacher (weak) and student (strong) views`` of one unlabelled
  image (the official ``unsup_pipeline``; the strong branch draws first, as the official
  ``MultiBranch`` runs it)."""
  canvas: tuple[int, int]
  reader: dt.Reader
  scale_range: tuple[tuple[int, int], tuple[int, int]] = SCALE_RANGE
  flip_prob: float = 0.5

  def __post_init__(self):
    _check(self.canvas, self.scale_range)

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = np.asarray(self.reader(example)["image"], np.uint8)
    student, student_matrix, _ = strong_view(image, rng, self.scale_range, self.flip_prob,
                                             self.canvas)
    teacher, teacher_matrix = weak_view(image, rng, self.scale_range, self.flip_prob,
                                        self.canvas)
    out = {}
    for name, view, matrix in (("teacher", teacher, teacher_matrix),
                               ("student", student, student_matrix)):
      placed = dt.to_canvas(_image_only(view), self.canvas, 0, with_masks=False)
      out[f"{name}_image"] = placed["image"]
      out[f"{name}_hw"] = placed["image_hw"]
      out[f"{name}_matrix"] = matrix.astype(np.float32)
    return out
