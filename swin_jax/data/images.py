"""Single images for prediction and visualisation: loading and the official eval transform."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Images bundled with scikit-image that need no download, usable by name.
BUNDLED_IMAGES = ("chelsea", "astronaut", "coffee", "rocket")


def load_image(path_or_name: str) -> Image.Image:
  """An RGB PIL image from a file path or a bundled scikit-image name (e.g. ``chelsea``)."""
  if path_or_name in BUNDLED_IMAGES and not os.path.exists(path_or_name):
    from skimage import data  # pylint: disable=import-outside-toplevel
    return Image.fromarray(getattr(data, path_or_name)()).convert("RGB")
  if not os.path.exists(path_or_name):
    raise FileNotFoundError(f"image {path_or_name} not found (bundled names: "
                            f"{', '.join(BUNDLED_IMAGES)})")
  return Image.open(path_or_name).convert("RGB")


def eval_geometry(image: Image.Image, size: int, crop: bool = True) -> Image.Image:
  """The official evaluation resize/crop of a PIL image to ``size x size``.

  ``crop=True``: bicubic resize of the shorter side to ``int(256 / 224 * size)``, then a
  centre crop (224 -> 256 -> 224). ``crop=False`` (the 384 configs): direct resize.
  """
  if not crop:
    return image.resize((size, size), Image.BICUBIC)
  short = int(256 / 224 * size)
  w, h = image.size
  # torchvision's Resize(int): shorter side -> short, longer side truncated.
  new_size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
  image = image.resize(new_size, Image.BICUBIC)
  w, h = image.size
  left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def normalize(image: Image.Image) -> np.ndarray:
  """RGB PIL image -> float32 ``(H, W, 3)``, ImageNet mean/std normalised."""
  pixels = np.asarray(image, np.float32) / 255.0
  return (pixels - IMAGENET_MEAN) / IMAGENET_STD


def eval_transform(image: Image.Image, size: int, crop: bool = True) -> np.ndarray:
  """The official evaluation transform -> ``(size, size, 3)`` float32, normalised."""
  return normalize(eval_geometry(image, size, crop))
