"""Attention visualisation for Swin models.

``attention_maps``: pure numpy functions for notebooks (collect the sown probabilities, stitch
them into image coordinates with the cyclic shift undone, image-level maps, rollout).
``plots``: matplotlib figures built on them. ``python -m swin_jax.visualize``: the command.
"""

from swin_jax.visualize.attention_maps import (BlockGeometry, collect_attention,
                                               dense_attention, find_backbone, merge_matrix,
                                               model_geometry, model_rollout, padding_mass,
                                               query_attention, received_attention,
                                               rollout_matrix, slot_tokens, stage_grids,
                                               stage_received_attention, stage_rollout,
                                               to_pixels)

__all__ = [
    "BlockGeometry", "collect_attention", "dense_attention", "find_backbone", "merge_matrix",
    "model_geometry", "model_rollout", "padding_mass", "query_attention", "received_attention",
    "rollout_matrix", "slot_tokens", "stage_grids", "stage_received_attention", "stage_rollout",
    "to_pixels",
]
