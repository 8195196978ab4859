"""Numerical parity of Swin V2 (``SwinTransformer(version=2)``) with timm's
``SwinTransformerV2`` (PyTorch), float32 on CPU.

As in ``test_parity_timm.py``: every timm parameter gets seeded random values
(``torch_oracle.randomize_v2_``: the zero-initialised post-norms, ``q_bias``/``v_bias``,
the CPB MLP and the temperatures ``logit_scale``), the same weights go into swin_jax
through ``swin_jax.convert`` and the outputs are compared: max |diff| <= 1e-4 on logits;
gradients ``1e-4 * max(1, max |reference|)``. The registered models also put one head per
block above the log(100) temperature clamp; the small configs do not, since a temperature
of 100 with head_dim 8-16 makes float32 itself differ by about 1e-4 (see randomize_v2_).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import jax  # noqa: E402

import swin_jax  # noqa: E402
from swin_jax import convert  # noqa: E402
from swin_jax.convert import keys as keys_lib  # noqa: E402

import torch_oracle as oracle  # noqa: E402
from test_parity_timm import (check_gradients, compare_logits, max_abs_diff)  # noqa: E402

# A small four-stage V2 config (every code path of the big ones, a fraction of the cost).
SMALL = dict(patch_size=4, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4),
             num_classes=10, drop_path_rate=0.0)


def small_v2(**kw) -> swin_jax.SwinTransformer:
  return swin_jax.SwinTransformer(version=2, **{**SMALL, **kw})


def paired_models(jax_model, timm_model, seed: int, clamped_head: bool = False):
  """Randomises ``timm_model`` and loads its parameters into ``jax_model``: -> params."""
  oracle.randomize_v2_(timm_model, seed, clamped_head=clamped_head)
  return convert.load_torch_checkpoint(oracle.state_dict_numpy(timm_model), jax_model)


def check_logits(jax_model, timm_model, images: np.ndarray, params=None, seed: int = 0,
                 clamped_head: bool = False):
  if params is None:
    params = paired_models(jax_model, timm_model, seed, clamped_head)
  return compare_logits(jax_model, params, timm_model, images)


def check_buffers(jax_model, params, timm_model) -> None:
  """``export_torch_state_dict(include_buffers=True)`` writes exactly timm's buffers
  (``relative_coords_table``, ``relative_position_index``, ``attn_mask``; timm's ``k_bias``
  is a constant zero, not an official buffer) with timm's values."""
  exported = convert.export_torch_state_dict(params, jax_model, include_buffers=True)
  exported_buffers = {k: v for k, v in exported.items() if keys_lib.is_buffer(k)}
  timm_buffers = {keys_lib.timm_to_official_key(name): buf.numpy()
                  for name, buf in timm_model.named_buffers() if not name.endswith("k_bias")}
  assert set(exported_buffers) == set(timm_buffers), sorted(
      set(exported_buffers) ^ set(timm_buffers))
  for name, ref in timm_buffers.items():
    value = exported_buffers[name]
    assert value.shape == ref.shape and value.dtype == ref.dtype, (name, value.shape, ref.shape)
    if name.endswith("relative_coords_table"):  # float32 log2 of numpy vs torch: ~1 ulp
      np.testing.assert_allclose(value, ref, rtol=1e-6, atol=1e-7, err_msg=name)
    else:
      np.testing.assert_array_equal(value, ref, err_msg=name)


# ----------------------------------------------------------------------------------------
# Registered models
# ----------------------------------------------------------------------------------------


def test_swinv2_tiny_window8_256_logits():
  # Window 8 at 256: stage maps 64, 32, 16, 8; stage 4 is one window, so unshifted.
  name = "swinv2_tiny_window8_256"
  check_logits(swin_jax.create_model(name), oracle.timm_swinv2(name),
               oracle.random_images(2, 256, 256, seed=1), seed=0, clamped_head=True)


def test_swinv2_tiny_window16_256_logits():
  # Window 16: stage 3 (16x16) is one unshifted window, stage 4 clamps to 8.
  name = "swinv2_tiny_window16_256"
  check_logits(swin_jax.create_model(name), oracle.timm_swinv2(name),
               oracle.random_images(1, 256, 256, seed=2), seed=1, clamped_head=True)


@pytest.mark.slow
def test_swinv2_base_window12to16_192to256_logits():
  # pretrained_window_sizes (12, 12, 12, 6): CPB coordinates / 11 in stages 1-3, / 5 in 4.
  name = "swinv2_base_window12to16_192to256"
  jax_model = swin_jax.create_model(name)
  assert tuple(jax_model.pretrained_window_sizes) == (12, 12, 12, 6)
  check_logits(jax_model, oracle.timm_swinv2(name),
               oracle.random_images(1, 256, 256, seed=3), seed=2, clamped_head=True)


# ----------------------------------------------------------------------------------------
# Window transfer, other sizes
# ----------------------------------------------------------------------------------------


