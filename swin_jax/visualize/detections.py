"""Detections drawn on an image: instance masks blended, boxes outlined, labels written.

    shown = draw_detections(image, boxes, scores, classes, names, masks=masks)

``image`` uint8 ``(H, W, 3)``; ``boxes (N, 4)`` x1y1x2y2 in its pixels, ``scores (N,)``,
``classes (N,)`` (0-based, indexing ``names``), ``masks (N, H, W)`` bool or None. Each class
has a fixed colour (``overlay.class_colors`` over the classes, no background), so class k
looks the same in every figure. Masks are blended lowest score first, so where instances
overlap the most confident one is on top.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from swin_jax.visualize import overlay


def detection_colors(num_classes: int) -> np.ndarray:
  """``(num_classes, 3)`` uint8: a colour per (0-based) detection class."""
  return overlay.class_colors(num_classes, background=None)


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                    classes: np.ndarray, names: Sequence[str],
                    masks: np.ndarray | None = None, alpha: float = 0.45,
                    line_width: int = 2) -> np.ndarray:
  """The image with each detection's mask, box and ``'<name> <score>'`` label (uint8)."""
  image = np.asarray(image, np.uint8)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  scores = np.asarray(scores, np.float32).reshape(-1)
  classes = np.asarray(classes, np.int64).reshape(-1)
  if not len(boxes) == len(scores) == len(classes):
    raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes")
  if len(classes) and (classes.min() < 0 or classes.max() >= len(names)):
    raise ValueError(f"classes must index the {len(names)} names, got {sorted(set(classes))}")
  colors = detection_colors(len(names))
  shown = image.astype(np.float32)
  order = np.argsort(scores, kind="stable")          # most confident last: on top
  if masks is not None:
    masks = np.asarray(masks, bool)
    if masks.shape != (len(boxes), *image.shape[:2]):
      raise ValueError(f"masks {masks.shape} must be (N, H, W) = "
                       f"{(len(boxes), *image.shape[:2])}")
    for i in order:
      color = colors[classes[i]].astype(np.float32)
      shown[masks[i]] = (1 - alpha) * shown[masks[i]] + alpha * color
  canvas = Image.fromarray(np.clip(np.rint(shown), 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  for i in order:
    color = tuple(int(c) for c in colors[classes[i]])
    x0, y0, x1, y1 = (float(v) for v in boxes[i])
    draw.rectangle((x0, y0, x1, y1), outline=color, width=line_width)
    label = f"{names[classes[i]]} {scores[i]:.2f}"
    left, top, right, bottom = draw.textbbox((x0, y0), label)
    top_y = max(y0 - (bottom - top) - 2, 0)
    draw.rectangle((x0, top_y, x0 + (right - left) + 2, top_y + (bottom - top) + 2), fill=color)
    draw.text((x0 + 1, top_y), label, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255))
  return np.asarray(canvas)
