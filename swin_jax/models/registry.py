"""Named Swin V1 and V2 variants (timm's names), Swin-Unet, UperNet, the two-stage
detectors (Mask / Faster R-CNN), SimMIM and nnFormer, with the official hyper-parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from swin_jax.models.detection.rcnn import FasterRCNN, MaskRCNN
from swin_jax.models.nnformer import NnFormer
from swin_jax.models.simmim import SimMIM
from swin_jax.models.swin import SwinTransformer
from swin_jax.models.swin_unet import SwinUnet
from swin_jax.models.upernet import UperNet

# name -> constructor fields. Depths/heads/dims/windows/drop-path from the official configs
# (configs/swin/*.yaml); drop-path rates are those of the ImageNet-1K recipes.
_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(**_TINY, img_size=224, window_size=7,
                                         drop_path_rate=0.2),
    "swin_small_patch4_window7_224": dict(**_SMALL, img_size=224, window_size=7,
                                          drop_path_rate=0.3),
    "swin_base_patch4_window7_224": dict(**_BASE, img_size=224, window_size=7,
                                         drop_path_rate=0.5),
    "swin_base_patch4_window12_384": dict(**_BASE, img_size=384, window_size=12,
                                          drop_path_rate=0.5),
    # Swin-L was only trained through 22K pretraining; 0.2 is its 22K/22K->1K rate.
    "swin_large_patch4_window7_224": dict(**_LARGE, img_size=224, window_size=7,
                                          drop_path_rate=0.2),
    "swin_large_patch4_window12_384": dict(**_LARGE, img_size=384, window_size=12,
                                           drop_path_rate=0.2),
}

# Swin V2 (configs/swinv2/*.yaml; timm's names). 1K models: drop path T .2, S .3, B .5;
# 22K pretraining at 192/W12 and its 22K->1K fine-tunes: .2. The fine-tunes normalise the
# continuous position bias by the pretraining windows: 12, with stage 4 clamped to 6.
_V2 = dict(version=2)
_V2_PRETRAINED_W12 = dict(pretrained_window_sizes=(12, 12, 12, 6))
MODEL_CONFIGS.update({
    "swinv2_tiny_window8_256": dict(**_TINY, **_V2, img_size=256, window_size=8,
                                    drop_path_rate=0.2),
    "swinv2_tiny_window16_256": dict(**_TINY, **_V2, img_size=256, window_size=16,
                                     drop_path_rate=0.2),
    "swinv2_small_window8_256": dict(**_SMALL, **_V2, img_size=256, window_size=8,
                                     drop_path_rate=0.3),
    "swinv2_small_window16_256": dict(**_SMALL, **_V2, img_size=256, window_size=16,
                                      drop_path_rate=0.3),
    "swinv2_base_window8_256": dict(**_BASE, **_V2, img_size=256, window_size=8,
                                    drop_path_rate=0.5),
    "swinv2_base_window16_256": dict(**_BASE, **_V2, img_size=256, window_size=16,
                                     drop_path_rate=0.5),
    "swinv2_base_window12_192": dict(**_BASE, **_V2, img_size=192, window_size=12,
                                     num_classes=21841, drop_path_rate=0.2),
    "swinv2_base_window12to16_192to256": dict(**_BASE, **_V2, **_V2_PRETRAINED_W12,
                                              img_size=256, window_size=16,
                                              drop_path_rate=0.2),
    "swinv2_base_window12to24_192to384": dict(**_BASE, **_V2, **_V2_PRETRAINED_W12,
                                              img_size=384, window_size=24,
                                              drop_path_rate=0.2),
    "swinv2_large_window12_192": dict(**_LARGE, **_V2, img_size=192, window_size=12,
                                      num_classes=21841, drop_path_rate=0.2),
    "swinv2_large_window12to16_192to256": dict(**_LARGE, **_V2, **_V2_PRETRAINED_W12,
                                               img_size=256, window_size=16,
                                               drop_path_rate=0.2),
    "swinv2_large_window12to24_192to384": dict(**_LARGE, **_V2, **_V2_PRETRAINED_W12,
                                               img_size=384, window_size=24,
                                               drop_path_rate=0.2),
})

# Swin-Unet (HuCaoFighting/Swin-Unet, configs/swin_tiny_patch4_window7_224_lite.yaml):
# depths 2 per stage (the yaml's decoder depths are unused), 9 Synapse classes.
SWIN_UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "swin_unet_tiny_patch4_window7_224": dict(
        embed_dim=96, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), img_size=224,
        window_size=7, num_classes=9, drop_path_rate=0.2),
}
MODEL_CONFIGS.update(SWIN_UNET_CONFIGS)

# UperNet (Swin-Transformer-Semantic-Segmentation, configs/swin/upernet_swin_*_512x512_160k
# _ade20k.py): the dense-mode backbone with stage norms, drop path 0.3 for T, S and B, 150
# ADE20K classes. A config is flat: the UperNet fields (num_classes, channels, ...) go to the
# heads, all others to the backbone (see ``create_model``).
_UPERNET_BACKBONE = dict(img_size=512, window_size=7, drop_path_rate=0.3, dense_mode=True,
                         feature_norm=True)
UPERNET_CONFIGS: dict[str, dict[str, Any]] = {
    "upernet_swin_tiny_patch4_window7_512": dict(**_TINY, **_UPERNET_BACKBONE,
                                                 num_classes=150),
    "upernet_swin_small_patch4_window7_512": dict(**_SMALL, **_UPERNET_BACKBONE,
                                                  num_classes=150),
    "upernet_swin_base_patch4_window7_512": dict(**_BASE, **_UPERNET_BACKBONE,
                                                 num_classes=150),
}
MODEL_CONFIGS.update(UPERNET_CONFIGS)

# Mask / Faster R-CNN (Swin-Transformer-Object-Detection, configs/_base_/models/
# mask_rcnn_swin_fpn.py): the dense-mode backbone with stage norms, no absolute position
# embedding, 80 COCO classes. img_size is the test canvas (1333x800 padded to 32); with
# ape=False it fixes no shape (dense mode clamps no window), only the example image the
# converter traces. Drop path: the base config's 0.2 (the T and S 3x recipes); the T 1x
# recipe overrides 0.1. Swin-B was released only as Cascade Mask R-CNN, with 0.3.
# Head fields (num_classes, neck_channels, fc_channels, ...) go to the detector, the rest
# to the backbone, as for UperNet.
_DETECTION_BACKBONE = dict(img_size=(800, 1344), window_size=7, dense_mode=True,
                           feature_norm=True, ape=False, patch_norm=True)
MASK_RCNN_CONFIGS: dict[str, dict[str, Any]] = {
    "mask_rcnn_swin_tiny_patch4_window7_fpn": dict(**_TINY, **_DETECTION_BACKBONE,
                                                   drop_path_rate=0.2, num_classes=80),
    "mask_rcnn_swin_small_patch4_window7_fpn": dict(**_SMALL, **_DETECTION_BACKBONE,
                                                    drop_path_rate=0.2, num_classes=80),
    "mask_rcnn_swin_base_patch4_window7_fpn": dict(**_BASE, **_DETECTION_BACKBONE,
                                                   drop_path_rate=0.3, num_classes=80),
}
FASTER_RCNN_CONFIGS: dict[str, dict[str, Any]] = {
    name.replace("mask_rcnn", "faster_rcnn"): dict(config)
    for name, config in MASK_RCNN_CONFIGS.items()}
MODEL_CONFIGS.update(MASK_RCNN_CONFIGS)
MODEL_CONFIGS.update(FASTER_RCNN_CONFIGS)

# SimMIM pretraining (microsoft/SimMIM configs/swin_base__100ep, and Swin-Transformer
# configs/simmim for V2): 192 px, encoder with a mask token and no head, stride-32 decoder.
# Drop path: 0 for Swin-B (the 100 and 800 ep recipes), 0.1 for SwinV2-B/W12; Swin-T (not
# an official recipe, for small experiments) follows Swin-B's 0. The V2 recipe's target is
# normalised over 47 x 47 pixel neighbourhoods (MODEL.SIMMIM.NORM_TARGET).
_SIMMIM_ENCODER = dict(img_size=192, use_mask_token=True)
SIMMIM_CONFIGS: dict[str, dict[str, Any]] = {
    "simmim_swin_tiny_window6_192": dict(**_TINY, **_SIMMIM_ENCODER, window_size=6,
                                         drop_path_rate=0.0),
    "simmim_swin_base_window6_192": dict(**_BASE, **_SIMMIM_ENCODER, window_size=6,
                                         drop_path_rate=0.0),
    "simmim_swin_large_window12_192": dict(**_LARGE, **_SIMMIM_ENCODER, window_size=12,
                                           drop_path_rate=0.0),
    "simmim_swinv2_base_window12_192": dict(**_BASE, **_V2, **_SIMMIM_ENCODER,
                                            window_size=12, drop_path_rate=0.1,
                                            norm_target_patch_size=47),
}
MODEL_CONFIGS.update(SIMMIM_CONFIGS)

# nnFormer (282857341/nnFormer: the trainers' networks, run/default_configuration.py's
# crops): depths 2 per stage and drop path 0.2 throughout. Synapse: 13 organs + background,
# deep supervision; ACDC: 3 cardiac structures, per-axis windows over 14-slice crops; Tumor
# (MSD BraTS): 4 MR modalities, 3 tumour regions.
_NNFORMER = dict(depths=(2, 2, 2, 2), drop_path_rate=0.2)
NNFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "nnformer_synapse": dict(**_NNFORMER, variant="synapse", crop_size=(64, 128, 128),
                             in_channels=1, num_classes=14, embed_dim=192,
                             num_heads=(6, 12, 24, 48), patch_size=(2, 4, 4),
                             window_size=(4, 4, 8, 4),
                             deep_supervision=True),
    "nnformer_acdc": dict(**_NNFORMER, variant="acdc", crop_size=(14, 160, 160),
                          in_channels=1, num_classes=4, embed_dim=96, num_heads=(3, 6, 12, 24),
                          patch_size=(1, 4, 4),
                          window_size=((3, 5, 5), (3, 5, 5), (7, 10, 10), (3, 5, 5)),
                          deep_supervision=False),
    "nnformer_tumor": dict(**_NNFORMER, variant="tumor", crop_size=(128, 128, 128),
                           in_channels=4, num_classes=4, embed_dim=96, num_heads=(3, 6, 12, 24),
                           patch_size=(4, 4, 4), window_size=(4, 4, 8, 4),
                           deep_supervision=False),
}
MODEL_CONFIGS.update(NNFORMER_CONFIGS)

# Task models: a Swin backbone field plus head fields, one flat override namespace.
_TASK_MODELS = (UperNet, MaskRCNN, FasterRCNN, SimMIM)
# The dataclass field that holds the Swin (SimMIM's official name is ``encoder``).
_BACKBONE_FIELD = {SimMIM: "encoder"}

ALIASES = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "swin_l": "swin_large_patch4_window7_224",
}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def list_models() -> list[str]:
  """All model names ``create_model`` accepts (aliases last)."""
  return sorted(MODEL_CONFIGS) + sorted(ALIASES)


def resolve_name(name: str) -> str:
  """Alias -> full timm-style name; raises a ValueError listing the choices."""
  name = ALIASES.get(name, name)
  if name not in MODEL_CONFIGS:
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
  return name


def model_class(name: str) -> type:
  """The Flax module class that ``create_model(name)`` builds."""
  name = resolve_name(name)
  if name in SWIN_UNET_CONFIGS:
    return SwinUnet
  if name in UPERNET_CONFIGS:
    return UperNet
  if name in MASK_RCNN_CONFIGS:
    return MaskRCNN
  if name in FASTER_RCNN_CONFIGS:
    return FasterRCNN
  if name in SIMMIM_CONFIGS:
    return SimMIM
  if name in NNFORMER_CONFIGS:
    return NnFormer
  return SwinTransformer


def model_classes() -> list[type]:
  """Every model class in the registry (their fields are the possible overrides)."""
  return [SwinTransformer, SwinUnet, UperNet, MaskRCNN, FasterRCNN, SimMIM, NnFormer]


def constructor_fields(cls: type) -> dict[str, Any]:
  """``{field name: default}`` of a Flax module class, without Flax's own fields and without
  required fields (a task model's ``backbone``, which is built, not overridden)."""
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}


