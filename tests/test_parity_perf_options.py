"""Parity with timm with the performance options on: ``scan_blocks`` (nn.scan over block
pairs, stacked params), every ``remat`` policy and ``attention_impl="dot_product"``
(``jax.nn.dot_product_attention``), V1 and V2, logits and gradients.

The options must not change the numbers: the same timm weights go through the converter
into the option-enabled model, and logits and every parameter/image gradient are compared
with torch autograd at the same tolerance as the plain model (tests/test_parity_timm.py).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import swin_jax  # noqa: E402

import torch_oracle as oracle  # noqa: E402
import test_parity_timm as v1  # noqa: E402
import test_parity_v2 as v2  # noqa: E402

# Every option combination the model offers, scan on and off.
OPTIONS = [
    dict(scan_blocks=True),
    dict(remat="full"),
    dict(remat="dots", scan_blocks=True),
    dict(remat="dots_no_batch", scan_blocks=True),
    dict(attention_impl="dot_product"),
    dict(attention_impl="dot_product", scan_blocks=True, remat="dots"),
]
TINY = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 4), num_heads=(2, 4),
            window_size=4, num_classes=10, drop_path_rate=0.0)


def _id(options: dict) -> str:
  return "-".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("options", OPTIONS, ids=_id)
def test_v1_gradients_with_option(options):
  jax_model = swin_jax.SwinTransformer(**TINY, **options)
  timm_model = oracle.timm_swin(TINY)
  params = v1.paired_models(jax_model, timm_model, seed=11)
  weights = np.random.default_rng(12).standard_normal((2, 10)).astype(np.float32)
  v1.check_gradients(jax_model, timm_model, params, oracle.random_images(2, 64, 64, seed=13),
                     weights)


@pytest.mark.parametrize("options", OPTIONS, ids=_id)
def test_v2_gradients_with_option(options):
  jax_model = swin_jax.SwinTransformer(version=2, **TINY, **options)
  timm_model = oracle.timm_swinv2(TINY)
  params = v2.paired_models(jax_model, timm_model, seed=14)
  weights = np.random.default_rng(15).standard_normal((2, 10)).astype(np.float32)
  v1.check_gradients(jax_model, timm_model, params, oracle.random_images(2, 64, 64, seed=16),
                     weights)


def test_swin_tiny_224_logits_scanned_and_rematerialised():
  name = "swin_tiny_patch4_window7_224"
  v1.check_logits(swin_jax.create_model(name, scan_blocks=True, remat="dots",
                                        attention_impl="dot_product"),
                  oracle.timm_swin(name), oracle.random_images(2, 224, 224, seed=17))


def test_swinv2_small_logits_scanned_at_a_padded_size():
  # 200x136: padded windows and odd merges inside the scanned stages.
  jax_model = v2.small_v2(img_size=(200, 136), window_size=8, scan_blocks=True,
                          remat="dots_no_batch", attention_impl="dot_product")
  timm_model = oracle.timm_swinv2(dict(v2.SMALL, img_size=(200, 136), window_size=8,
                                       strict_img_size=False))
  v2.check_logits(jax_model, timm_model, oracle.random_images(2, 200, 136, seed=18), seed=19)
