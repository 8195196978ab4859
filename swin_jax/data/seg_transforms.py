"""Host transforms for semantic segmentation: Swin-Unet's ``RandomGenerator``, resizing, colour.

    train = SegTransform(size, image_key, label_key, train=True)
    example = train({'image': ..., 'segmentation': ...}, np.random.Generator)
        -> {'image': float32 (S, S, 3), 'label': int32 (S, S)}

The official augmentation (``datasets/dataset_synapse.py``), every draw from the generator:
with p 0.5 a random ``rot90`` (k in 0..3) then a flip along a random axis; otherwise, with
p 0.5, a rotation by an integer angle in [-20, 20) degrees (nearest neighbour, ``order=0``,
for image and label alike, ``reshape=False``); then, if the size differs, a zoom to
``S x S`` (image cubic, label nearest). Sources give an RGB ``uint8 (H, W, 3)`` image (the
digit scenes) or a grey ``float32 (H, W)`` one (Synapse slices, already in [0, 1]); grey
images are repeated to 3 channels after the geometry (the official model repeats its one
channel). Normalisation: ``'auto'`` scales uint8 images to [0, 1] and applies the ImageNet
mean/std, and leaves float images as they are (what the official Synapse code feeds);
``'imagenet'`` always applies mean/std; ``'none'`` only scales uint8 to [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage

from swin_jax.data import images

NORMALIZATIONS = ("auto", "imagenet", "none")


def random_rot_flip(image: np.ndarray, label: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """``rot90`` by ``k ~ U{0..3}`` then a flip along axis ``U{0, 1}`` (H/W plane only)."""
  k = int(rng.integers(0, 4))
  axis = int(rng.integers(0, 2))
  image, label = np.rot90(image, k, axes=(0, 1)), np.rot90(label, k, axes=(0, 1))
  return np.flip(image, axis=axis), np.flip(label, axis=axis)


def random_rotate(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  max_angle: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """Rotation by ``U{-max_angle .. max_angle - 1}`` degrees, nearest, same canvas.

  ``np.random.randint(-20, 20)`` officially (high end exclusive); ``order=0`` for the image
  too, and scipy's constant-0 fill of the corners.
  """
  angle = int(rng.integers(-max_angle, max_angle))
  rotate = lambda x: ndimage.rotate(x, angle, axes=(1, 0), order=0, reshape=False)
  return rotate(image), rotate(label)


def resize_pair(image: np.ndarray, label: np.ndarray | None,
                size: int) -> tuple[np.ndarray, np.ndarray | None]:
  """``scipy.ndimage.zoom`` to ``size x size``: image cubic (float32), label nearest."""
  h, w = image.shape[:2]
  image = image.astype(np.float32)
  if (h, w) == (size, size):
    return image, label
  factors = (size / h, size / w)
  image = ndimage.zoom(image, factors + (1,) * (image.ndim - 2), order=3)
  if label is not None:
    label = ndimage.zoom(label, factors, order=0)
  return image, label


def to_rgb_input(image: np.ndarray, source_dtype: np.dtype, normalize: str) -> np.ndarray:
  """float32 ``(H, W[, 1 | 3])`` in source units -> the model input ``(H, W, 3)``."""
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"task.normalize {normalize!r} is not one of {NORMALIZATIONS}")
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  is_uint8 = np.dtype(source_dtype) == np.uint8
  if is_uint8:
    image = image / np.float32(255.0)
  if normalize == "imagenet" or (normalize == "auto" and is_uint8):
    image = (image - images.IMAGENET_MEAN) / images.IMAGENET_STD
  return image.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SegTransform:
  """``(example[, rng]) -> {'image': float32 (S, S, 3), 'label': int32 (S, S)}``.

  ``train=True``: the official random rot90/flip or rotation first (needs ``rng``).
  """
  size: int
  image_key: str = "image"
  label_key: str = "label"
  train: bool = False
  normalize: str = "auto"
  rot_flip_prob: float = 0.5
  rotate_prob: float = 0.5
  max_angle: int = 20

  def __call__(self, example: dict[str, Any],
               rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    image = np.asarray(example[self.image_key])
    label = np.asarray(example[self.label_key])
    if label.ndim == 3:   # (H, W, 1) masks
      label = label[..., 0]
    source_dtype = image.dtype
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    if image.shape[:2] != label.shape:
      raise ValueError(f"image {image.shape} and label {label.shape} differ in size")
    if self.train:
      # The official `random.random() > 0.5`, then a second independent draw.
      if rng.random() < self.rot_flip_prob:
        image, label = random_rot_flip(image, label, rng)
      elif rng.random() < self.rotate_prob:
        image, label = random_rotate(image, label, rng, self.max_angle)
    image, label = resize_pair(np.ascontiguousarray(image), np.ascontiguousarray(label),
                               self.size)
    return {"image": to_rgb_input(image, source_dtype, self.normalize),
            "label": label.astype(np.int32)}
