"""Orthogonal slices of a 3-D volume with its labels overlaid: the view of a 3-D model.

    image = draw_orthogonal_slices(volume, labels, ground_truth=label, spacing=(2, 1, 1),
                                   class_names=names)           # a PIL RGB image
    write_orthogonal_slices("slices.png", volume, labels, ...)  # the same, saved as PNG

``volume`` ``(D, H, W)`` float, ``labels`` / ``ground_truth`` ``(D, H, W)`` integer classes.
Three panels through ``point`` ``(d, h, w)`` (default: the centre of mass of the predicted
foreground, else the volume's centre): *axial* (``volume[d]``, rows H, columns W),
*coronal* (``volume[:, h]``, rows D, columns W) and *sagittal* (``volume[:, :, w]``, rows D,
columns H). The grey levels are the volume windowed by its 1st-99th percentiles (one window
for every panel); each class is blended in its fixed colour (``overlay.class_colors`` and
``overlay.blend``: the colours of the 2-D segmentation overlays; class 0 left as it is).
With ``ground_truth`` a second row shows it the same way. A legend strip under the panels
names the colour of each foreground class.

Panels are drawn in square pixels of ``pixel_mm`` (default: the finest spacing, enlarged by
an integer factor so the largest panel is at least ``MIN_PANEL`` pixels): labels resampled
nearest by pixel centre (``overlay.upsample_labels``), the grey image linearly. Where every
pixel is one voxel (``pixel_mm`` equal to an isotropic spacing) the panels are the slices as
they are. ``slice_layout`` gives the figure's size and where each panel lies in it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from swin_jax.visualize import overlay

VIEWS = ("axial", "coronal", "sagittal")   # the panel cutting axis 0 (D), 1 (H), 2 (W)
_AXIS_LETTERS = "dhw"
PERCENTILES = (1.0, 99.0)                  # the grey window
MIN_PANEL = 160        # default zoom: the largest panel side reaches at least this (pixels)
MARGIN, GAP, LINE = 6, 8, 14               # pixels: border, between panels/rows, text line
SWATCH = 10                                # legend colour square
FIGURE_RGB, TEXT_RGB = (20, 20, 20), (235, 235, 235)
PREDICTION, GROUND_TRUTH, IMAGE = "prediction", "ground truth", "image"


@dataclasses.dataclass(frozen=True)
class SliceLayout:
  """Where things lie in the figure: ``size`` ``(width, height)``; ``boxes[(row, view)]``
  ``(left, top, right, bottom)`` of each panel (right/bottom exclusive); ``panel_shapes
  [view]`` ``(rows, cols)``; the legend's lines start at ``legend_top``."""
  size: tuple[int, int]
  rows: tuple[str, ...]
  boxes: dict[tuple[str, str], tuple[int, int, int, int]]
  panel_shapes: dict[str, tuple[int, int]]
  pixel_mm: float
  legend_top: int
  legend_entries: tuple[tuple[int, int, int], ...]   # (class, left, top) of each swatch


def _font():
  return ImageFont.load_default()


def view_planes(shape: Sequence[int], spacing: Sequence[float]
                ) -> dict[str, tuple[tuple[int, int], tuple[float, float]]]:
  """``{view: ((rows, cols) voxels, (row, col) spacing)}`` of the three panels."""
  d, h, w = shape
  sd, sh, sw = spacing
  return {"axial": ((h, w), (sh, sw)), "coronal": ((d, w), (sd, sw)),
          "sagittal": ((d, h), (sd, sh))}


def default_pixel_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
  """The finest spacing, divided by the integer factor that brings the largest panel side
  to at least ``MIN_PANEL`` pixels."""
  finest = min(spacing)
  largest = max(n * s for n, s in zip(shape, spacing)) / finest
  return finest / max(1, math.ceil(MIN_PANEL / largest))


def panel_shape(voxels: Sequence[int], spacing: Sequence[float], pixel_mm: float
                ) -> tuple[int, int]:
  """A slice of ``voxels`` ``(rows, cols)`` at ``spacing`` shown in ``pixel_mm`` pixels."""
  return tuple(max(1, int(round(n * s / pixel_mm))) for n, s in zip(voxels, spacing))


