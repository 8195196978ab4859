"""SimMIM reconstruction figures: masked input, reconstruction and original side by side.

    panel = reconstruction_panel(images, patch_masks, reconstructions, patch_size)
    save_png(panel, "runs/simmim_demo/reconstructions/step_500.png")

``images`` and ``reconstructions`` are ImageNet-normalised ``(N, H, W, 3)``; ``patch_masks``
``(N, H/p, W/p)`` (1 = masked). Each row of the ``uint8`` panel is one image: the input with
its masked patches grey, the reconstruction pasted into the masked patches (the visible
ones are the input's, as the loss only scores masked pixels), and the original. A model
trained against ``norm_targets`` (the V2 recipe) predicts locally normalised pixels, which
have no ImageNet colours: its masked patches are shown min-max scaled per image instead.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from swin_jax.data import images as images_lib

MASK_GREY = 0.5
MIN_SIDE = 96        # small images (the 32 px demo digits) are enlarged, nearest neighbour
GAP = 4              # white pixels between panels


def to_rgb(normalised: np.ndarray) -> np.ndarray:
  """ImageNet-normalised ``(..., 3)`` -> RGB in ``[0, 1]``."""
  return np.clip(normalised * images_lib.IMAGENET_STD + images_lib.IMAGENET_MEAN, 0.0, 1.0)


def _min_max(x: np.ndarray) -> np.ndarray:
  low, high = float(x.min()), float(x.max())
  return (x - low) / max(high - low, 1e-6)


def reconstruction_rows(images: np.ndarray, patch_masks: np.ndarray,
                        reconstructions: np.ndarray, patch_size: int,
                        normalised_target: bool = False) -> np.ndarray:
  """``(N, 3, H, W, 3)`` RGB in ``[0, 1]``: masked input, reconstruction, original."""
  pixel_mask = np.repeat(np.repeat(np.asarray(patch_masks, np.float32), patch_size, 1),
                         patch_size, 2)[..., None]
  original = to_rgb(np.asarray(images, np.float32))
  masked = original * (1 - pixel_mask) + MASK_GREY * pixel_mask
  predicted = np.asarray(reconstructions, np.float32)
  if normalised_target:
    predicted = np.stack([_min_max(p) for p in predicted])
  else:
    predicted = to_rgb(predicted)
  pasted = original * (1 - pixel_mask) + predicted * pixel_mask
  return np.stack([masked, pasted, original], axis=1)


def reconstruction_panel(images: np.ndarray, patch_masks: np.ndarray,
                         reconstructions: np.ndarray, patch_size: int,
                         normalised_target: bool = False) -> np.ndarray:
  """The rows of ``reconstruction_rows`` tiled into one ``uint8 (rows, cols, 3)`` image."""
  rows = reconstruction_rows(images, patch_masks, reconstructions, patch_size,
                             normalised_target)
  n, cols, h, w, _ = rows.shape
  scale = max(1, -(-MIN_SIDE // min(h, w)))
  rows = rows.repeat(scale, axis=2).repeat(scale, axis=3)
  h, w = h * scale, w * scale
  canvas = np.ones((n * h + (n - 1) * GAP, cols * w + (cols - 1) * GAP, 3), np.float32)
  for i in range(n):
    for j in range(cols):
      top, left = i * (h + GAP), j * (w + GAP)
      canvas[top:top + h, left:left + w] = rows[i, j]
  return np.round(canvas * 255).astype(np.uint8)


def save_png(panel: np.ndarray, path: str) -> str:
  """Writes ``panel`` (uint8 RGB) as a PNG, creating its directory."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(panel).save(path, format="PNG")
  return path
