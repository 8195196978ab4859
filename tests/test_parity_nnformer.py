"""nnFormer: numerical parity with the PyTorch reference, param counts, conversion both ways.

The reference (``swin_jax.oracles.torch_nnformer``) rebuilds the official networks of
282857341/nnFormer module by module, official keys and quirks included (its own tests:
test_nnformer_reference.py). Every tensor holds seeded random values
(``torch_oracle.randomize_``); the official state dict goes through
``swin_jax.convert.load_torch_variables`` into the swin_jax model. float32 on CPU; logits
within 1e-4, gradients within ``1e-4 * max(1, max |reference|)`` per tensor.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import swin_jax  # noqa: E402
from swin_jax import convert  # noqa: E402
from swin_jax.convert import nnformer as nnformer_convert  # noqa: E402
from swin_jax.models import nnformer  # noqa: E402
from swin_jax.oracles import torch_nnformer  # noqa: E402

import torch_oracle as oracle  # noqa: E402

ATOL = 1e-4
# Each variant's code paths at a fraction of the cost (the reference tests use the same):
# Synapse / Tumor at 32x64x64 run shifted, masked 4^3 windows at stage 0 and clamped global
# windows below; ACDC keeps its official depth sequence 14, 14, 7, 3 (a padded, unmasked
# shifted depth window at stages 0-1, exact fits after) with windows scaled to 64 px.
SMALL = dict(embed_dim=24, num_heads=(1, 2, 2, 4), num_classes=3, drop_path_rate=0.0)
REDUCED = {
    "nnformer_synapse": dict(SMALL, crop_size=(32, 64, 64)),
    "nnformer_tumor": dict(SMALL, crop_size=(32, 64, 64)),
    "nnformer_acdc": dict(SMALL, crop_size=(14, 64, 64),
                          window_size=((3, 4, 4), (3, 4, 4), (7, 4, 4), (3, 2, 2))),
}
OFFICIAL_COUNTS = {"nnformer_synapse": 150_054_210, "nnformer_acdc": 37_160_200,
                   "nnformer_tumor": 37_606_726}


def reference(model: nnformer.NnFormer, seed: int) -> torch.nn.Module:
  """The official network ``model`` mirrors, every tensor seeded random, eval mode."""
  return oracle.randomize_(torch_nnformer.build_like(model), seed)


def random_volumes(model: nnformer.NnFormer, batch: int, seed: int) -> np.ndarray:
  """``(B, D, H, W, C)`` float32 N(0, 1) volumes of the model's crop."""
  shape = (batch, *model.crop_size, model.in_channels)
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def torch_logits(ref: torch.nn.Module, volumes: np.ndarray) -> list[np.ndarray]:
  """The reference's output(s) for NDHWC ``volumes``, channels-last numpy (a list under
  ``do_ds``)."""
  with torch.no_grad():
    out = ref(torch.from_numpy(volumes).permute(0, 4, 1, 2, 3).contiguous())
  outs = out if isinstance(out, (list, tuple)) else [out]
  return [o.permute(0, 2, 3, 4, 1).numpy() for o in outs]


def max_abs_diff(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def param_count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_full_size_param_counts_are_the_official_ones(name):
  model = swin_jax.create_model(name)
  assert param_count(convert.abstract_params(model)) == OFFICIAL_COUNTS[name]


@pytest.mark.parametrize("name", sorted(REDUCED))
def test_reduced_logits_match_the_reference(name):
  """Eval logits of a reduced config of each variant, from the official state dict."""
  model = swin_jax.create_model(name, **REDUCED[name])
  ref = reference(model, seed=1)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}   # official keys and buffers
  params = convert.load_torch_variables(sd, model)["params"]
  assert param_count(params) == torch_nnformer.param_count(ref)
  volumes = random_volumes(model, 2, seed=2)
  ref.do_ds = False   # the trainers' evaluation mode
  (expected,) = torch_logits(ref, volumes)
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, volumes)
  assert logits.shape == (*volumes.shape[:-1], model.num_classes)
  assert max_abs_diff(logits, expected) <= ATOL


