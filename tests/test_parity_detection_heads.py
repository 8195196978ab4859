"""The detection heads against mmdet 3.3.0's modules: ``FPN``, ``RPNHead``,
``Shared2FCBBoxHead``, ``FCNMaskHead`` at the official sizes (Mask R-CNN Swin-T).

Each mmdet module gets seeded random weights (every tensor random, so a mis-mapped or
mis-transposed one changes the output), its state dict goes through
``swin_jax.convert.detection`` into Flax params, and both run the same random input:
float32 on CPU, within 1e-4. Parameter counts are the official ones; the converter's params
have exactly the paths and shapes ``init`` creates, and convert back to the same dict.
"""

from __future__ import annotations

import math

import flax
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from swin_jax.convert import detection as det_convert
from swin_jax.models.detection import FCNMaskHead, FPN, RPNHead, Shared2FCBBoxHead
from swin_jax.models.detection import fpn as fpn_lib

torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")
import mm_stubs  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from mmdet.models.dense_heads import RPNHead as MMRPNHead  # noqa: E402
from mmdet.models.necks import FPN as MMFPN  # noqa: E402
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead as MMShared2FCBBoxHead  # noqa: E402
from mmdet.models.roi_heads.mask_heads import FCNMaskHead as MMFCNMaskHead  # noqa: E402

ATOL = 1e-4
SWIN_T_WIDTHS = [96, 192, 384, 768]
# Swin-T stage outputs of a 100x132 image (ceil per stage): odd sizes, so the top-down
# upsampling is not an exact x2 everywhere (25x33 <- 13x17 <- 7x9 <- 4x5).
STAGE_SIZES = [(25, 33), (13, 17), (7, 9), (4, 5)]


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Weights ``N(0, 1 / fan_in)`` (fan_in from PyTorch's layout: dim 1 x kernel, or dim 0
  for ConvTranspose), biases ``0.1 N``; eval mode."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.copy_(0.1 * noise)
      else:
        transposed = isinstance(module.get_submodule(name.rsplit(".", 1)[0]),
                                torch.nn.ConvTranspose2d)
        fan_in = p.shape[0 if transposed else 1] * math.prod(p.shape[2:])
        p.copy_(noise / math.sqrt(fan_in))
  return module.eval()


def flax_params(module: torch.nn.Module, prefix: str):
  """The module's state dict under its official ``prefix``, through the converter; the
  subtree at ``prefix``."""
  sd = {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
  params = det_convert.head_params_from_torch(sd)
  for part in prefix.split("."):
    params = params[part]
  return {"params": params}


def nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return x.detach().numpy().transpose(0, 2, 3, 1)


def max_abs_diff(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def mm_fpn():
  return MMFPN(in_channels=SWIN_T_WIDTHS, out_channels=256, num_outs=5)


def mm_rpn_head():
  return MMRPNHead(
      in_channels=256, feat_channels=256,
      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                            strides=[4, 8, 16, 32, 64]),
      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                      target_stds=[1.0] * 4))


def mm_bbox_head():
  return MMShared2FCBBoxHead(
      in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=80,
      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                      target_stds=[0.1, 0.1, 0.2, 0.2]),
      reg_class_agnostic=False)


def mm_mask_head():
  return MMFCNMaskHead(num_convs=4, in_channels=256, conv_out_channels=256, num_classes=80)


def abstract_params(module, *inputs):
  return jax.eval_shape(lambda *x: module.init(jax.random.PRNGKey(0), *x), *inputs)["params"]


