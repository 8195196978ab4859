"""Parity with timm with the performance options on: ``scan_blocks`` (nn.scan over block
pairs, stacked params), every ``remat`` policy and ``attention_impl="dot_product"``
(``jax.nn.dot_product_attention``), V1 and V2, logits and gradients.

The options must not change the numbers: the same timm weights go through the converter
into the option-enabled model, and logits and every parameter/image gradient are compared
with torch autograd at the same tolerance as the plain model (tests/test_parity_timm.py).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import swin_jax  # noqa: E402
from swin_jax import convert  # noqa: E402

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


# XLA's CPU backend at optimisation level 0 (LLVM's; the HLO passes still run): the same
# program in about half the compile time, most of these tests' run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def torch_reference(version: int):
  """``(timm state dict, images, weights, (loss, param grads, image grad))`` of the seeded
  timm model: torch autograd's side of every option's check, computed once per version
  (the options change nothing on the timm side)."""
  if version == 1:
    timm_model, seed = oracle.timm_swin(TINY), 11
    oracle.randomize_(timm_model, seed)
  else:
    timm_model, seed = oracle.timm_swinv2(TINY), 14
    oracle.randomize_v2_(timm_model, seed, clamped_head=False)
  weights = np.random.default_rng(seed + 1).standard_normal((2, 10)).astype(np.float32)
  images = oracle.random_images(2, 64, 64, seed=seed + 2)
  return (oracle.state_dict_numpy(timm_model), images, weights,
          oracle.loss_and_grads(timm_model, images, weights))


def check_gradients_with_option(jax_model, version: int) -> None:
  """``test_parity_timm.check_gradients``: the loss ``sum(logits * weights)`` and its
  gradients (every parameter, by timm name, and the images) match torch autograd."""
  state_dict, images, weights, (ref_loss, ref_grads, ref_image_grad) = torch_reference(version)
  params = convert.load_torch_checkpoint(dict(state_dict), jax_model)

  def loss_fn(p, x):
    return jnp.sum(jax_model.apply({"params": p}, x, train=False) * weights)

  loss, (param_grads, image_grad) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)),
                                            compiler_options=FAST_COMPILE)(
      params, jnp.asarray(images))
  assert abs(float(loss) - ref_loss) <= v1.ATOL * max(1.0, abs(ref_loss))
  grads = convert.export_torch_state_dict(jax.device_get(param_grads), jax_model, layout="timm")
  oracle.assert_gradients_match(grads, ref_grads, image_grad, ref_image_grad, v1.ATOL)


@pytest.mark.parametrize("options", OPTIONS, ids=_id)
def test_v1_gradients_with_option(options):
  check_gradients_with_option(swin_jax.SwinTransformer(**TINY, **options), version=1)


@pytest.mark.parametrize("options", OPTIONS, ids=_id)
def test_v2_gradients_with_option(options):
  check_gradients_with_option(swin_jax.SwinTransformer(version=2, **TINY, **options), version=2)


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
