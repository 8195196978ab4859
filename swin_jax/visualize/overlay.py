"""Segmentation masks drawn on images: one fixed colour per class, background transparent.

    colors = class_colors(num_classes)                 # (K, 3) uint8, class 0 unused
    shown = blend(image, labels, colors, alpha=0.5)    # (H, W, 3) uint8
    labels = upsample_labels(labels, image.shape[:2])  # nearest, as the official zoom-back
    for line in legend_lines(labels, colors, names): print(line)

Pure numpy, no matplotlib: any dense model (Swin-Unet, UperNet) can use it from a command
line or a notebook. Colours depend only on the class index, so class k looks the same in
every figure of every run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BACKGROUND = 0  # the class left transparent (every dataset here labels background 0)

# matplotlib's tab10 then the light tab20 shades: distinct on photos and CT slices alike.
_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], np.uint8)


def _voc_color(index: int) -> tuple[int, int, int]:
  """The PASCAL VOC colour of ``index`` (bits spread over R, G, B): distinct for any index."""
  r = g = b = 0
  for shift in range(7, -1, -1):
    r |= ((index >> 0) & 1) << shift
    g |= ((index >> 1) & 1) << shift
    b |= ((index >> 2) & 1) << shift
    index >>= 3
  return r, g, b


def class_colors(num_classes: int, background: int | None = BACKGROUND) -> np.ndarray:
  """``(num_classes, 3)`` uint8 RGB: the palette in order over the foreground classes (the
  background's row is black and never drawn), then VOC colours past its 20 entries."""
  colors = np.zeros((num_classes, 3), np.uint8)
  foreground = [k for k in range(num_classes) if k != background]
  for rank, k in enumerate(foreground):
    colors[k] = _PALETTE[rank] if rank < len(_PALETTE) else _voc_color(rank + 1)
  return colors


def blend(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5,
          background: int | None = BACKGROUND) -> np.ndarray:
  """``image`` uint8 ``(H, W, 3)`` with every non-background pixel of ``labels`` ``(H, W)``
  mixed with its class colour: ``round((1 - alpha) * pixel + alpha * color)``."""
  if image.shape[:2] != labels.shape:
    raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colors[labels].astype(np.float32)
  mixed = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
  if background is None:
    return mixed
  return np.where((labels == background)[..., None], image, mixed)


def upsample_labels(labels: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
  """Nearest-neighbour resize of a label map ``(h, w) -> out_hw``: output pixel ``i`` takes
  source ``floor((i + 0.5) * h / H)`` (pixel centres), so ``2x`` repeats each label 2x2."""
  h, w = labels.shape
  rows = np.minimum(((np.arange(out_hw[0]) + 0.5) * h / out_hw[0]).astype(int), h - 1)
  cols = np.minimum(((np.arange(out_hw[1]) + 0.5) * w / out_hw[1]).astype(int), w - 1)
  return labels[rows[:, None], cols[None, :]]


def class_fractions(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """``(num_classes,)`` float64: the share of pixels predicted as each class."""
  counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
  return counts / max(labels.size, 1)


def hex_color(rgb: Sequence[int]) -> str:
  return "#" + "".join(f"{int(c):02x}" for c in rgb)


def legend_lines(labels: np.ndarray, colors: np.ndarray, names: Sequence[str],
                 background: int | None = BACKGROUND) -> list[str]:
  """The printed legend: one line per predicted class (name, colour, pixel share), and how
  many classes were not predicted."""
  fractions = class_fractions(labels, len(colors))
  width = max([len(name) for name in names] + [5])
  lines = [f"  {'class':<{width}}  colour    pixels"]
  for k, share in enumerate(fractions):
    if share > 0:
      color = "(none)" if k == background else hex_color(colors[k])
      lines.append(f"  {names[k]:<{width}}  {color:<8}  {share:7.2%}")
  absent = int(np.sum(fractions == 0))
  if absent:
    lines.append(f"  ({absent} of {len(colors)} classes not predicted)")
  return lines
