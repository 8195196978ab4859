"""PyTorch references of swin_jax models, for parity tests and ``python -m swin_jax.bench``.

They need the optional ``oracle`` extra (torch, timm): its modules import torch only when one
of their functions is called, so ``import swin_jax`` never needs it.
"""
