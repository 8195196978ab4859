"""Swin Transformer models (Flax Linen)."""

from swin_jax.models.nnformer import NnFormer
from swin_jax.models.registry import create_model, list_models, model_config
from swin_jax.models.swin import SwinTransformer
from swin_jax.models.swin_unet import SwinUnet
from swin_jax.models.upernet import UperNet

__all__ = ["NnFormer", "SwinTransformer", "SwinUnet", "UperNet", "create_model", "list_models",
           "model_config"]
