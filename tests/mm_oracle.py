"""OpenMMLab references for the dense backbone and UperNet: mmdet 3.3.0's ``SwinTransformer``
and mmsegmentation 1.2.2's ``UPerHead`` / ``FCNHead`` (pure PyTorch, float32, CPU).

Weights go from swin_jax to the references through swin_jax's exporter (official keys) and
then, for the backbone, mmdet's own official-key converter ``swin_converter`` (which also
re-orders the PatchMerging channels for mmdet's ``nn.Unfold``); every load is strict. So a
parity test checks the model and the exporter at once; ``load_torch_variables`` is checked by
reading the exported dict back.

The references are built by ``swin_jax.oracles.torch_upernet`` (shared with ``python -m
swin_jax.bench``); this module loads them and converts tensors. Tests give the swin_jax side
seeded random values (``random_variables.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

import mm_stubs  # noqa: F401  (before any mmdet / mmseg import)
from mmdet.models.backbones import swin as mmdet_swin  # noqa: E402
from swin_jax.oracles import torch_upernet  # noqa: E402
from swin_jax.oracles.torch_upernet import mmseg_heads  # noqa: E402,F401  (the builder)


def to_torch(sd: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}


def nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().cpu().numpy().transpose(0, 2, 3, 1)


def mmdet_backbone(model, official_sd: dict[str, np.ndarray]) -> torch.nn.Module:
  """mmdet's ``SwinTransformer`` shaped like the swin_jax ``model`` (``SwinTransformer``
  fields), strictly loaded from official backbone keys (without ``backbone.``) through
  ``swin_converter``; eval mode. The classifier's final ``norm`` is not part of it."""
  ref = torch_upernet.mmdet_swin(model)
  sd = {k: v for k, v in official_sd.items() if not k.startswith(("norm.", "head."))}
  converted = mmdet_swin.swin_converter(to_torch(sd))
  converted = {k.removeprefix("backbone."): v for k, v in converted.items()}
  ref.load_state_dict(converted, strict=True)
  ref.eval()  # mmdet's train() override returns None: no chaining
  return ref


def load_heads(decode: torch.nn.Module, aux: torch.nn.Module,
               official_sd: dict[str, np.ndarray]) -> None:
  """Strict loads of the ``decode_head.`` and ``auxiliary_head.`` entries of an official dict."""
  for head, prefix in ((decode, "decode_head."), (aux, "auxiliary_head.")):
    sd = {k[len(prefix):]: v for k, v in official_sd.items() if k.startswith(prefix)}
    head.load_state_dict(to_torch(sd), strict=True)


@torch.no_grad()
def head_logits(decode, aux, features_nhwc: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
  """mmseg heads on NHWC features -> NHWC ``(decode, aux)`` logits (numpy)."""
  feats = [nhwc_to_nchw(f) for f in features_nhwc]
  return nchw_to_nhwc(decode(feats)), nchw_to_nhwc(aux(feats))


@torch.no_grad()
def backbone_features(backbone, images_nhwc: np.ndarray) -> list[np.ndarray]:
  return [nchw_to_nhwc(f) for f in backbone(nhwc_to_nchw(images_nhwc))]


def upernet_reference(model, official_sd: dict[str, np.ndarray]):
  """``(backbone, decode_head, auxiliary_head)`` of an ``UperNet`` ``model``, strictly loaded
  from an official state dict (``backbone.``, ``decode_head.``, ``auxiliary_head.``)."""
  swin = model.backbone
  backbone = mmdet_backbone(swin, {k[len("backbone."):]: v for k, v in official_sd.items()
                                   if k.startswith("backbone.")})
  widths = [swin.embed_dim * 2**i for i in range(len(swin.depths))]
  decode, aux = mmseg_heads(widths, model.channels, model.aux_channels, model.num_classes,
                            model.pool_scales, model.dropout_ratio, model.aux_in_index)
  load_heads(decode, aux, official_sd)
  return backbone, decode, aux


@torch.no_grad()
def upernet_logits(reference, images_nhwc: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(logits at the image size, decode, aux)`` NHWC, as mmseg's ``EncoderDecoder`` infers:
  the decode logits resized bilinearly (align_corners False) to the input."""
  from mmseg.models.utils import resize  # pylint: disable=import-outside-toplevel
  backbone, decode, aux = reference
  images = nhwc_to_nchw(images_nhwc)
  feats = backbone(images)
  decode_logits, aux_logits = decode(feats), aux(feats)
  logits = resize(decode_logits, size=images.shape[2:], mode="bilinear", align_corners=False)
  return nchw_to_nhwc(logits), nchw_to_nhwc(decode_logits), nchw_to_nhwc(aux_logits)
