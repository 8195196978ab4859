"""Host-side per-example transforms: the official train augmentation and the eval transform.

Train (timm ``create_transform`` as configured by the official Swin code): random resized
crop (bicubic) -> horizontal flip -> RandAugment -> ImageNet normalisation -> random erasing
('pixel' mode, one box). Every random draw comes from the ``np.random.Generator`` passed in,
so a grain ``random_map`` makes the whole chain deterministic per example and epoch.

Examples are dicts with ``'image'`` uint8 ``(H, W, C)``, C in {1, 3}, and ``'label'``; the
transforms return ``{'image': float32 (S, S, 3), 'label': int32 ()}``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

from swin_jax.data import images as images_lib
from swin_jax.data import randaugment as randaugment_lib

# timm's RandAugment fill: the dataset mean as uint8 (124, 116, 104).
MEAN_FILL = tuple(int(round(255 * m)) for m in images_lib.IMAGENET_MEAN)


def to_pil_rgb(image: np.ndarray) -> Image.Image:
  """uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` -> RGB PIL image (grey repeated)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
  return Image.fromarray(image)


normalize = images_lib.normalize


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float],
                            ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box -> ``(top, left, crop_h, crop_w)``.

  Up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio; if none
  fits, a centre crop clamped to ``ratio`` (the whole image when its ratio is inside).
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      return top, left, crop_h, crop_w
  in_ratio = width / height
  if in_ratio < min(ratio):
    crop_w, crop_h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    crop_h, crop_w = height, int(round(height * max(ratio)))
  else:
    crop_h, crop_w = height, width
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(image: Image.Image, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
  """A random crop (see ``random_resized_crop_box``) resized to ``size x size``, bicubic."""
  top, left, crop_h, crop_w = random_resized_crop_box(rng, image.height, image.width, scale,
                                                      ratio)
  crop = image.crop((left, top, left + crop_w, top + crop_h))
  return crop.resize((size, size), Image.BICUBIC)


def random_erasing(image: np.ndarray, rng: np.random.Generator, prob: float, *,
                   min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3) -> np.ndarray:
  """timm's RandomErasing, 'pixel' mode, one box, on a normalised ``(H, W, C)`` image.

  With probability ``prob``: up to 10 tries of a box of area fraction ~ U(min_area,
  max_area) and log-uniform aspect in [min_aspect, 1/min_aspect]; the first that fits is
  filled with per-pixel N(0, 1) noise (noise in normalised space, like timm). Returns a
  new array; the input is not modified.
  """
  if prob <= 0 or rng.random() > prob:
    return image
  height, width, channels = image.shape
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target_area = rng.uniform(min_area, max_area) * height * width
    aspect = math.exp(rng.uniform(*log_aspect))
    box_h = int(round(math.sqrt(target_area * aspect)))
    box_w = int(round(math.sqrt(target_area / aspect)))
    if box_w < width and box_h < height:
      top = int(rng.integers(0, height - box_h + 1))
      left = int(rng.integers(0, width - box_w + 1))
      image = image.copy()
      image[top:top + box_h, left:left + box_w] = rng.standard_normal(
          (box_h, box_w, channels), dtype=np.float32)
      return image
  return image


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """``transform(example, rng) -> {'image': float32 (S, S, 3), 'label': int32}``.

  A frozen dataclass (not a closure) so that grain can pickle it into worker processes.
  ``random_resized_crop=False`` replaces the random crop by the eval geometry
  (``eval_crop``: resize 256/224*S + centre crop; otherwise a direct resize).
  """
  image_size: int
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  random_resized_crop: bool = True
  eval_crop: bool = True
  hflip: float = 0.5
  randaugment: randaugment_lib.RandAugment | None = None
  reprob: float = 0.0

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = to_pil_rgb(example["image"])
    if self.random_resized_crop:
      image = random_resized_crop(image, rng, self.image_size, self.crop_scale, self.crop_ratio)
    else:
      image = images_lib.eval_geometry(image, self.image_size, self.eval_crop)
    if self.hflip > 0 and rng.random() < self.hflip:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if self.randaugment is not None:
      image = self.randaugment(image, rng)
    pixels = random_erasing(normalize(image), rng, self.reprob)
    return {"image": pixels, "label": np.int32(example["label"])}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """``transform(example) -> {'image': float32 (S, S, 3), 'label': int32}``.

  The official eval transform (``images.eval_transform``).
  """
  image_size: int
  crop: bool = True

  def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
    pixels = images_lib.eval_transform(to_pil_rgb(example["image"]), self.image_size, self.crop)
    return {"image": pixels, "label": np.int32(example["label"])}


def train_transform(config) -> TrainTransform:
  """The train transform described by ``config.dataset`` and ``config.task.aug``."""
  aug, size = config.task.aug, config.dataset.image_size
  spec = randaugment_lib.parse_randaugment(aug.randaugment)
  return TrainTransform(
      image_size=size,
      crop_scale=tuple(aug.crop_scale),
      crop_ratio=tuple(aug.crop_ratio),
      random_resized_crop=aug.random_resized_crop,
      eval_crop=config.dataset.eval_crop,
      hflip=aug.hflip,
      randaugment=None if spec is None else randaugment_lib.RandAugment(spec, fill=MEAN_FILL),
      reprob=aug.reprob)


def eval_transform(config) -> EvalTransform:
  """The eval transform described by ``config.dataset`` (image_size, eval_crop)."""
  return EvalTransform(image_size=config.dataset.image_size, crop=config.dataset.eval_crop)