def f32(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


HEADS = {
    # name: (official prefix, mmdet module, swin_jax module, abstract input, official count)
    "fpn": ("neck", mm_fpn, FPN, [f32(1, 8, 8, c) for c in SWIN_T_WIDTHS], 2_729_984),
    "rpn_head": ("rpn_head", mm_rpn_head, RPNHead, [f32(1, 8, 8, 256)], 593_935),
    "bbox_head": ("roi_head.bbox_head", mm_bbox_head, Shared2FCBBoxHead, f32(2, 7, 7, 256),
                  14_306_705),
    "mask_head": ("roi_head.mask_head", mm_mask_head, FCNMaskHead, f32(2, 14, 14, 256),
                  2_643_280),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_param_counts_paths_and_conversion_round_trip(name):
  """Official count on both sides; the converted mmdet state dict has exactly the paths and
  shapes of ``init``; converting back gives the state dict again, value for value."""
  prefix, mm_module, module, example, expected = HEADS[name]
  reference = randomize_(mm_module(), seed=0)
  assert sum(p.numel() for p in reference.parameters()) == expected
  abstract = abstract_params(module(), example)
  assert count(abstract) == expected
  converted = flax_params(reference, prefix)["params"]
  shapes = lambda tree: {p: tuple(v.shape) for p, v in  # noqa: E731
                         flax.traverse_util.flatten_dict(tree).items()}
  assert shapes(converted) == shapes(abstract)
  nested = converted
  for part in reversed(prefix.split(".")):
    nested = {part: nested}
  back = det_convert.head_params_to_torch(nested)
  official = {f"{prefix}.{k}": v.numpy() for k, v in reference.state_dict().items()}
  assert sorted(back) == sorted(official)
  for key, value in official.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_converter_reads_only_head_keys_and_lays_out_the_deconv_without_flip():
  weight = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)   # (in, out, kh, kw)
  sd = {"backbone.patch_embed.proj.weight": np.zeros((96, 3, 4, 4), np.float32),
        "roi_head.mask_head.upsample.weight": weight,
        "roi_head.mask_head.conv_logits.weight": np.zeros((5, 3, 1, 1), np.float32)}
  params = det_convert.head_params_from_torch(sd)
  assert set(params) == {"roi_head"}
  kernel = params["roi_head"]["mask_head"]["upsample"]["kernel"]
  assert kernel.shape == (2, 2, 2, 3)
  np.testing.assert_array_equal(kernel[1, 0, :, :], weight[:, :, 1, 0])
  assert params["roi_head"]["mask_head"]["conv_logits"]["kernel"].shape == (1, 1, 3, 5)


@pytest.mark.parametrize("in_size,out_size", [(13, 25), (7, 13), (4, 7), (5, 10), (3, 8),
                                              (17, 33), (6, 6)])
def test_nearest_upsampling_reads_the_pixels_pytorch_reads(in_size, out_size):
  x = torch.arange(in_size, dtype=torch.float32).reshape(1, 1, in_size, 1)
  ref = torch.nn.functional.interpolate(x, size=(out_size, 1), mode="nearest")
  np.testing.assert_array_equal(fpn_lib.nearest_indices(in_size, out_size),
                                ref.numpy().reshape(-1).astype(int))


def test_fpn_matches_mmdet():
  """Swin-T widths in, five 256-channel levels out; P6 = P5 subsampled (3x3 from 4x5)."""
  reference = randomize_(mm_fpn(), seed=1)
  rng = np.random.default_rng(1)
  inputs = [rng.standard_normal((2, h, w, c)).astype(np.float32)
            for (h, w), c in zip(STAGE_SIZES, SWIN_T_WIDTHS)]
  with torch.no_grad():
    ref = [nhwc(o) for o in reference([nchw(x) for x in inputs])]
  ours = jax.jit(FPN().apply)(flax_params(reference, "neck"), inputs)
  assert [o.shape[1:3] for o in ours] == STAGE_SIZES + [(2, 3)]
  for level, (a, b) in enumerate(zip(ours, ref)):
    assert max_abs_diff(a, b) <= ATOL, level


def test_rpn_head_matches_mmdet_on_every_level():
  reference = randomize_(mm_rpn_head(), seed=2)
  rng = np.random.default_rng(2)
  sizes = STAGE_SIZES + [(2, 3)]
  feats = [rng.standard_normal((2, h, w, 256)).astype(np.float32) for h, w in sizes]
  with torch.no_grad():
    ref_cls, ref_reg = reference([nchw(x) for x in feats])
  cls, reg = jax.jit(RPNHead().apply)(flax_params(reference, "rpn_head"), feats)
  for level, (h, w) in enumerate(sizes):
    assert cls[level].shape == (2, h, w, 3) and reg[level].shape == (2, h, w, 12)
    assert max_abs_diff(cls[level], nhwc(ref_cls[level])) <= ATOL, level
    assert max_abs_diff(reg[level], nhwc(ref_reg[level])) <= ATOL, level


def test_shared2fc_bbox_head_matches_mmdet():
  """The first fc reads the (C, 7, 7) flattening: a transposed RoI layout would fail."""
  reference = randomize_(mm_bbox_head(), seed=3)
  rois = np.random.default_rng(3).standard_normal((6, 7, 7, 256)).astype(np.float32)
  with torch.no_grad():
    ref_cls, ref_reg = reference(nchw(rois))
  cls, reg = jax.jit(Shared2FCBBoxHead().apply)(flax_params(reference, "roi_head.bbox_head"),
                                                rois)
  assert cls.shape == (6, 81) and reg.shape == (6, 320)
  assert max_abs_diff(cls, ref_cls.numpy()) <= ATOL
  assert max_abs_diff(reg, ref_reg.numpy()) <= ATOL


def test_fcn_mask_head_matches_mmdet():
  reference = randomize_(mm_mask_head(), seed=4)
  rois = np.random.default_rng(4).standard_normal((2, 14, 14, 256)).astype(np.float32)
  with torch.no_grad():
    ref = nhwc(reference(nchw(rois)))
  ours = jax.jit(FCNMaskHead().apply)(flax_params(reference, "roi_head.mask_head"), rois)
  assert ours.shape == (2, 28, 28, 80)
  assert max_abs_diff(ours, ref) <= ATOL
