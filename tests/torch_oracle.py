"""The PyTorch oracle for the parity tests: timm's Swin Transformer with random weights.

torch and timm are imported here only, so test modules that use this helper can be
collected (and skipped) where the ``oracle`` extra is not installed.

Conventions: images are numpy float32 NHWC ``(B, H, W, 3)`` (swin_jax's layout); the helpers
transpose to NCHW for timm. Every model is float32 and in eval mode.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

import timm
from timm.models import swin_transformer as timm_swin_module
from timm.models import swin_transformer_v2 as timm_swinv2_module


def timm_swin(name_or_kwargs: str | dict[str, Any], **kw: Any) -> torch.nn.Module:
  """A timm Swin in eval mode, float32, no pretrained weights.

  ``name_or_kwargs``: a timm model name (``timm.create_model(name, pretrained=False, **kw)``)
  or a dict of ``timm.models.swin_transformer.SwinTransformer`` constructor arguments
  (merged with ``kw``).
  """
  return _timm_model(timm_swin_module.SwinTransformer, name_or_kwargs, kw)


def _timm_model(module_cls: type, name_or_kwargs: str | dict[str, Any],
                kw: dict[str, Any]) -> torch.nn.Module:
  if isinstance(name_or_kwargs, str):
    model = timm.create_model(name_or_kwargs, pretrained=False, **kw)
  else:
    model = module_cls(**{**name_or_kwargs, **kw})
  return model.float().eval()


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Puts seeded random values in EVERY parameter of ``model`` (in place) and returns it.

  A mis-mapped or transposed tensor then changes the output instead of hiding behind an
  init value (zero biases, unit norm scales, a symmetric table). Scales keep activations
  O(1) and attention logits O(1) (softmax not saturated):

  * Linear / conv weights: ``N(0, 1/fan_in)`` (unit-variance outputs for unit inputs);
  * LayerNorm weights: ``1 + 0.1 N(0, 1)``; every bias: ``0.1 N(0, 1)``;
  * relative-position bias tables: ``0.5 N(0, 1)`` (visible against O(1) logits);
  * anything else (e.g. an absolute position embedding): ``0.1 N(0, 1)``.
  """
  gen = torch.Generator().manual_seed(seed)
  norm_weights = {f"{name}.weight" for name, module in model.named_modules()
                  if isinstance(module, torch.nn.LayerNorm)}
  for name, param in model.named_parameters():
    noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
    if name in norm_weights:
      value = 1.0 + 0.1 * noise
    elif name.endswith("relative_position_bias_table"):
      value = 0.5 * noise
    elif name.endswith(".weight") and param.ndim >= 2:
      fan_in = math.prod(param.shape[1:])
      value = noise / math.sqrt(fan_in)
    else:
      value = 0.1 * noise
    param.copy_(value.to(param.dtype))
  return model


def timm_swinv2(name_or_kwargs: str | dict[str, Any], **kw: Any) -> torch.nn.Module:
  """``timm_swin`` for Swin V2: a timm model name or ``SwinTransformerV2`` arguments."""
  return _timm_model(timm_swinv2_module.SwinTransformerV2, name_or_kwargs, kw)


@torch.no_grad()
def randomize_v2_(model: torch.nn.Module, seed: int, clamped_head: bool = True
                  ) -> torch.nn.Module:
  """``randomize_`` for Swin V2, with temperatures that exercise the cosine attention.

  ``randomize_`` already gives every tensor seeded values (the zero-initialised post-norms,
  ``q_bias``/``v_bias`` and the CPB MLP included). On top, each block's ``logit_scale``
  ``(heads, 1, 1)`` becomes ``log(10) + 0.5 N(0, 1)`` (temperatures around 10, as trained
  models have) and, with ``clamped_head``, its first head ``log(200)``, above the
  ``log(100)`` clamp. A temperature of 100 makes the softmax nearly one-hot and float32
  results ill-conditioned (with head_dim 8-16, float32 differences between two correct
  implementations reach 1e-4; with the real head_dim 32 about 1e-5), so small test configs
  pass ``clamped_head=False``.
  """
  randomize_(model, seed)
  gen = torch.Generator().manual_seed(seed + 1)
  for name, param in model.named_parameters():
    if name.endswith("logit_scale"):
      value = math.log(10.0) + 0.5 * torch.randn(param.shape, generator=gen)
      if clamped_head:
        value[0] = math.log(200.0)
      param.copy_(value.to(param.dtype))
  return model


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  """The model's parameters (no buffers) as float32 numpy arrays, by timm name."""
  return {name: param.detach().cpu().numpy().astype(np.float32).copy()
          for name, param in model.named_parameters()}


def nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
  """numpy ``(B, H, W, C)`` -> contiguous float32 torch ``(B, C, H, W)``."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
  """torch ``(B, C, H, W)`` -> numpy ``(B, H, W, C)``."""
  return x.detach().cpu().numpy().transpose(0, 2, 3, 1)


def random_images(batch: int, height: int, width: int, seed: int) -> np.ndarray:
  """Standard-normal NHWC float32 images ``(batch, height, width, 3)``."""
  return np.random.default_rng(seed).standard_normal((batch, height, width, 3)).astype(np.float32)


@torch.no_grad()
def logits(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
  """timm forward on NHWC numpy images -> numpy logits."""
  return model(nhwc_to_nchw(images_nhwc)).numpy()


@torch.no_grad()
def stage_features(model: torch.nn.Module, images_nhwc: np.ndarray) -> list[np.ndarray]:
  """The output of each timm stage ``layers[i]`` (after its blocks, no norm), NHWC numpy.

  timm's stages merge patches at their START, so ``layers[i]``'s output is the output of
  stage i's blocks: the same tensor as the official stage i before its final PatchMerging.
  """
  feats = model.forward_intermediates(nhwc_to_nchw(images_nhwc), norm=False,
                                      intermediates_only=True)
  return [nchw_to_nhwc(f) for f in feats]


def loss_and_grads(model: torch.nn.Module, images_nhwc: np.ndarray, weights: np.ndarray
                   ) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
  """``loss = sum(logits * weights)``; returns (loss, parameter grads by name, input grad NHWC)."""
  model.zero_grad(set_to_none=True)
  x = nhwc_to_nchw(images_nhwc).requires_grad_(True)
  loss = (model(x) * torch.from_numpy(np.asarray(weights, np.float32))).sum()
  loss.backward()
  grads = {name: param.grad.detach().numpy().copy() for name, param in model.named_parameters()
           if param.grad is not None}
  return float(loss.detach()), grads, nchw_to_nhwc(x.grad)


def timm_to_official(sd: dict) -> dict:
  """The inverse of timm's ``checkpoint_filter_fn`` renames (spec section 4), written
  independently of swin_jax's converter."""
  out = {}
  for key, value in sd.items():
    if m := re.match(r"^layers\.(\d+)\.downsample\.(.*)$", key):
      key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    elif key.startswith("head.fc."):
      key = "head." + key[len("head.fc."):]
    out[key] = value
  return out


def assert_gradients_match(grads: dict, ref_grads: dict, image_grad, ref_image_grad,
                           atol: float) -> None:
  """Every parameter gradient (timm names) and the input gradient agree within
  ``atol * max(1, max |reference|)``; a zero reference gradient fails (vacuous test)."""
  def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))

  assert set(grads) == set(ref_grads), sorted(set(grads) ^ set(ref_grads))
  failures = []
  worst = (0.0, "")
  for name, ref in ref_grads.items():
    assert np.any(ref != 0), f"{name}: zero torch gradient, the test would be vacuous"
    diff = max_abs_diff(grads[name], ref)
    tol = atol * max(1.0, float(np.abs(ref).max()))
    worst = max(worst, (diff / tol, f"{name}: {diff:.3g} (max |grad| {np.abs(ref).max():.3g})"))
    if diff > tol:
      failures.append(f"{name}: max |diff| {diff:.3g} > {tol:.3g}")
  print(f"worst parameter gradient (relative to its tolerance): {worst[1]}")
  assert not failures, "\n".join(failures)

  diff = max_abs_diff(image_grad, ref_image_grad)
  tol = atol * max(1.0, float(np.abs(ref_image_grad).max()))
  print(f"input gradient: max |diff| = {diff:.3g}, max |grad| {np.abs(ref_image_grad).max():.3g}")
  assert diff <= tol, f"input gradient: max |diff| {diff:.3g} > {tol:.3g}"