def _legend(classes: Sequence[int], names: Sequence[str], left: int, top: int, width: int
            ) -> tuple[tuple[tuple[int, int, int], ...], int]:
  """``((class, x, y) of each swatch, height)`` of the legend wrapped into ``width``."""
  draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font()
  entries, x, y = [], left, top
  for k in classes:
    entry = SWATCH + 4 + int(math.ceil(draw.textlength(names[k], font=font))) + 12
    if x > left and x + entry > left + width:
      x, y = left, y + LINE
    entries.append((k, x, y))
    x += entry
  return tuple(entries), (y + LINE - top) if entries else 0


def slice_layout(shape: Sequence[int], spacing: Sequence[float] | None = None, *,
                 rows: Sequence[str] = (PREDICTION,), pixel_mm: float | None = None,
                 class_names: Sequence[str] = ()) -> SliceLayout:
  """The figure of a ``(D, H, W)`` volume: per row a caption line, a line of panel titles
  and the three panels side by side (top-aligned); then the legend of ``class_names[1:]``."""
  spacing = _spacing(spacing)
  pixel_mm = float(pixel_mm) if pixel_mm else default_pixel_mm(shape, spacing)
  if pixel_mm <= 0:
    raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
  shapes = {view: panel_shape(voxels, sp, pixel_mm)
            for view, (voxels, sp) in view_planes(shape, spacing).items()}
  width = 2 * MARGIN + sum(c for _, c in shapes.values()) + GAP * (len(VIEWS) - 1)
  row_height = max(r for r, _ in shapes.values())
  boxes, top = {}, MARGIN
  for row in rows:
    top += 2 * LINE
    left = MARGIN
    for view in VIEWS:
      r, c = shapes[view]
      boxes[(row, view)] = (left, top, left + c, top + r)
      left += c + GAP
    top += row_height + GAP
  entries, legend_height = _legend(range(1, len(class_names)), class_names, MARGIN, top,
                                   width - 2 * MARGIN)
  height = top + legend_height + MARGIN - (0 if legend_height else GAP)
  return SliceLayout(size=(width, height), rows=tuple(rows), boxes=boxes, panel_shapes=shapes,
                     pixel_mm=pixel_mm, legend_top=top, legend_entries=entries)


