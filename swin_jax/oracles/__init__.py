"""PyTorch references of swin_jax models, for parity tests and ``python -m swin_jax.bench``.

They need the optional ``oracle`` extra (torch, timm): its modules import torch only when one
of their functions is called, so ``import swin_jax`` never needs it.
"""

import importlib
from typing import Any


def import_oracle_modules(reference: str, *modules: str) -> tuple[Any, ...]:
  """``modules`` imported (e.g. ``'torch'``, ``'timm.layers'``), or an ImportError saying
  that ``reference`` needs the ``oracle`` extra."""
  try:
    return tuple(importlib.import_module(name) for name in modules)
  except ImportError as e:
    raise ImportError(f"{reference} needs torch and timm: pip install 'swin_jax[oracle]'") from e
