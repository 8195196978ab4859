"""mmseg's ADE20K training pipeline (the UperNet-Swin recipe) as host-side numpy transforms.

    train = MMSegTrainTransform(crop_size=512, label_key="annotation", reduce_zero_label=True)
    example = train({'image': uint8 (H, W, 3) RGB, 'annotation': (H, W[, C])}, np.random.Generator)
        -> {'image': float32 (512, 512, 3), 'label': int32 (512, 512)}

The steps of mmseg 0.11's ``configs/_base_/datasets/ade20k.py`` (mmseg 1.2.2 / mmcv 2.1 keep
the same semantics), every random draw from the generator passed in, in mmseg's order:

1. ``LoadAnnotations(reduce_zero_label=True)``: label 0 -> 255, ``k -> k - 1``.
2. ``Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))``: ``r ~ U[0.5, 2)`` scales the
   target to ``(int(2048 r), int(512 r))``; the image is then rescaled keeping its ratio by
   ``min(long target / long edge, short target / short edge)`` (mmcv ``rescale_size``);
   image bilinear, label nearest.
3. ``RandomCrop((512, 512), cat_max_ratio=0.75)``: uniform offsets; while a crop's label
   (255 left out) holds fewer than two classes or one class covers >= 75 % of it, draw
   again, at most 10 times (the 11th crop is kept unchecked, as mmseg does).
4. ``RandomFlip(prob=0.5)``: horizontal, image and label.
5. ``PhotoMetricDistortion``: brightness, contrast (first or last), saturation, hue, each with
   p 0.5, on uint8 values (``convert`` truncates to uint8 after each step).
6. ``Normalize`` (ImageNet mean/std on 0..255, RGB) then ``Pad`` to the crop size at the
   bottom/right: image 0, label 255.

The OpenCV numerics mmseg runs on are reproduced in numpy (OpenCV is not a dependency of
this package): ``cv2.resize`` ``INTER_LINEAR`` on uint8 (11-bit fixed-point weights and the
vector rounding of the vertical pass; bit-exact to OpenCV 5.0 on x86), ``INTER_NEAREST``, and
``cv2.cvtColor`` RGB<->HSV on uint8 (H in 0..179). OpenCV's own HSV -> RGB differs between its
builds: the vector body truncates to uint8 (with fused multiply-adds on AVX2), the scalar
tail of each row (``width mod 32`` pixels on AVX2) rounds. We follow the AVX2 vector body
everywhere, so an OpenCV run can differ from ours by one grey level in those tail pixels.
Our images are RGB where mmseg's are BGR; every step is written for RGB so that the result
is mmseg's with the channels in RGB order.

The eval side (``MMSegEvalTransform``): mmseg's test pipeline, a keep-ratio resize to (2048,
512) (and, for the multi-scale test, to that scale times each ratio, as mmcv's
``MultiScaleFlipAug`` does) and normalisation, with the label left at its source size (the
logits are resized back to it: ``swin_jax.tasks.seg_inference``). So that images of any size
share a few compiled programs, ``to_canvas`` pads each onto its bucket's static canvases
(``eval_bucket``): image 0 at the bottom/right, label ``ignore_index``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

IGNORE_INDEX = 255          # mmseg's ignore_index and seg_pad_val
# mmseg img_norm_cfg (to_rgb=True): the ImageNet statistics on the 0..255 scale, RGB.
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)

_COEF_BITS = 11             # OpenCV INTER_RESIZE_COEF_BITS: weights are multiples of 1/2048
_HSV_SHIFT = 12             # OpenCV RGB2HSV_b's fixed-point shift


def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
  """mmseg ``LoadAnnotations(reduce_zero_label=True)``: 0 -> ``ignore_index``, the ignore
  index stays, every other ``k -> k - 1`` (ADE20K's 'other' class 0 is not scored)."""
  label = np.asarray(label).astype(np.int32)
  return np.where((label == 0) | (label == ignore_index), ignore_index, label - 1)


def size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
  """``size`` (an int or an ``(h, w)`` pair) as ``(h, w)``; a ValueError naming ``name``."""
  pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  if len(pair) != 2 or any(int(s) != s or s <= 0 for s in pair):
    raise ValueError(f"{name} {size!r} must be a positive int or a pair of them")
  return int(pair[0]), int(pair[1])


# ------------------------------------------------------------------------------- geometry


def keep_ratio_rescale_size(size: tuple[int, int], scale: Sequence[float]) -> tuple[int, int]:
  """mmcv ``rescale_size`` with a tuple scale, in ``(h, w)`` order: the largest size within
  ``scale`` (its long and short side, in either order) keeping the aspect ratio,
  ``int(x * factor + 0.5)`` per side."""
  h, w = size
  factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def sample_scale(rng: np.random.Generator, scale: Sequence[int] = (2048, 512),
                 ratio_range: Sequence[float] = (0.5, 2.0)) -> tuple[int, int]:
  """mmcv ``RandomResize._random_sample_ratio``: ``r ~ U[low, high)`` times ``scale``."""
  low, high = ratio_range
  ratio = rng.random() * (high - low) + low
  return int(scale[0] * ratio), int(scale[1] * ratio)


def _linear_taps(dst: int, src: int, clamp: bool):
  """OpenCV's INTER_LINEAR source indices and 11-bit weights along one axis.

  Columns (``clamp``) pin a coordinate outside ``[0, src - 1]`` to the edge with weight 0;
  rows keep the fraction and read the clipped row twice (OpenCV's border handling), so an
  edge row's weights can sum to 2047 or 2049.
  """
  scale = 1.0 / (dst / src)                     # cv2: 1. / inv_scale, both doubles
  pos = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
  index = np.floor(pos).astype(np.int64)
  frac = pos - index.astype(np.float32)
  if clamp:
    low, high = index < 0, index >= src - 1
    frac[low | high] = 0.0
    index[low], index[high] = 0, src - 1
  one = np.float32(1.0 * (1 << _COEF_BITS))
  # saturate_cast<short>(w * 2048): round half to even, each weight separately.
  w0 = np.rint((np.float32(1.0) - frac) * one).astype(np.int32)
  w1 = np.rint(frac * one).astype(np.int32)
  return np.clip(index, 0, src - 1), np.clip(index + 1, 0, src - 1), w0, w1


def resize_bilinear(image: np.ndarray, size: tuple[int, int],
                    window: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """``cv2.resize(image, (w, h), interpolation=INTER_LINEAR)`` of a uint8 ``(H, W[, C])``
  image to ``size = (h, w)``, bit for bit: integer horizontal pass, then the vertical pass
  as OpenCV's vector code computes it, ``((b0 (S0 >> 4)) >> 16 + (b1 (S1 >> 4)) >> 16 + 2)
  >> 2``. ``window = (y0, y1, x0, x1)`` computes only that part of the output (each output
  pixel depends on its own position only, so it equals the same crop of the full resize)."""
  if image.dtype != np.uint8:
    raise ValueError(f"resize_bilinear takes uint8 images, got {image.dtype}")
  grey = image.ndim == 2
  src = image[..., None] if grey else image
  h, w = size
  y0, y1, x0, x1 = window if window is not None else (0, h, 0, w)
  y1, x1 = min(y1, h), min(x1, w)
  rows0, rows1, b0, b1 = (t[y0:y1] for t in _linear_taps(h, src.shape[0], clamp=False))
  cols0, cols1, a0, a1 = (t[x0:x1] for t in _linear_taps(w, src.shape[1], clamp=True))
  # The horizontal pass once per source row used (an upscale reads each about twice).
  used = np.union1d(rows0, rows1)
  picked = src[used].astype(np.int32)
  rows = (picked[:, cols0] * a0[:, None] + picked[:, cols1] * a1[:, None]) >> 4
  s0, s1 = rows[np.searchsorted(used, rows0)], rows[np.searchsorted(used, rows1)]
  out = (((b0[:, None, None] * s0) >> 16) + ((b1[:, None, None] * s1) >> 16) + 2) >> 2
  out = np.clip(out, 0, 255).astype(np.uint8)
  return out[..., 0] if grey else out


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``cv2.resize(label, (w, h), interpolation=INTER_NEAREST)``: source index
  ``min(floor(i * src / dst), src - 1)`` per axis, any dtype."""

  def index(dst, src):
    step = 1.0 / (dst / src)                    # cv2: ifx = 1. / fx, fx = dst / src
    return np.minimum(np.floor(np.arange(dst) * step).astype(np.int64), src - 1)

  h, w = size
  return label[index(h, label.shape[0])[:, None], index(w, label.shape[1])[None, :]]


def random_resize(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  scale: Sequence[int] = (2048, 512),
                  ratio_range: Sequence[float] = (0.5, 2.0)) -> tuple[np.ndarray, np.ndarray]:
  """mmseg ``Resize(img_scale=scale, ratio_range=...)`` (mmcv ``RandomResize`` + keep-ratio
  ``Resize``): uint8 ``(H, W, 3)`` and ``(H, W)`` -> ``(h, w, 3)`` bilinear, ``(h, w)``
  nearest, one draw (the ratio)."""
  size = keep_ratio_rescale_size(label.shape[:2], sample_scale(rng, scale, ratio_range))
  return resize_bilinear(image, size), resize_nearest(label, size)


def crop_acceptable(label: np.ndarray, cat_max_ratio: float,
                    ignore_index: int = IGNORE_INDEX) -> bool:
  """mmseg ``RandomCrop``'s test of a label crop: more than one class (``ignore_index`` left
  out) and the largest class below ``cat_max_ratio`` of the counted pixels."""
  flat = np.ravel(label)
  if flat.size and np.issubdtype(flat.dtype, np.integer) and flat.min() >= 0 \
      and flat.max() < 4096:
    counts = np.bincount(flat)                  # np.unique's counts without its sort
    if 0 <= ignore_index < len(counts):
      counts[ignore_index] = 0
    counts = counts[counts > 0]
  else:
    classes, counts = np.unique(flat, return_counts=True)
    counts = counts[classes != ignore_index]
  return len(counts) > 1 and np.max(counts) / np.sum(counts) < cat_max_ratio


def crop_bbox(label: np.ndarray, rng: np.random.Generator, crop_size: int | Sequence[int],
              cat_max_ratio: float = 1.0,
              ignore_index: int = IGNORE_INDEX) -> tuple[int, int, int, int]:
  """mmseg ``RandomCrop.crop_bbox``: ``(y0, y1, x0, x1)`` with ``y0 ~ U{0..max(H - ch, 0)}``
  then ``x0`` likewise (``y1 = y0 + ch`` may pass a smaller image's edge). With
  ``cat_max_ratio < 1`` a crop failing ``crop_acceptable`` is redrawn, 10 times at most; the
  last draw is kept unchecked."""
  ch, cw = size_pair(crop_size, "crop_size")

  def draw():
    y0 = int(rng.integers(0, max(label.shape[0] - ch, 0) + 1))
    x0 = int(rng.integers(0, max(label.shape[1] - cw, 0) + 1))
    return y0, y0 + ch, x0, x0 + cw

  box = draw()
  if cat_max_ratio < 1.0:
    for _ in range(10):
      y0, y1, x0, x1 = box
      if crop_acceptable(label[y0:y1, x0:x1], cat_max_ratio, ignore_index):
        break
      box = draw()
  return box


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                crop_size: int | Sequence[int], cat_max_ratio: float = 1.0,
                ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
  """mmseg ``RandomCrop``: ``(H, W, 3)``, ``(H, W)`` -> at most ``crop_size`` (a smaller
  image is kept whole; ``pad_to`` fills it)."""
  y0, y1, x0, x1 = crop_bbox(label, rng, crop_size, cat_max_ratio, ignore_index)
  return image[y0:y1, x0:x1], label[y0:y1, x0:x1]


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                prob: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """mmseg ``RandomFlip(prob)``: left-right flip of both with probability ``prob``."""
  if rng.random() < prob:
    return image[:, ::-1], label[:, ::-1]
  return image, label


def pad_to(image: np.ndarray, label: np.ndarray, size: int | Sequence[int],
           seg_pad_val: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
  """mmseg ``Pad(size, pad_val=0, seg_pad_val)``: ``(h, w, C)``, ``(h, w)`` -> ``size``,
  filled at the bottom and right with 0 (image) and ``seg_pad_val`` (label)."""
  ph, pw = size_pair(size, "size")
  h, w = label.shape
  if h > ph or w > pw:
    raise ValueError(f"pad_to: {(h, w)} is larger than {(ph, pw)}")
  out_image = np.zeros((ph, pw) + image.shape[2:], image.dtype)
  out_image[:h, :w] = image
  out_label = np.full((ph, pw), seg_pad_val, label.dtype)
  out_label[:h, :w] = label
  return out_image, out_label


# ---------------------------------------------------------------------------------- colour


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
  """``cv2.cvtColor(image, COLOR_RGB2HSV)`` on uint8 ``(..., 3)``, bit for bit: OpenCV's
  integer algorithm (12-bit division tables), H in 0..179 (degrees / 2), S and V in 0..255.
  (mmseg applies ``bgr2hsv`` to BGR images: the same numbers.)"""
  x = image.astype(np.int32)
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = np.maximum(np.maximum(b, g), r)
  diff = v - np.minimum(np.minimum(b, g), r)
  half = 1 << (_HSV_SHIFT - 1)
  s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
  # OpenCV tests v == r before v == g.
  h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
  h = (h * _HDIV[diff] + half) >> _HSV_SHIFT
  h = np.where(h < 0, h + 180, h)
  return np.stack([h, s, v], axis=-1).astype(np.uint8)


def _division_tables():
  i = np.arange(256, dtype=np.float64)
  safe = np.maximum(i, 1)
  sdiv = np.where(i > 0, np.rint((255 << _HSV_SHIFT) / safe), 0).astype(np.int32)
  hdiv = np.where(i > 0, np.rint((180 << _HSV_SHIFT) / (6.0 * safe)), 0).astype(np.int32)
  return sdiv, hdiv


_SDIV, _HDIV = _division_tables()


def _one_minus_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``1 - a b`` rounded once to float32, as the fused multiply-add OpenCV's AVX2 build
  compiles it to (the float32 product is exact in float64)."""
  return (1.0 - a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)


def hsv_to_rgb(image: np.ndarray) -> np.ndarray:
  """``cv2.cvtColor(image, COLOR_HSV2RGB)`` on uint8 ``(..., 3)`` (H in 0..179) as
  OpenCV's vector body computes it: float32 sector arithmetic, fused ``1 - s h`` terms, and
  truncation to uint8 (see the module docstring for OpenCV's rounding tail)."""
  f32 = np.float32
  one = f32(1.0)
  h = image[..., 0].astype(f32) * f32(6.0 / 180.0)
  s = image[..., 1].astype(f32) * f32(1.0 / 255.0)
  v = image[..., 2].astype(f32) * f32(1.0 / 255.0)
  pre = np.trunc(h)
  h = h - pre
  tab0, tab1 = v, v * (one - s)
  tab2 = v * _one_minus_product(s, h)
  tab3 = v * _one_minus_product(s, one - h)
  sector = pre - np.trunc(pre * f32(1.0 / 6.0)) * f32(6.0)
  r = np.select([sector < 1, sector == 1, sector == 2, sector == 3, sector == 4],
                [tab0, tab2, tab1, tab1, tab3], tab0)
  g = np.select([sector < 1, sector == 1, sector == 2, sector == 3], [tab3, tab0, tab0, tab2],
                tab1)
  b = np.select([sector < 2, sector == 2, sector == 3, sector == 4], [tab1, tab3, tab0, tab0],
                tab2)
  rgb = np.stack([r, g, b], axis=-1) * f32(255.0)
  return np.clip(np.trunc(rgb), 0, 255).astype(np.uint8)


def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
  """PhotoMetricDistortion.convert: ``float32(x) * alpha + beta``, clipped to [0, 255] and
  truncated to uint8 (``astype``), so every step sees whole grey levels."""
  return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
  return _convert(image, beta=delta)


def adjust_contrast(image: np.ndarray, alpha: float) -> np.ndarray:
  return _convert(image, alpha=alpha)


def adjust_saturation(image: np.ndarray, alpha: float) -> np.ndarray:
  """S of the uint8 HSV image times ``alpha`` (``convert``), back to RGB."""
  hsv = rgb_to_hsv(image)
  hsv[..., 1] = _convert(hsv[..., 1], alpha=alpha)
  return hsv_to_rgb(hsv)


def adjust_hue(image: np.ndarray, delta: int) -> np.ndarray:
  """H of the uint8 HSV image plus ``delta``, modulo 180, back to RGB."""
  hsv = rgb_to_hsv(image)
  hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
  return hsv_to_rgb(hsv)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator,
                           brightness_delta: int = 32,
                           contrast_range: Sequence[float] = (0.5, 1.5),
                           saturation_range: Sequence[float] = (0.5, 1.5),
                           hue_delta: int = 18) -> np.ndarray:
  """mmseg ``PhotoMetricDistortion`` on a uint8 RGB ``(h, w, 3)`` image, its draws in its
  order: brightness (``randint(2)``, then a delta ``U[-32, 32)``), the contrast mode
  (contrast first if 1, last if 0), contrast (``U[0.5, 1.5)``), saturation (``U[0.5,
  1.5)``), hue (an integer delta in ``[-18, 18)``, numpy's ``randint`` high end exclusive),
  each applied when its ``randint(2)`` is 1."""

  def coin():
    return bool(rng.integers(2))

  def contrast(img):
    return adjust_contrast(img, rng.uniform(*contrast_range)) if coin() else img

  if coin():
    image = adjust_brightness(image, rng.uniform(-brightness_delta, brightness_delta))
  contrast_first = rng.integers(2) == 1
  if contrast_first:
    image = contrast(image)
  if coin():
    image = adjust_saturation(image, rng.uniform(*saturation_range))
  if coin():
    image = adjust_hue(image, int(rng.integers(-hue_delta, hue_delta)))
  if not contrast_first:
    image = contrast(image)
  return image


def normalize(image: np.ndarray) -> np.ndarray:
  """mmseg ``Normalize`` (mmcv ``imnormalize``): ``(x - mean) * (1 / std)`` in float32 with
  the ImageNet statistics on 0..255, RGB order."""
  return (image.astype(np.float32) - MEAN) * (np.float32(1.0) / STD)


# ------------------------------------------------------------------------------ transforms


def _read(example: dict[str, Any], image_key: str, label_key: str, ignore_index: int,
          zero_label: bool) -> tuple[np.ndarray, np.ndarray]:
  """``example`` -> uint8 RGB ``(H, W, 3)`` and int32 ``(H, W)``. A 3-D label keeps its first
  channel (TFDS ``scene_parse150`` stores 3); a grey image is repeated to 3 channels."""
  image = np.asarray(example[image_key])
  label = np.asarray(example[label_key])
  if label.ndim == 3:
    label = label[..., 0]
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.dtype != np.uint8:
    raise ValueError(f"the mmseg pipeline takes uint8 images (PhotoMetricDistortion works on "
                     f"grey levels); {image_key!r} is {image.dtype}")
  if image.shape[:2] != label.shape:
    raise ValueError(f"image {image.shape} and label {label.shape} differ in size")
  label = label.astype(np.int32)
  if zero_label:
    label = reduce_zero_label(label, ignore_index)
  return image, label


@dataclasses.dataclass(frozen=True)
class MMSegTrainTransform:
  """``(example, rng) -> {'image': float32 (ch, cw, 3), 'label': int32 (ch, cw)}``: mmseg's
  ADE20K training pipeline (module docstring); ``SegTransform``'s output contract."""
  crop_size: int | tuple[int, int] = 512
  scale: tuple[int, int] = (2048, 512)
  ratio_range: tuple[float, float] = (0.5, 2.0)
  cat_max_ratio: float = 0.75
  flip_prob: float = 0.5
  image_key: str = "image"
  label_key: str = "label"
  ignore_index: int = IGNORE_INDEX
  reduce_zero_label: bool = False

  def __post_init__(self):
    object.__setattr__(self, "crop_size", size_pair(self.crop_size, "crop_size"))
    object.__setattr__(self, "scale", size_pair(self.scale, "scale"))
    low, high = (float(r) for r in self.ratio_range)
    if not 0 < low <= high:
      raise ValueError(f"ratio_range {tuple(self.ratio_range)!r} must be 0 < low <= high")
    object.__setattr__(self, "ratio_range", (low, high))
    if not 0 < self.cat_max_ratio <= 1:
      raise ValueError(f"cat_max_ratio {self.cat_max_ratio!r} must be in (0, 1] "
                       "(1 disables the re-crops)")
    if not 0 <= self.flip_prob <= 1:
      raise ValueError(f"flip_prob {self.flip_prob!r} must be in [0, 1]")

  def __call__(self, example: dict[str, Any],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, label = _read(example, self.image_key, self.label_key, self.ignore_index,
                         self.reduce_zero_label)
    size = keep_ratio_rescale_size(label.shape, sample_scale(rng, self.scale,
                                                             self.ratio_range))
    label = resize_nearest(label, size)
    y0, y1, x0, x1 = crop_bbox(label, rng, self.crop_size, self.cat_max_ratio,
                               self.ignore_index)
    # The crop needs only its window of the resized image (up to 4x the source area
    # otherwise); the draws and numbers are those of random_resize then random_crop.
    image = resize_bilinear(image, size, window=(y0, y1, x0, x1))
    label = label[y0:y1, x0:x1]
    image, label = random_flip(image, label, rng, self.flip_prob)
    image = photometric_distortion(image, rng)
    image, label = pad_to(normalize(image), label, self.crop_size, self.ignore_index)
    return {"image": image, "label": label}


# ---------------------------------------------------------------------- eval and canvases


def canvas_side(size: float, multiple: int = 32, steps: int = 4) -> int:
  """The smallest static canvas side that holds ``size`` pixels: ``multiple * q`` with ``q``
  on a ladder of ``steps`` values per octave (every ``q`` below ``2 steps``, then
  ``j 2^e`` for ``steps <= j < 2 steps``; ``steps=0``: every multiple). Padding stays under
  ``1 / steps`` of the side (and under ``multiple`` pixels while ``q < 2 steps``).

  With 32 and 4: ..., 256, 288, ..., 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048.
  ``size`` may be fractional (a scaled size); a float error of 1e-6 multiples is forgiven.
  """
  if multiple <= 0 or steps < 0:
    raise ValueError(f"canvas multiple {multiple!r} must be > 0 and steps {steps!r} >= 0")
  need = max(1, int(np.ceil(size / multiple - 1e-6)))
  if steps == 0 or need < 2 * steps:
    return need * multiple
  octave = 2
  while True:
    for j in range(steps, 2 * steps):
      if j * octave >= need:
        return j * octave * multiple
    octave *= 2


def keep_ratio_scaled_size(size: tuple[int, int], scale: Sequence[float]) -> tuple[float, float]:
  """``keep_ratio_rescale_size`` before its rounding: ``(h f, w f)`` as floats."""
  h, w = size
  factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
  return h * float(factor), w * float(factor)


def multi_scale_scales(scale: Sequence[int],
                       ratios: Sequence[float]) -> tuple[tuple[int, int], ...]:
  """mmcv ``MultiScaleFlipAug(img_scale=scale, img_ratios=ratios)``: the Resize targets
  ``(int(long r), int(short r))`` of each ratio (the official fork's ms+flip test)."""
  return tuple((int(scale[0] * r), int(scale[1] * r)) for r in ratios)


class EvalBucket(tuple):
  """``(canvases, label_canvas)``: the static ``(h, w)`` canvas of each test scale and of the
  label. Hashable and ordered (a plain tuple), so buckets sort the same on every host."""

  def __new__(cls, canvases, label_canvas):
    return super().__new__(cls, (tuple(tuple(int(s) for s in c) for c in canvases),
                                 tuple(int(s) for s in label_canvas)))

  @property
  def canvases(self) -> tuple[tuple[int, int], ...]:
    return self[0]

  @property
  def label_canvas(self) -> tuple[int, int]:
    return self[1]


@dataclasses.dataclass(frozen=True)
class MMSegEvalTransform:
  """``example -> {'images': (float32 (h_r, w_r, 3) per ratio), 'image_sizes': int32 (n, 2),
  'label_full': int32 (H, W), 'label_size': int32 (2,)}``: mmseg's test pipeline, a
  keep-ratio resize of the image to ``scale`` (short side 512, long side at most 2048 for
  ADE20K), or for the multi-scale test to ``scale`` times each of ``ratios``
  (``multi_scale_scales``), and ``Normalize``; the label stays at its source size
  ``(H, W)``, where mmseg scores the logits resized back.

  ``eval_bucket(H, W)`` names the static canvases that example is padded onto
  (``to_canvas``): the ratio-1 keep-ratio size rounded up by ``canvas_side``, each ratio's
  canvas derived from it (so a bucket has one canvas per ratio, whatever the image), and the
  label's size rounded up by ``canvas_side``.
  """
  scale: tuple[int, int] = (2048, 512)
  ratios: tuple[float, ...] = (1.0,)
  image_key: str = "image"
  label_key: str = "label"
  ignore_index: int = IGNORE_INDEX
  reduce_zero_label: bool = False
  canvas_multiple: int = 32
  canvas_steps: int = 4

  def __post_init__(self):
    object.__setattr__(self, "scale", size_pair(self.scale, "scale"))
    ratios = tuple(float(r) for r in self.ratios)
    if not ratios or any(r <= 0 for r in ratios):
      raise ValueError(f"ratios {self.ratios!r} must be one or more positive numbers")
    object.__setattr__(self, "ratios", ratios)
    canvas_side(1, self.canvas_multiple, self.canvas_steps)   # validates both
    for r, s in zip(ratios, multi_scale_scales(self.scale, ratios)):
      if min(s) < 1:
        raise ValueError(f"ratio {r} of scale {self.scale} is an empty size {s}")

  @property
  def scales(self) -> tuple[tuple[int, int], ...]:
    return multi_scale_scales(self.scale, self.ratios)

  def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
    image, label = _read(example, self.image_key, self.label_key, self.ignore_index,
                         self.reduce_zero_label)
    sizes = [keep_ratio_rescale_size(label.shape, s) for s in self.scales]
    images = tuple(normalize(resize_bilinear(image, size)) for size in sizes)
    return {"images": images, "image_sizes": np.array(sizes, np.int32).reshape(-1, 2),
            "label_full": label, "label_size": np.array(label.shape, np.int32)}

  def eval_bucket(self, size: tuple[int, int]) -> EvalBucket:
    """The static canvases of a source image of ``size = (H, W)``.

    The ratio-1 canvas ``c`` holds the unrounded keep-ratio size ``x``. A ratio's resize
    factor is at most ``rho = max(long_r / long, short_r / short)`` times the ratio-1 one, so
    its size ``int(x' + 0.5)`` is at most ``int(c rho + 0.5)``, rounded up to the multiple.
    For ADE20K (short side 512 r for r in 0.5 .. 1.75) that is exactly 512 r: no padding.
    """
    m, steps = self.canvas_multiple, self.canvas_steps
    base = [canvas_side(x, m, steps) for x in keep_ratio_scaled_size(size, self.scale)]
    canvases = []
    for s in self.scales:
      rho = max(max(s) / max(self.scale), min(s) / min(self.scale))
      # 1e-3 covers the 1e-6 forgiven by canvas_side times rho, and float error.
      canvases.append([-(-int(c * rho + 0.5 + 1e-3) // m) * m for c in base])
    return EvalBucket(canvases, [canvas_side(s, m, steps) for s in size])

  def to_canvas(self, out: dict[str, Any], bucket: EvalBucket) -> dict[str, Any]:
    """``__call__``'s output on ``bucket``'s canvases: ``{'images': (float32 (Hc_r, Wc_r,
    3), ...), 'image_sizes', 'label': int32 (Lh, Lw) with ignore_index outside the source
    label, 'label_size'}``."""
    images = []
    for image, canvas in zip(out["images"], bucket.canvases):
      if image.shape[0] > canvas[0] or image.shape[1] > canvas[1]:
        raise ValueError(f"image {image.shape[:2]} does not fit its canvas {canvas} "
                         f"(bucket {bucket}); this is a bug in eval_bucket")
      padded = np.zeros(canvas + (3,), np.float32)
      padded[:image.shape[0], :image.shape[1]] = image
      images.append(padded)
    label = out["label_full"]
    padded_label = np.full(bucket.label_canvas, self.ignore_index, np.int32)
    padded_label[:label.shape[0], :label.shape[1]] = label
    return {"images": tuple(images), "image_sizes": out["image_sizes"],
            "label": padded_label, "label_size": out["label_size"]}

  def padding(self, bucket: EvalBucket) -> dict[str, Any]:
    """An all-padding example of ``bucket`` (images 0, label all ``ignore_index``; sizes
    are the canvases, so inference computes nothing undefined on it)."""
    return {"images": tuple(np.zeros(c + (3,), np.float32) for c in bucket.canvases),
            "image_sizes": np.array(bucket.canvases, np.int32).reshape(-1, 2),
            "label": np.full(bucket.label_canvas, self.ignore_index, np.int32),
            "label_size": np.array(bucket.label_canvas, np.int32)}
