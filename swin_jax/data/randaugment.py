"""RandAugment on PIL images, driven by a ``np.random.Generator`` (timm's ``rand-...`` specs).

The op set, magnitude ranges and sampling follow timm's ``rand_augment_transform``:
``n`` ops drawn uniformly with replacement, each applied with probability ``p``; the
magnitude ``m`` (0..10) is optionally jittered by N(m, mstd) per op and clipped to
``[0, mmax]``. ``inc1`` selects the 'increasing' op set, whose strength grows with ``m``
(the Swin recipe: ``rand-m9-mstd0.5-inc1``). All randomness comes from the generator
passed in, so a grain ``random_map`` makes it deterministic per example and epoch.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# Magnitudes are given on a 0..10 scale; op arguments scale with m / _LEVEL_DENOM.
_LEVEL_DENOM = 10.0

# timm's _RAND_TRANSFORMS (inc0) and _RAND_INCREASING_TRANSFORMS (inc1), in its order.
DEFAULT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")
INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
    "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
    "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")

_SPEC_KEYS = ("m", "n", "mstd", "mmax", "inc", "p")


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  """A parsed ``rand-...`` spec; defaults are timm's."""
  magnitude: float = 10.0
  num_ops: int = 2
  magnitude_std: float = 0.0        # inf: magnitude ~ U(0, m)
  magnitude_max: float = _LEVEL_DENOM
  increasing: bool = False
  prob: float = 0.5                 # probability of applying each drawn op

  @property
  def ops(self) -> tuple[str, ...]:
    return INCREASING_OPS if self.increasing else DEFAULT_OPS


def parse_randaugment(spec: str) -> RandAugmentSpec | None:
  """``'rand-m9-mstd0.5-inc1'`` -> RandAugmentSpec; ``''`` -> None (RandAugment off)."""
  if not spec:
    return None
  sections = spec.split("-")
  if sections[0] != "rand":
    raise ValueError(f"randaugment spec {spec!r} must start with 'rand' "
                     f"(e.g. 'rand-m9-mstd0.5-inc1'), got {sections[0]!r}")
  values = {}
  for token in sections[1:]:
    match = re.fullmatch(r"([a-z]+)(.+)", token)
    if not match or match.group(1) not in _SPEC_KEYS:
      raise ValueError(f"randaugment spec {spec!r}: unknown section {token!r} "
                       f"(known: {', '.join(_SPEC_KEYS)}, each followed by a number)")
    key, raw = match.groups()
    try:
      value = float(raw) if key in ("mstd", "p") else int(raw)
    except ValueError:
      kind = "a number" if key in ("mstd", "p") else "an integer"
      raise ValueError(f"randaugment spec {spec!r}: section {token!r} needs {kind} "
                       f"after {key!r}") from None
    values[key] = value
  mstd = values.get("mstd", 0.0)
  return RandAugmentSpec(
      magnitude=float(values.get("m", _LEVEL_DENOM)),
      num_ops=values.get("n", 2),
      # timm: a std above 100 means uniform sampling in [0, m].
      magnitude_std=float("inf") if mstd > 100 else mstd,
      magnitude_max=float(values.get("mmax", _LEVEL_DENOM)),
      increasing=bool(values.get("inc", 0)),
      prob=values.get("p", 0.5))


# --- the ops: (image, level in [0, mmax/10], rng, fill, resample) -> image -------------

def _negate(value: float, rng: np.random.Generator) -> float:
  """Geometric and 'increasing' ops go either way with probability 1/2."""
  return -value if rng.random() < 0.5 else value