def test_window8_weights_in_a_window16_model_with_pretrained_window_8():
  """V2 params do not depend on the window: W8 weights load as they are into a W16 model,
  whose ``pretrained_window_sizes`` rescales the CPB coordinates as timm does."""
  # At 128 px the maps are 32, 16, 8, 4: W16 attends 16x16 windows in stages 1-2 (W8 had
  # 8x8), stage 3 is one 8x8 window either way and stage 4 clamps to 4 in both models.
  pretrained = (8, 8, 8, 4)
  timm_w8 = oracle.randomize_v2_(oracle.timm_swinv2(dict(SMALL, img_size=128, window_size=8)),
                                 seed=3, clamped_head=False)
  timm_w16 = oracle.timm_swinv2(dict(SMALL, img_size=128, window_size=16,
                                     pretrained_window_sizes=pretrained))
  timm_w16.load_state_dict(timm_w8.state_dict(), strict=True)
  jax_w16 = small_v2(img_size=128, window_size=16, pretrained_window_sizes=pretrained)
  params = convert.load_torch_checkpoint(oracle.state_dict_numpy(timm_w8), jax_w16)

  images = oracle.random_images(2, 128, 128, seed=4)
  # Not vacuous: the transferred model is a different function from the W8 one.
  assert max_abs_diff(oracle.logits(timm_w16, images), oracle.logits(timm_w8, images)) > 1e-2
  check_logits(jax_w16, timm_w16, images, params=params)
  check_buffers(jax_w16, params, timm_w16)


@pytest.mark.parametrize("img_size, run_size", [
    # Maps 50x34, 25x17, 13x9, 7x5: padded to the window 8 after the roll in stages 1-3,
    # stage 4 clamps to a 7x5 window.
    ((200, 136), (200, 136)),
    # Built at 256 (window 8 everywhere, stage 4 unshifted), run at 200x136.
    ((256, 256), (200, 136)),
])
def test_non_window_multiple_size_logits(img_size, run_size):
  """Sizes whose maps are not window multiples (timm ``strict_img_size=False``): V2 pads
  after the cyclic shift exactly like V1 (timm #2438), and so do we."""
  jax_model = small_v2(img_size=img_size, window_size=8)
  timm_model = oracle.timm_swinv2(dict(SMALL, img_size=img_size, window_size=8,
                                       strict_img_size=False))
  check_logits(jax_model, timm_model, oracle.random_images(2, *run_size, seed=5), seed=4)


# ----------------------------------------------------------------------------------------
# Gradients, conversion
# ----------------------------------------------------------------------------------------


def test_gradients_tiny():
  """d(sum(logits * w))/d(every parameter) and d/d(images) match torch autograd, the V2
  params (q_bias, v_bias, logit_scale, cpb_mlp) included. (The clamp's zero gradient is
  checked in test_model.py: at temperature 100 float32 gradients are ill-conditioned.)"""
  cfg = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
             window_size=4, num_classes=10, drop_path_rate=0.0)
  jax_model = swin_jax.SwinTransformer(version=2, **cfg)
  timm_model = oracle.timm_swinv2(cfg)
  params = paired_models(jax_model, timm_model, seed=5)
  images = oracle.random_images(2, 64, 64, seed=6)
  weights = np.random.default_rng(7).standard_normal((2, 10)).astype(np.float32)

  ref_grads = check_gradients(jax_model, timm_model, params, images, weights)
  for suffix in ("q_bias", "v_bias", "logit_scale", "cpb_mlp.0.weight", "cpb_mlp.0.bias",
                 "cpb_mlp.2.weight"):
    assert any(name.endswith(suffix) for name in ref_grads), suffix


def test_round_trip_and_buffers():
  """timm V2 state dict -> params -> state dict is exact, in both layouts; the official
  export's buffers are timm's; buffers in the input are dropped on load."""
  timm_model = oracle.randomize_v2_(
      oracle.timm_swinv2(dict(SMALL, img_size=128, window_size=8)), seed=6, clamped_head=True)
  jax_model = small_v2(img_size=128, window_size=8)
  sd = oracle.state_dict_numpy(timm_model)
  params = convert.load_torch_checkpoint(sd, jax_model)

  back = convert.export_torch_state_dict(params, jax_model, layout="timm")
  assert set(back) == set(sd), sorted(set(back) ^ set(sd))
  for name, value in sd.items():
    assert back[name].shape == value.shape, name
    np.testing.assert_array_equal(back[name], value, err_msg=name)
  assert sd["layers.0.blocks.0.attn.logit_scale"].shape == (2, 1, 1)
  assert sd["layers.1.downsample.norm.weight"].shape == (64,)  # V2: LayerNorm(2C)

  official = convert.export_torch_state_dict(params, jax_model, include_buffers=True)
  again = convert.load_torch_checkpoint(official, jax_model)
  for path, value in jax.tree_util.tree_leaves_with_path(params):
    other = again
    for key in path:
      other = other[key.key]
    np.testing.assert_array_equal(other, value, err_msg=str(path))
  check_buffers(jax_model, params, timm_model)
