"""Swin Transformer models (Flax Linen)."""

from swin_jax.models.registry import create_model, list_models, model_config
from swin_jax.models.swin import SwinTransformer

__all__ = ["SwinTransformer", "create_model", "list_models", "model_config"]
