"""UperNet on a Swin backbone (Swin-Transformer-Semantic-Segmentation, mmseg's
``configs/_base_/models/upernet_swin.py``): ``images (B, H, W, 3) -> logits (B, H, W, K)``.

    model = swin_jax.create_model("upernet_swin_tiny_patch4_window7_512", num_classes=150)
    variables = model.init(rng, images)                     # {'params', 'batch_stats'}
    logits = model.apply(variables, images)                 # (B, H, W, K)
    decode, aux = model.apply(variables, images, method="head_logits")
    # train: (decode, aux), {'batch_stats': ...}, BatchNorm on the (global) batch
    (decode, aux), updates = model.apply(variables, images, train=True,
                                         method="head_logits", mutable=["batch_stats"],
                                         rngs={"dropout": rng})

Params: ``backbone/...`` (a ``SwinTransformer`` in ``dense_mode`` with the stage norms
``norm0..norm3``), ``decode_head/...`` (``seg_heads.UPerHead`` on the four stages) and
``auxiliary_head/...`` (``seg_heads.FCNHead`` on stage 3), as the official checkpoint's
``backbone.``, ``decode_head.`` and ``auxiliary_head.`` keys. BatchNorm statistics live in
the ``batch_stats`` collection; under ``jax.jit`` over a sharded global batch the train-mode
statistics are those of the global batch (the official SyncBN).

The official recipe's losses (not part of the model): pixel cross-entropy ignoring 255 on the
decode logits (weight 1.0) and on the auxiliary logits (weight 0.4), each resized bilinearly
(align_corners False) to the label size; see ``interpolate.resize_bilinear``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from swin_jax.models import interpolate
from swin_jax.models.seg_heads import FCNHead, UPerHead
from swin_jax.models.swin import SwinTransformer

Dtype = Any

# The official auxiliary loss weight (mmseg upernet_swin: auxiliary_head.loss_decode).
AUX_LOSS_WEIGHT = 0.4


class UperNet(nn.Module):
  """Swin backbone + ``UPerHead`` + auxiliary ``FCNHead`` (see the module docstring).

  ``backbone``: a ``SwinTransformer`` with ``feature_norm=True`` (and, for official
  checkpoints, ``dense_mode=True``); its ``features`` feed both heads.
  ``channels`` / ``aux_channels``: the heads' widths (512 / 256 officially);
  ``aux_in_index``: the stage the auxiliary head reads (2, stride 16).
  """
  backbone: SwinTransformer
  num_classes: int = 150
  channels: int = 512
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  aux_channels: int = 256
  aux_in_index: int = 2
  dropout_ratio: float = 0.1
  dtype: Dtype = jnp.float32

  def setup(self):
    self.decode_head = UPerHead(self.num_classes, self.channels, tuple(self.pool_scales),
                                self.dropout_ratio, self.dtype)
    self.auxiliary_head = FCNHead(self.num_classes, self.aux_in_index, self.aux_channels,
                                  dropout_ratio=self.dropout_ratio, dtype=self.dtype)

  def features(self, images: jnp.ndarray, train: bool = False) -> list[jnp.ndarray]:
    """The backbone's four normalised stage outputs, ``[(B, H/4, W/4, C) ... (B, H/32, W/32,
    8C)]``."""
    return self.backbone.features(images, train)

  def head_logits(self, images: jnp.ndarray,
                  train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(decode (B, H/4, W/4, K), aux (B, H/16, W/16, K))`` float32 logits, unresized."""
    feats = self.features(images, train)
    return self.decode_head(feats, train), self.auxiliary_head(feats, train)

  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``(B, H, W, 3) -> (B, H, W, K)``: the decode logits resized bilinearly to the input
    (mmseg's inference output before argmax)."""
    feats = self.features(images, train)
    logits = self.decode_head(feats, train)
    if self.is_initializing():
      self.auxiliary_head(feats, train)  # so that init creates the auxiliary head as well
    return interpolate.resize_bilinear(logits, images.shape[1:3])