def override_fields(name: str) -> set[str]:
  """The fields a config may set for ``name``: its class's, and for a model holding a Swin
  backbone, the backbone's as well (one flat namespace)."""
  fields = set(constructor_fields(model_class(name)))
  if model_class(name) in _TASK_MODELS:
    fields |= set(constructor_fields(SwinTransformer))
  return fields


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
  """The constructor fields of ``name`` with ``overrides`` applied (validated by name).

  An override of ``None`` means "the model's own value" (how a config leaves a field unset).
  """
  config = dict(MODEL_CONFIGS[resolve_name(name)])
  overrides = {k: v for k, v in overrides.items() if v is not None}
  fields = override_fields(name)
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown override(s) {unknown} for {name}; valid fields: {sorted(fields)}")
  config.update(overrides)
  if isinstance(config.get("dtype"), str):
    if config["dtype"] not in _DTYPES:
      raise ValueError(f"dtype {config['dtype']!r} not one of {sorted(_DTYPES)}")
    config["dtype"] = _DTYPES[config["dtype"]]
  return config


def create_model(name: str, **overrides: Any) -> nn.Module:
  """A Flax Linen ``SwinTransformer`` (or ``SwinUnet``, ``UperNet``, ``MaskRCNN``,
  ``FasterRCNN``, ``SimMIM``, ``NnFormer``) for ``name`` (see ``list_models()``).

  Overrides are any constructor field, e.g. ``num_classes=21841``, ``img_size=384``,
  ``window_size=12``, ``drop_path_rate=0.1``, ``dtype='bfloat16'``, ``feature_norm=True``,
  ``pretrained_window_sizes=(8, 8, 8, 8)`` (V2). For UperNet and the detectors, head fields
  (``num_classes``, ``channels``, ``neck_channels``, ``fc_channels``, ...) go to the heads and
  the others to the Swin backbone (``dtype`` to both).
  """
  config = model_config(name, **overrides)
  cls = model_class(name)
  if cls in _TASK_MODELS:
    return _task_model(cls, config)
  return cls(**config)



def create_model_from_json(name: str, overrides: dict[str, Any]) -> nn.Module:
  """``create_model`` with overrides read back from JSON (a run's ``config.json``, a params
  dir's ``model.json``), whose lists are turned back into the tuples the fields hold."""
  return create_model(name, **{k: tuple(v) if isinstance(v, list) else v
                               for k, v in overrides.items()})

def _task_model(cls: type, config: dict[str, Any]) -> nn.Module:
  """A flat task-model config -> ``cls(backbone=SwinTransformer(...), heads...)`` (SimMIM:
  ``encoder=``)."""
  head_fields = set(constructor_fields(cls))
  head = {k: v for k, v in config.items() if k in head_fields}
  swin = {k: v for k, v in config.items() if k not in head_fields or k == "dtype"}
  # The backbone only gives features: no classifier (nor its final norm) is built.
  backbone = SwinTransformer(**swin, num_classes=0)
  return cls(**{_BACKBONE_FIELD.get(cls, "backbone"): backbone}, **head)
