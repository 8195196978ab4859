"""Training system: config schema, optimizer, sharding, checkpoints, steps and loop.

For notebooks, the plain-function entry points (imported on first use, so
``import swin_jax.train`` stays cheap):

    from swin_jax.train import build_optimizer, lr_schedule, latest_run_params
    schedule = lr_schedule("cosine", 1e-3, total_updates=100, warmup=10)  # t -> lr
    tx = build_optimizer(schedule)       # clip + AdamW with the official no-decay mask
    model, params = latest_run_params("runs/demo")   # a training run's newest checkpoint

``optimizer``: ``lr_schedule``, ``build_optimizer``, ``weight_decay_mask``, ``DecayRule``,
``layer_decay_scales`` and the config path ``make_optimizer``; ``init_from``:
``latest_run_params``, ``latest_run_variables`` (with BatchNorm statistics), ``run_config``,
``load_initial``; ``loop``: the one training loop
(``swin_jax.main`` runs it).
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it.
_LAZY = {
    "DecayRule": "optimizer",
    "build_optimizer": "optimizer",
    "layer_decay_scales": "optimizer",
    "lr_schedule": "optimizer",
    "make_optimizer": "optimizer",
    "weight_decay_mask": "optimizer",
    "latest_run_params": "init_from",
    "latest_run_variables": "init_from",
    "run_config": "init_from",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
