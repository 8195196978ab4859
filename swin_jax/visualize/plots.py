"""Matplotlib figures of Swin attention: figures are returned, nothing is shown.

The figures are pyplot-free ``matplotlib.figure.Figure`` objects, so importing this module
leaves matplotlib's backend alone: in a notebook with the inline backend, a figure left as a
cell's value (or passed to ``display``) is drawn; ``save`` writes a PNG anywhere.

Every figure is a grid of square panels of ``PANEL_INCHES`` at ``DPI`` plus a header strip
of ``HEADER_INCHES`` for the title, saved without tight cropping, so a figure of ``rows x cols``
panels is exactly ``cols * PANEL_PX`` by ``rows * PANEL_PX + HEADER_PX`` pixels
(``figure_size_px``).
"""

from __future__ import annotations

import io
import textwrap
from typing import Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from swin_jax.data import images as images_lib
from swin_jax.visualize.attention_maps import BlockGeometry

PANEL_INCHES = 2.2
HEADER_INCHES = 0.7
DPI = 100
PANEL_PX = int(round(PANEL_INCHES * DPI))
HEADER_PX = int(round(HEADER_INCHES * DPI))
CMAP = "inferno"


def figure_size_px(rows: int, cols: int) -> tuple[int, int]:
  """``(width, height)`` in pixels of a saved figure of ``rows x cols`` panels."""
  return cols * PANEL_PX, rows * PANEL_PX + HEADER_PX


def display_image(pixels: np.ndarray) -> np.ndarray:
  """ImageNet-normalised ``(H, W, 3)`` float32 -> displayable RGB in ``[0, 1]``."""
  return np.clip(pixels * images_lib.IMAGENET_STD + images_lib.IMAGENET_MEAN, 0.0, 1.0)


def _figure(rows: int, cols: int, title: str):
  fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + HEADER_INCHES), dpi=DPI)
  top = rows * PANEL_INCHES / (rows * PANEL_INCHES + HEADER_INCHES)
  grid = fig.add_gridspec(rows, cols, left=0.01, right=0.99, bottom=0.01, top=top - 0.01,
                          wspace=0.05, hspace=0.3)
  axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(cols)] for r in range(rows)])
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  # Wrapped to the figure's width: ~11 characters per inch at 9 pt, ~14 at 7 pt.
  for fontsize, per_inch in ((9, 11), (7, 14)):
    width_chars = max(20, int(cols * PANEL_INCHES * per_inch))
    wrapped = "\n".join(textwrap.fill(line, width_chars) for line in title.split("\n"))
    if wrapped.count("\n") < 2:
      break
  fig.suptitle(wrapped, fontsize=fontsize,
               y=1 - 0.05 * HEADER_INCHES / (rows * PANEL_INCHES + HEADER_INCHES))
  return fig, axes


def overlay(ax, image: np.ndarray, heat: np.ndarray | None, alpha: float = 0.65,
            from_min: bool = False) -> None:
  """The (greyed) image with ``heat`` ``(H, W)`` on top, colours from 0 (or, with
  ``from_min``, the map's minimum) to the map's maximum."""
  if heat is None:
    ax.imshow(image, interpolation="nearest")
    return
  ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  low, top = (float(heat.min()) if from_min else 0.0), float(heat.max())
  ax.imshow(heat, cmap=CMAP, vmin=low, vmax=top if top > low else low + 1.0, alpha=alpha,
            interpolation="nearest")


def draw_window_grid(ax, geometry: BlockGeometry, image_hw: Sequence[int],
                     color: str = "cyan") -> None:
  """The block's window borders in image coordinates (shift undone).

  A window starting at shifted row ``k * wh`` starts at original row ``(k * wh + sh) % H``;
  windows that wrap around the border are split by the image edge itself.
  """
  (h, w), (wh, ww), (sh, sw), cell = (geometry.grid, geometry.window, geometry.shift,
                                      geometry.cell)
  for k in range(0, h, wh):
    y = (k + sh) % h * cell - 0.5
    if 0 < y + 0.5 < image_hw[0]:
      ax.axhline(y, color=color, lw=0.7, alpha=0.8)
  for k in range(0, w, ww):
    x = (k + sw) % w * cell - 0.5
    if 0 < x + 0.5 < image_hw[1]:
      ax.axvline(x, color=color, lw=0.7, alpha=0.8)


