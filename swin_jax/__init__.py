"""swin_jax: the Swin Transformer family in JAX/Flax.

    model = swin_jax.create_model("swin_tiny_patch4_window7_224")
    params = swin_jax.convert.load_torch_checkpoint("swin_tiny_patch4_window7_224.pth", model)
    logits = model.apply({"params": params}, images, train=False)   # images (B, H, W, 3)

Where a notebook finds things (notebooks/tour.ipynb walks through them):

  swin_jax.create_model, list_models      the model registry (``swin_jax.models.registry``)
  swin_jax.window                         window ops and masks as pure functions
                                          (``swin_jax.models.window``)
  swin_jax.convert                        PyTorch state dicts <-> params, both ways
  swin_jax.visualize                      attention maps (numpy) and their figures
  swin_jax.train                          ``lr_schedule``, ``build_optimizer``,
                                          ``latest_run_params`` (a run's checkpoint)
  swin_jax.tasks                          the ``Task`` interface of the training loop

``visualize``, ``train`` and ``tasks`` are imported on first use, so ``import swin_jax``
stays cheap.
"""

from __future__ import annotations

import importlib

from swin_jax import convert
from swin_jax.models import SwinTransformer, create_model, list_models
from swin_jax.models import window

_LAZY_SUBMODULES = ("tasks", "train", "visualize")

__all__ = ["SwinTransformer", "convert", "create_model", "list_models", "window",
           *_LAZY_SUBMODULES]


def __getattr__(name: str):
  if name not in _LAZY_SUBMODULES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return importlib.import_module(f"{__name__}.{name}")