def window(volume: np.ndarray, percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
  """``volume`` scaled to [0, 1] float32 between its ``percentiles`` (finite voxels),
  clipped outside."""
  finite = volume[np.isfinite(volume)]
  lo, hi = np.percentile(finite, percentiles) if finite.size else (0.0, 1.0)
  scaled = (np.nan_to_num(volume.astype(np.float32), nan=lo) - lo) / max(hi - lo, 1e-12)
  return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def foreground_centre(labels: np.ndarray | None, shape: Sequence[int]) -> tuple[int, ...]:
  """The voxel nearest the centre of mass of ``labels > 0``; without foreground the
  volume's centre ``n // 2``."""
  if labels is None or not np.any(labels > 0):
    return tuple(int(n) // 2 for n in shape)
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  centre = ndimage.center_of_mass(labels > 0)
  return tuple(int(min(max(round(c), 0), n - 1)) for c, n in zip(centre, shape))


def cut(array: np.ndarray, view: str, point: Sequence[int]) -> np.ndarray:
  """The 2-D slice of ``array`` ``(D, H, W)`` shown in ``view`` through ``point``."""
  axis = VIEWS.index(view)
  return np.take(array, int(point[axis]), axis=axis)


def resample_linear(plane: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
  """Bilinear resize of a float ``(h, w)`` plane by pixel centres (edges held), the
  counterpart of ``overlay.upsample_labels``; the same size returns the plane."""
  if tuple(plane.shape) == tuple(out_shape):
    return plane
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  coords = [np.clip((np.arange(m) + 0.5) * n / m - 0.5, 0, n - 1)
            for n, m in zip(plane.shape, out_shape)]
  grid = np.meshgrid(*coords, indexing="ij")
  return ndimage.map_coordinates(plane, grid, order=1, mode="nearest").astype(np.float32)


def _panel(grey: np.ndarray, labels: np.ndarray | None, view: str, point, shape, colors,
           alpha) -> np.ndarray:
  pixels = resample_linear(cut(grey, view, point), shape)
  rgb = np.repeat(np.rint(pixels * 255).astype(np.uint8)[..., None], 3, axis=-1)
  if labels is None:
    return rgb
  return overlay.blend(rgb, overlay.upsample_labels(cut(labels, view, point), shape), colors,
                       alpha)


def _check(volume, labels, ground_truth, point, num_classes) -> None:
  if volume.ndim != 3:
    raise ValueError(f"volume must be (D, H, W), got shape {volume.shape}")
  for what, array in (("labels", labels), ("ground_truth", ground_truth)):
    if array is None:
      continue
    if array.shape != volume.shape:
      raise ValueError(f"{what} {array.shape} and volume {volume.shape} differ in shape")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
      raise ValueError(f"{what} hold classes {int(array.min())}..{int(array.max())}, "
                       f"outside the {num_classes} classes")
  if len(point) != 3 or any(not 0 <= p < n for p, n in zip(point, volume.shape)):
    raise ValueError(f"point {tuple(point)} is not a voxel of a volume of {volume.shape}")


def _spacing(spacing) -> tuple[float, float, float]:
  spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
  if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
    raise ValueError(f"spacing must be 3 positive numbers (D, H, W), got {spacing}")
  return spacing


def draw_orthogonal_slices(volume: np.ndarray, labels: np.ndarray | None = None, *,
                           ground_truth: np.ndarray | None = None,
                           point: Sequence[int] | None = None,
                           spacing: Sequence[float] | None = None,
                           class_names: Sequence[str] | None = None, alpha: float = 0.5,
                           pixel_mm: float | None = None) -> Image.Image:
  """The figure of the module docstring as an RGB image. ``class_names`` (K names, class 0
  first) fix the number of classes; without them ``class 0 .. class K-1``, K one past the
  largest label drawn."""
  volume = np.asarray(volume)
  labels = None if labels is None else np.asarray(labels).astype(np.int64)
  ground_truth = None if ground_truth is None else np.asarray(ground_truth).astype(np.int64)
  drawn = [a for a in (labels, ground_truth) if a is not None]
  if class_names is None:
    largest = max([int(a.max()) for a in drawn if a.size] + [0])
    class_names = [f"class {k}" for k in range(largest + 1)]
  class_names = [str(n) for n in class_names]
  point = tuple(int(p) for p in point) if point is not None else foreground_centre(
      labels, volume.shape)
  _check(volume, labels, ground_truth, point, len(class_names))
  rows = [(PREDICTION if labels is not None else IMAGE, labels)]
  if ground_truth is not None:
    rows.append((GROUND_TRUTH, ground_truth))
  layout = slice_layout(volume.shape, spacing, rows=[name for name, _ in rows],
                        pixel_mm=pixel_mm, class_names=class_names if drawn else ())
  colors = overlay.class_colors(len(class_names))
  grey = window(volume)
  figure = np.zeros((layout.size[1], layout.size[0], 3), np.uint8)
  figure[:] = FIGURE_RGB
  for row, row_labels in rows:
    for view in VIEWS:
      left, top, right, bottom = layout.boxes[(row, view)]
      figure[top:bottom, left:right] = _panel(grey, row_labels, view, point,
                                              layout.panel_shapes[view], colors, alpha)
  image = Image.fromarray(figure)
  _draw_text(image, layout, point, class_names, colors)
  return image


def _draw_text(image: Image.Image, layout: SliceLayout, point, names, colors) -> None:
  draw, font = ImageDraw.Draw(image), _font()
  for row in layout.rows:
    left, top = layout.boxes[(row, VIEWS[0])][:2]
    draw.text((left, top - 2 * LINE), row, fill=TEXT_RGB, font=font)
    for axis, view in enumerate(VIEWS):
      left, top = layout.boxes[(row, view)][:2]
      draw.text((left, top - LINE), f"{view} {_AXIS_LETTERS[axis]}={point[axis]}",
                fill=TEXT_RGB, font=font)
  for k, x, y in layout.legend_entries:
    square = (x, y + (LINE - SWATCH) // 2, x + SWATCH - 1, y + (LINE + SWATCH) // 2 - 1)
    draw.rectangle(square, fill=tuple(int(c) for c in colors[k]))
    draw.text((x + SWATCH + 4, y), names[k], fill=TEXT_RGB, font=font)


def write_orthogonal_slices(path: str, volume: np.ndarray, labels: np.ndarray | None = None,
                            **kwargs) -> Image.Image:
  """``draw_orthogonal_slices(volume, labels, **kwargs)`` saved as a PNG at ``path``
  (folders created); returns the image."""
  image = draw_orthogonal_slices(volume, labels, **kwargs)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  image.save(path, format="PNG")
  return image
