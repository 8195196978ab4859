"""Lets OpenMMLab's pure-PyTorch modules import under mmcv-lite: importing this module
installs ``swin_jax.oracles.mm_stubs``'s stand-in for mmcv's compiled extension (see there).
Import it before any ``mmseg`` / ``mmdet`` import."""

from swin_jax.oracles.mm_stubs import EXTENSION, install  # noqa: F401

install()