def test_synapse_deep_supervision_outputs_and_gradients_match_the_reference():
  """Train mode (no drop path): the three deep-supervision outputs in the official order,
  and the gradients of every param through the weighted outputs."""
  model = swin_jax.create_model("nnformer_synapse", **REDUCED["nnformer_synapse"])
  ref = reference(model, seed=3)
  params = convert.load_torch_variables(oracle.state_dict_numpy(ref), model)["params"]
  volumes = random_volumes(model, 1, seed=4)
  weights = [np.random.default_rng(10 + i).normal(size=o.shape).astype(np.float32)
             for i, o in enumerate(torch_logits(ref, volumes))]

  def loss_fn(p):
    outs = model.apply({"params": p}, volumes, train=True)
    return sum(jnp.sum(o * w) for o, w in zip(outs, weights)), outs

  (loss, outs), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  ref.train()
  x = torch.from_numpy(volumes).permute(0, 4, 1, 2, 3).contiguous()
  ref_outs = ref(x)
  ref_loss = sum((o.permute(0, 2, 3, 4, 1) * torch.from_numpy(w)).sum()
                 for o, w in zip(ref_outs, weights))
  ref_loss.backward()
  # Highest resolution first: full, 1/2, 1/4 of the input.
  assert [o.shape[1:4] for o in outs] == [(32, 64, 64), (16, 32, 32), (8, 16, 16)]
  for out, ref_out in zip(outs, ref_outs):
    assert max_abs_diff(out, ref_out.detach().permute(0, 2, 3, 4, 1).numpy()) <= ATOL
  assert float(loss) == pytest.approx(float(ref_loss.detach()), rel=1e-4, abs=1e-3)
  ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
  flat = convert.export_torch_state_dict(jax.device_get(grads), model)
  assert sorted(flat) == sorted(ref_grads)
  for key, expected in ref_grads.items():
    tol = ATOL * max(1.0, float(np.max(np.abs(expected))))
    assert max_abs_diff(flat[key], expected) <= tol, key


def test_full_synapse_matches_the_reference_at_one_input():
  """The official Synapse network (192 wide, 64x128x128 crops, 150M params) at one input."""
  model = swin_jax.create_model("nnformer_synapse", drop_path_rate=0.0)
  ref = reference(model, seed=5)
  params = convert.load_torch_variables(oracle.state_dict_numpy(ref), model)["params"]
  volumes = random_volumes(model, 1, seed=6)
  ref.do_ds = False
  (expected,) = torch_logits(ref, volumes)
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, volumes)
  assert max_abs_diff(logits, expected) <= ATOL


def test_export_is_the_official_state_dict_and_loads_strictly():
  """params -> the official keys and layouts (ConvTranspose3d ``(in, out, k...)``, Conv3d
  OIDHW) with the index buffers: exactly the state dict they were loaded from, which the
  reference loads strictly."""
  name = "nnformer_acdc"
  model = swin_jax.create_model(name, **REDUCED[name])
  ref = reference(model, seed=7)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}   # buffers included
  params = convert.load_torch_variables(sd, model)["params"]
  up = "decoder.layers.0.Upsample.up.weight"   # (in 48, out 24, 1, 2, 2), no flip
  np.testing.assert_array_equal(sd[up].transpose(2, 3, 4, 0, 1),
                                params["decoder"]["layers_0"]["Upsample"]["up"]["kernel"])
  exported = convert.export_torch_state_dict(params, model, include_buffers=True)
  assert sorted(exported) == sorted(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  fresh = torch_nnformer.build_like(model)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


def test_buffers_are_nnformers_colliding_index():
  model = swin_jax.create_model("nnformer_synapse", **REDUCED["nnformer_synapse"])
  buffers = nnformer_convert.buffers(model)
  ref = torch_nnformer.build_like(model)
  ref_buffers = {k: v.numpy() for k, v in ref.state_dict().items()
                 if k.endswith("relative_position_index")}
  assert sorted(buffers) == sorted(ref_buffers)
  for key, value in ref_buffers.items():
    np.testing.assert_array_equal(buffers[key], value, err_msg=key)


def test_checkpoint_of_another_variant_or_size_is_refused_by_name():
  synapse = swin_jax.create_model("nnformer_synapse", **REDUCED["nnformer_synapse"])
  tumor = swin_jax.create_model("nnformer_tumor", **REDUCED["nnformer_tumor"])
  sd = oracle.state_dict_numpy(torch_nnformer.build_like(tumor))
  # Tumor's decoder has twice Synapse's heads: its bias tables do not fit.
  with pytest.raises(convert.CheckpointMismatchError,
                     match="decoder.layers.0.blocks.0.attn.relative_position_bias_table"):
    convert.load_torch_variables(sd, synapse)


def test_wrong_volume_shape_is_a_clear_error():
  model = swin_jax.create_model("nnformer_synapse", **REDUCED["nnformer_synapse"])
  with pytest.raises(ValueError, match=r"built for volumes of shape \(B, 32, 64, 64, 1\)"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 64, 48, 1)))
  with pytest.raises(ValueError, match="multiple of patch_size"):
    nnformer.plan(model.clone(crop_size=(33, 64, 64)))
  with pytest.raises(ValueError, match="windows are cubes"):
    nnformer.plan(model.clone(window_size=((4, 4, 4),) * 4))
