"""Numerical parity with timm's Swin Transformer (PyTorch), float32 on CPU.

Every test builds a timm model, fills EVERY parameter with seeded random values
(``torch_oracle.randomize_``: no zero biases or unit norms for a mis-mapped tensor to hide
behind), loads the same weights into swin_jax through ``swin_jax.convert`` and compares.
Tolerance: max |diff| <= 1e-4 on logits (absolute; the logits are O(1), checked below).
Feature maps and gradients use ``1e-4 * max(1, max |reference|)`` per tensor, since their
magnitudes are not normalised.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import swin_jax  # noqa: E402
from swin_jax import convert  # noqa: E402

import torch_oracle as oracle  # noqa: E402

ATOL = 1e-4

# A small four-stage config (every code path of the big ones, a fraction of the cost).
SMALL = dict(patch_size=4, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4),
             window_size=7, num_classes=10, drop_path_rate=0.0)


def max_abs_diff(a, b) -> float:
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def assert_logits_meaningful(logits: np.ndarray) -> None:
  """The random weights must give O(1), finite logits, so 1e-4 is a real test."""
  assert np.all(np.isfinite(logits))
  assert 0.1 < float(np.std(logits)) < 100.0, float(np.std(logits))


def jax_logits(model, params, images: np.ndarray) -> np.ndarray:
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  return np.asarray(fn(params, jnp.asarray(images)))


def paired_models(jax_model, timm_model, seed: int):
  """Randomises ``timm_model`` and loads its parameters into ``jax_model``: -> params."""
  oracle.randomize_(timm_model, seed)
  return convert.load_torch_checkpoint(oracle.state_dict_numpy(timm_model), jax_model)


def check_logits(jax_model, timm_model, images: np.ndarray, seed: int = 0) -> float:
  return compare_logits(jax_model, paired_models(jax_model, timm_model, seed), timm_model,
                        images)


def compare_logits(jax_model, params, timm_model, images: np.ndarray) -> float:
  """Asserts swin_jax's logits equal timm's within ATOL (and are meaningful); -> max diff."""
  ref = oracle.logits(timm_model, images)
  assert_logits_meaningful(ref)
  out = jax_logits(jax_model, params, images)
  diff = max_abs_diff(out, ref)
  print(f"logits: max |diff| = {diff:.3g} (std of logits {np.std(ref):.3g})")
  assert diff <= ATOL, f"max |logits diff| = {diff:.3g} > {ATOL}"
  return diff


def test_swin_tiny_224_logits():
  name = "swin_tiny_patch4_window7_224"
  check_logits(swin_jax.create_model(name), oracle.timm_swin(name),
               oracle.random_images(2, 224, 224, seed=1))


@pytest.mark.slow
def test_swin_base_window12_384_logits():
  # Window 12: stage 4's 12x12 map is one window, so its odd blocks are unshifted.
  name = "swin_base_patch4_window12_384"
  check_logits(swin_jax.create_model(name), oracle.timm_swin(name),
               oracle.random_images(1, 384, 384, seed=2))


@pytest.mark.parametrize("img_size", [
    # Patch grids 50x34, 25x17, 13x9, 7x5: odd maps before every merge, no stage a multiple
    # of the window; the last stage's window clamps to 7x5 (a non-square bias table).
    (200, 136),
    # Square: 50, 25, 13, 7. The last stage's window is 7x7, a same-shaped table either way,
    # so a wrong clamp shows up in the numbers rather than as a shape error.
    (200, 200),
])
def test_non_window_multiple_img_size_logits(img_size):
  """Built and run at a size whose maps are not window multiples (timm's
  ``strict_img_size=False``): the window clamp uses the padded (ceil-halved) map sizes."""
  jax_model = swin_jax.SwinTransformer(img_size=img_size, **SMALL)
  timm_model = oracle.timm_swin(dict(SMALL, img_size=img_size, strict_img_size=False))
  check_logits(jax_model, timm_model, oracle.random_images(2, *img_size, seed=3))


@pytest.mark.parametrize("img_size, run_size", [
    ((224, 224), (200, 136)),  # maps 50x34 .. 7x5: padded to the window at 3 of 4 stages
    ((200, 136), (168, 116)),  # smaller than built: 42x29 .. 6x4 under a 7x5 last window
])
def test_runtime_size_not_window_multiple_logits(img_size, run_size):
  jax_model = swin_jax.SwinTransformer(img_size=img_size, **SMALL)
  timm_model = oracle.timm_swin(dict(SMALL, img_size=img_size, strict_img_size=False))
  check_logits(jax_model, timm_model, oracle.random_images(2, *run_size, seed=4))


def test_stage_features():
  """``model.features`` (NHWC, before each PatchMerging) == the output of timm's
  ``layers[i]`` (timm merges at the start of a stage, so that is stage i's blocks)."""
  jax_model = swin_jax.SwinTransformer(img_size=224, **SMALL)
  timm_model = oracle.timm_swin(dict(SMALL, img_size=224))
  params = paired_models(jax_model, timm_model, seed=5)
  images = oracle.random_images(2, 224, 224, seed=6)
  refs = oracle.stage_features(timm_model, images)
  outs = jax.jit(lambda p, x: jax_model.apply({"params": p}, x, method=jax_model.features))(
      params, jnp.asarray(images))
  assert len(outs) == len(refs) == 4
  for i, (out, ref) in enumerate(zip(outs, refs)):
    assert out.shape == (2, 56 // 2**i, 56 // 2**i, 32 * 2**i), (i, out.shape)
    diff = max_abs_diff(out, ref)
    tol = ATOL * max(1.0, float(np.abs(ref).max()))
    print(f"stage {i}: max |diff| = {diff:.3g}, max |ref| = {np.abs(ref).max():.3g}")
    assert diff <= tol, f"stage {i}: max |diff| = {diff:.3g} > {tol:.3g}"


def test_gradients_tiny():
  """d(sum(logits * w))/d(every parameter) and d/d(images) match torch autograd.

  Parameter gradients are mapped back onto timm names with
  ``export_torch_state_dict(grads, model, layout='timm')``.
  """
  cfg = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
             window_size=4, num_classes=10, drop_path_rate=0.0)
  jax_model = swin_jax.SwinTransformer(**cfg)
  timm_model = oracle.timm_swin(cfg)
  params = paired_models(jax_model, timm_model, seed=7)
  images = oracle.random_images(2, 64, 64, seed=8)
  weights = np.random.default_rng(9).standard_normal((2, 10)).astype(np.float32)

  check_gradients(jax_model, timm_model, params, images, weights)


def check_gradients(jax_model, timm_model, params, images, weights) -> dict:
  """Asserts that the loss ``sum(logits * weights)`` and its gradients (every parameter,
  mapped to timm names, and the images) match torch autograd; returns torch's gradients."""
  ref_loss, ref_grads, ref_image_grad = oracle.loss_and_grads(timm_model, images, weights)

  def loss_fn(p, x):
    return jnp.sum(jax_model.apply({"params": p}, x, train=False) * weights)

  loss, (param_grads, image_grad) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(
      params, jnp.asarray(images))
  assert abs(float(loss) - ref_loss) <= ATOL * max(1.0, abs(ref_loss))

  grads = convert.export_torch_state_dict(jax.device_get(param_grads), jax_model, layout="timm")
  oracle.assert_gradients_match(grads, ref_grads, image_grad, ref_image_grad, ATOL)
  return ref_grads
