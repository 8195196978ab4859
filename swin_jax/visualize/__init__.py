"""Attention visualisation for Swin models.

``attention_maps``: pure numpy functions for notebooks (collect the sown probabilities, stitch
them into image coordinates with the cyclic shift undone, image-level maps, rollout).
``plots``: matplotlib figures built on them (``display_image``, ``plot_query_heads``,
``plot_block_maps``, ``plot_panels``; also importable from here, matplotlib being imported
only then). ``python -m swin_jax.visualize``: the command.

    logits, probs = collect_attention(model, params, images)  # images (B, H, W, 3)
    # probs: {(stage, block): (B, nW, heads, N, N)}, N tokens per window
    geometry = model_geometry(model, images.shape[1:3])[0, 1]  # stage 0, block 1
    heads = query_attention(probs[0, 1][0], geometry, (y, x))  # (heads, h, w), (y, x) a token
    pixels = to_pixels(heads, geometry.cell, images.shape[1:3])  # (heads, H, W)
    fig = plot_query_heads(display_image(images[0]), pixels, geometry, (y_px, x_px), "title")
"""

from __future__ import annotations

import importlib

from swin_jax.visualize.attention_maps import (BlockGeometry, collect_attention,
                                               dense_attention, find_backbone, merge_matrix,
                                               model_geometry, model_rollout, padding_mass,
                                               query_attention, received_attention,
                                               rollout_matrix, slot_tokens, stage_grids,
                                               stage_received_attention, stage_rollout,
                                               to_pixels)

# Figures: matplotlib is imported on first use.
_PLOTS = ("display_image", "plot_block_maps", "plot_panels", "plot_query_heads")

__all__ = [
    "BlockGeometry", "collect_attention", "dense_attention", "find_backbone", "merge_matrix",
    "model_geometry", "model_rollout", "padding_mass", "query_attention", "received_attention",
    "rollout_matrix", "slot_tokens", "stage_grids", "stage_received_attention", "stage_rollout",
    "to_pixels", *_PLOTS,
]


def __getattr__(name: str):
  if name not in _PLOTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.plots"), name)