def _mark(ax, query_px: Sequence[int]) -> None:
  ax.plot([query_px[1]], [query_px[0]], marker="+", color="lime", markersize=10, mew=2)


def block_label(key: tuple[int, int], geometry: BlockGeometry) -> str:
  kind = "SW-MSA" if any(geometry.shift) else "W-MSA"
  shift = f" shift {geometry.shift[0]}" if any(geometry.shift) else ""
  return f"stage {key[0]} block {key[1]}: {kind}{shift}"


def plot_query_heads(image: np.ndarray, head_maps: np.ndarray, geometry: BlockGeometry,
                     query_px: Sequence[int], title: str,
                     head_ids: Sequence[int] | None = None):
  """Image + window grid + query, then one overlay per head: ``1 x (1 + heads)`` panels.

  ``image``: displayable ``(H, W, 3)``; ``head_maps``: ``(heads, H, W)`` pixel maps of where
  the query looked (``query_attention`` -> ``to_pixels``).
  """
  head_ids = range(len(head_maps)) if head_ids is None else head_ids
  fig, axes = _figure(1, 1 + len(head_maps), title)
  image_hw = image.shape[:2]
  overlay(axes[0, 0], image, None)
  draw_window_grid(axes[0, 0], geometry, image_hw)
  _mark(axes[0, 0], query_px)
  axes[0, 0].set_title("input, windows, query", fontsize=8)
  for ax, head, heat in zip(axes[0, 1:], head_ids, head_maps):
    overlay(ax, image, heat)
    draw_window_grid(ax, geometry, image_hw)
    _mark(ax, query_px)
    ax.set_title(f"head {head} (max {heat.max():.2f})", fontsize=8)
  return fig


def plot_block_maps(image: np.ndarray, maps: Mapping[tuple[int, int], np.ndarray],
                    geometries: Mapping[tuple[int, int], BlockGeometry], title: str):
  """Image-level maps of every block: ``stages x max(depth)`` panels (unused ones blank).

  ``maps``: ``{(stage, block): (H, W)}`` pixel maps (e.g. received attention, head mean,
  times the token count so that 1 = uniform); colours run from each map's minimum to its
  maximum, both printed in the panel title.
  """
  stages = 1 + max(s for s, _ in maps)
  cols = 1 + max(b for _, b in maps)
  fig, axes = _figure(stages, cols, title)
  for ax in axes.ravel():
    ax.axis("off")
  for (stage, block), heat in maps.items():
    ax = axes[stage, block]
    ax.axis("on")
    overlay(ax, image, heat, from_min=True)
    draw_window_grid(ax, geometries[stage, block], image.shape[:2])
    ax.set_title(f"{block_label((stage, block), geometries[stage, block])}\n"
                 f"{heat.min():.2f} .. {heat.max():.2f}", fontsize=7)
  return fig


def plot_panels(image: np.ndarray, panels: Sequence[tuple[str, np.ndarray | None]], title: str,
                query_px: Sequence[int] | None = None):
  """A row of overlays ``[(panel title, (H, W) pixel map or None for the plain image)]``."""
  fig, axes = _figure(1, len(panels), title)
  for ax, (name, heat) in zip(axes[0], panels):
    overlay(ax, image, heat)
    if query_px is not None and heat is not None and "query" in name:
      _mark(ax, query_px)
    ax.set_title(name, fontsize=8)
  return fig


def save(fig, path: str) -> str:
  """Saves a PNG at ``DPI`` without tight cropping (so sizes follow ``figure_size_px``),
  quantised to a 128-colour palette (a few times smaller, no visible change)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=DPI, format="png")
  buffer.seek(0)
  with Image.open(buffer) as image:
    image.convert("RGB").quantize(128).save(path, optimize=True)
  return path
