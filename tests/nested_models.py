"""A task-shaped model for tests: a Swin backbone nested at ``backbone/`` under a head.

Dense task models (UperNet, detectors) hold their Swin as the ``backbone`` field, so their
params are ``{'backbone': {...Swin...}, <head params>}``; this is the smallest such model.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from swin_jax.models import registry
from swin_jax.models.swin import SwinTransformer

# 3 stages at 64x64 (16, 8, 4 tokens), window 4; even depths so scan_blocks works.
TINY_BACKBONE = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 2),
                     num_heads=(1, 2, 4), window_size=4, num_classes=0, feature_norm=True,
                     drop_path_rate=0.1)


class SwinWithHead(nn.Module):
  """``(B, H, W, 3) -> (B, num_classes)``: a linear head on the mean of each stage feature."""
  backbone: SwinTransformer
  num_classes: int = 10

  @nn.compact
  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    features = self.backbone.features(images, train)
    pooled = jnp.concatenate([f.mean(axis=(1, 2)) for f in features], axis=-1)
    return nn.Dense(self.num_classes, name="head")(pooled)


def tiny_nested_model(**backbone_overrides) -> SwinWithHead:
  backbone = registry.create_model("swin_t", **{**TINY_BACKBONE, **backbone_overrides})
  return SwinWithHead(backbone=backbone)