def _affine(image: Image.Image, matrix, fill, resample) -> Image.Image:
  return image.transform(image.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _rotate(image, level, rng, fill, resample):
  return image.rotate(_negate(level * 30.0, rng), resample=resample, fillcolor=fill)


def _shear_x(image, level, rng, fill, resample):
  return _affine(image, (1, _negate(level * 0.3, rng), 0, 0, 1, 0), fill, resample)


def _shear_y(image, level, rng, fill, resample):
  return _affine(image, (1, 0, 0, _negate(level * 0.3, rng), 1, 0), fill, resample)


def _translate_x_rel(image, level, rng, fill, resample):
  pixels = _negate(level * 0.45, rng) * image.size[0]
  return _affine(image, (1, 0, pixels, 0, 1, 0), fill, resample)


def _translate_y_rel(image, level, rng, fill, resample):
  pixels = _negate(level * 0.45, rng) * image.size[1]
  return _affine(image, (1, 0, 0, 0, 1, pixels), fill, resample)


def _posterize_bits(image: Image.Image, bits: int) -> Image.Image:
  return image if bits >= 8 else ImageOps.posterize(image, bits)


def _posterize(image, level, rng, fill, resample):
  del rng, fill, resample
  return _posterize_bits(image, int(level * 4))          # keeps 0..4 bits, milder as m grows


def _posterize_increasing(image, level, rng, fill, resample):
  del rng, fill, resample
  return _posterize_bits(image, 4 - int(level * 4))      # keeps 4..0 bits: stronger as m grows


def _solarize(image, level, rng, fill, resample):
  del rng, fill, resample
  return ImageOps.solarize(image, min(256, int(level * 256)))


def _solarize_increasing(image, level, rng, fill, resample):
  del rng, fill, resample
  # Threshold 256 (m=0) inverts nothing; lower thresholds invert more.
  return ImageOps.solarize(image, 256 - min(256, int(level * 256)))


def _solarize_add(image, level, rng, fill, resample):
  del rng, fill, resample
  add = min(128, int(level * 110))
  lut = [min(255, i + add) if i < 128 else i for i in range(256)]
  return image.point(lut * len(image.getbands()))


def _enhancer(enhance_cls, increasing: bool) -> Callable:
  def op(image, level, rng, fill, resample):
    del fill, resample
    if increasing:  # factor 1 (no change) at m=0, moving towards 0.1 or 1.9
      factor = max(0.1, 1.0 + _negate(level * 0.9, rng))
    else:           # factor in [0.1, 1.9], 1.0 (no change) at m=5
      factor = level * 1.8 + 0.1
    return enhance_cls(image).enhance(factor)
  return op


def _no_level(fn) -> Callable:
  def op(image, level, rng, fill, resample):
    del level, rng, fill, resample
    return fn(image)
  return op


OPS: dict[str, Callable] = {
    "AutoContrast": _no_level(ImageOps.autocontrast),
    "Equalize": _no_level(ImageOps.equalize),
    "Invert": _no_level(ImageOps.invert),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize_increasing,
    "Solarize": _solarize,
    "SolarizeIncreasing": _solarize_increasing,
    "SolarizeAdd": _solarize_add,
    "Color": _enhancer(ImageEnhance.Color, False),
    "ColorIncreasing": _enhancer(ImageEnhance.Color, True),
    "Contrast": _enhancer(ImageEnhance.Contrast, False),
    "ContrastIncreasing": _enhancer(ImageEnhance.Contrast, True),
    "Brightness": _enhancer(ImageEnhance.Brightness, False),
    "BrightnessIncreasing": _enhancer(ImageEnhance.Brightness, True),
    "Sharpness": _enhancer(ImageEnhance.Sharpness, False),
    "SharpnessIncreasing": _enhancer(ImageEnhance.Sharpness, True),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateXRel": _translate_x_rel,
    "TranslateYRel": _translate_y_rel,
}


def apply_op(name: str, image: Image.Image, magnitude: float, rng: np.random.Generator, *,
             fill: tuple[int, ...], resample=Image.BICUBIC) -> Image.Image:
  """One RandAugment op at ``magnitude`` (0..10 scale) on an RGB PIL image."""
  return OPS[name](image, magnitude / _LEVEL_DENOM, rng, fill, resample)


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """``RandAugment(spec, fill)(pil_image, rng) -> pil_image`` (RGB in, RGB out).

  ``fill`` is the colour of the area that geometric ops uncover (timm uses the dataset
  mean as uint8); ``resample`` is their interpolation (Swin: bicubic).
  """
  spec: RandAugmentSpec
  fill: tuple[int, ...] = (128, 128, 128)
  resample: int = Image.BICUBIC

  def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    ops = self.spec.ops
    for index in rng.integers(0, len(ops), size=self.spec.num_ops):
      if self.spec.prob < 1.0 and rng.random() > self.spec.prob:
        continue
      image = apply_op(ops[index], image, self._magnitude(rng), rng, fill=self.fill,
                       resample=self.resample)
    return image

  def _magnitude(self, rng: np.random.Generator) -> float:
    m = self.spec.magnitude
    if self.spec.magnitude_std == float("inf"):
      m = rng.uniform(0.0, m)
    elif self.spec.magnitude_std > 0:
      m = rng.normal(m, self.spec.magnitude_std)
    return float(min(max(m, 0.0), self.spec.magnitude_max))
