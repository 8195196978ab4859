"""swin_jax: the Swin Transformer family in JAX/Flax.

    model = swin_jax.create_model("swin_tiny_patch4_window7_224")
    params = swin_jax.convert.load_torch_checkpoint("swin_tiny_patch4_window7_224.pth", model)
    logits = model.apply({"params": params}, images, train=False)   # images (B, H, W, 3)
"""

from swin_jax import convert
from swin_jax.models import SwinTransformer, create_model, list_models

__all__ = ["SwinTransformer", "convert", "create_model", "list_models"]
