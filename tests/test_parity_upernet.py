"""UperNet-Swin: parameter counts, conversion of official checkpoints, and parity with
OpenMMLab's modules (mmseg 1.2.2 ``UPerHead`` / ``FCNHead``, mmdet 3.3.0 ``SwinTransformer``
for the dense backbone).

Every param and BatchNorm statistic holds seeded random values; the references are loaded
strictly from swin_jax's export (official keys), and swin_jax reads the same dict back with
``load_torch_variables``. float32 on CPU, logits within 1e-4. Sizes: 512x512, where the
16x16 stride-32 map makes the 3- and 6-bin PPM pools overlap, and a non-square 360x488 whose
maps are odd and no window multiple. Only the full-size test runs the official widths; the
others use a tiny backbone and narrow heads (the same code paths).
"""

from __future__ import annotations

import flax
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

import swin_jax
from swin_jax import convert
from swin_jax.convert import upernet as upernet_convert
from swin_jax.models import registry
from swin_jax.models.seg_heads import FCNHead, UPerHead
from swin_jax.models.upernet import UperNet
from swin_jax.train import sharding

from random_variables import random_variables

ATOL = 1e-4
TINY_NAME = "upernet_swin_tiny_patch4_window7_512"
# Same code paths, a fraction of the cost: a 4-stage Swin of width 16 and heads of 32 / 16.
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), channels=32,
            aux_channels=16, num_classes=7, drop_path_rate=0.0)
SIZES = [(512, 512), (360, 488)]
SIZE_IDS = ["512x512", "360x488"]


def feature_shapes(height: int, width: int, widths) -> list[tuple[int, ...]]:
  """The backbone's output shapes for a ``height x width`` image (batch 2)."""
  return [(2, -(-height // s), -(-width // s), c) for s, c in zip((4, 8, 16, 32), widths)]


def max_abs_diff(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_variables(model, size=(512, 512)):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))


# ---------------------------------------------------------------------------------------
# Models and counts (no compute).


@pytest.mark.parametrize("name,total,parts", [
    ("upernet_swin_tiny_patch4_window7_512", 59_941_862,
     dict(backbone=27_520_698, decode_head=31_497_366, auxiliary_head=923_798)),
    ("upernet_swin_small_patch4_window7_512", 81_259_766, {}),
    ("upernet_swin_base_patch4_window7_512", 121_279_716,
     dict(decode_head=33_315_990, auxiliary_head=1_218_710)),
])
def test_param_counts_are_the_official_ones(name, total, parts):
  model = swin_jax.create_model(name, num_classes=150)
  variables = abstract_variables(model)
  assert count(variables["params"]) == total
  for part, n in parts.items():
    assert count(variables["params"][part]) == n, part
  # 12 BatchNorms of 512 in the decode head, one of 256 in the auxiliary head.
  assert count(variables["batch_stats"]) == 12_800
  assert set(variables) == {"params", "batch_stats"}


def test_registry_builds_the_dense_backbone_with_stage_norms_and_the_heads():
  model = swin_jax.create_model(TINY_NAME)
  assert isinstance(model, UperNet) and model.num_classes == 150
  swin = model.backbone
  assert swin.dense_mode and swin.feature_norm and swin.num_classes == 0
  assert swin.drop_path_rate == 0.3 and swin.window_size == 7
  names = set(abstract_variables(model)["params"]["backbone"])
  assert {"norm0", "norm1", "norm2", "norm3"} <= names and "norm" not in names
  # One flat namespace of overrides: head fields to the heads, the rest to the backbone.
  small = swin_jax.create_model(TINY_NAME, **TINY, dtype="bfloat16")
  assert (small.channels, small.aux_channels, small.num_classes) == (32, 16, 7)
  assert small.backbone.embed_dim == 16 and small.backbone.drop_path_rate == 0.0
  assert small.dtype == jnp.bfloat16 and small.backbone.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="channel"):
    swin_jax.create_model(TINY_NAME, channel=3)
  assert registry.model_config(TINY_NAME)["depths"] == (2, 2, 6, 2)


def test_outputs_and_head_logits_shapes():
  model = swin_jax.create_model(TINY_NAME, **TINY)
  variables = abstract_variables(model, (360, 488))
  images = jax.ShapeDtypeStruct((2, 360, 488, 3), jnp.float32)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
  decode, aux = jax.eval_shape(lambda v, x: model.apply(v, x, method="head_logits"),
                               variables, images)
  assert logits.shape == (2, 360, 488, 7) and logits.dtype == jnp.float32
  assert decode.shape == (2, 90, 122, 7) and aux.shape == (2, 23, 31, 7)


# ---------------------------------------------------------------------------------------
# Conversion.


def test_export_writes_official_keys_and_load_torch_variables_reads_them_back():
  model = swin_jax.create_model(TINY_NAME, **TINY)
  variables = random_variables(model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), 3)
  sd = convert.export_torch_state_dict(variables, model, include_buffers=True)
  for key in ("decode_head.psp_modules.3.1.conv.weight",
              "decode_head.psp_modules.3.1.bn.running_var",
              "decode_head.lateral_convs.2.bn.num_batches_tracked",
              "decode_head.fpn_bottleneck.conv.weight", "decode_head.conv_seg.bias",
              "auxiliary_head.convs.0.bn.running_mean", "auxiliary_head.conv_seg.weight",
              "backbone.norm3.weight", "backbone.layers.3.blocks.1.attn.relative_position_index"):
    assert key in sd, key
  assert sd["decode_head.psp_modules.0.1.conv.weight"].shape == (32, 128, 1, 1)
  # The dense backbone computes its masks per forward pass: they are no buffers.
  assert not any(k.endswith("attn_mask") for k in sd)
  # An mmseg training checkpoint: weights under 'state_dict', torch tensors.
  torch = pytest.importorskip("torch")
  checkpoint = {"meta": {}, "state_dict": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}
  loaded = convert.load_torch_variables(checkpoint, model)
  assert set(loaded) == {"params", "batch_stats"}
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # Its inverse, params alone: no statistics.
  params_only = convert.export_torch_state_dict(variables["params"], model)
  assert not any("running" in k for k in params_only)


def test_a_scanned_backbone_reads_and_writes_the_same_official_dict():
  per_block = swin_jax.create_model(TINY_NAME, **TINY)
  scanned = swin_jax.create_model(TINY_NAME, **TINY, scan_blocks=True)
  variables = random_variables(per_block, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), 13)
  sd = convert.export_torch_state_dict(variables, per_block)
  loaded = convert.load_torch_variables(sd, scanned)
  assert "block_pairs" in loaded["params"]["backbone"]["layers_0"]
  again = convert.export_torch_state_dict(loaded, scanned)
  assert sorted(again) == sorted(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_loading_checks_batchnorm_statistics():
  model = swin_jax.create_model(TINY_NAME, **TINY)
  variables = random_variables(model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), 4)
  sd = convert.export_torch_state_dict(variables, model)
  del sd["decode_head.bottleneck.bn.running_mean"]
  with pytest.raises(convert.CheckpointMismatchError, match="bottleneck.bn.running_mean"):
    convert.load_torch_variables(sd, model)
  loaded = convert.load_torch_variables(sd, model, strict=False)
  np.testing.assert_array_equal(loaded["batch_stats"]["decode_head"]["bottleneck"]["bn"]["mean"],
                                0.0)
  sd["decode_head.bottleneck.bn.running_mean"] = np.zeros(5, np.float32)
  with pytest.raises(convert.CheckpointMismatchError, match="shape mismatch"):
    convert.load_torch_variables(sd, model)


def test_psp_key_mapping_both_ways():
  official = "decode_head.psp_modules.2.1.bn.running_mean"
  assert upernet_convert.to_model_key(official) == "decode_head.psp_modules.2.bn.running_mean"
  assert upernet_convert.to_official_key(upernet_convert.to_model_key(official)) == official
  assert upernet_convert.to_model_key("decode_head.bottleneck.conv.weight") == (
      "decode_head.bottleneck.conv.weight")


# ---------------------------------------------------------------------------------------
# Parity with mmseg / mmdet.


def _head_variables(size, seed):
  """Random features of a TINY backbone at ``size`` and random variables of both heads."""
  widths = [TINY["embed_dim"] * 2**i for i in range(4)]
  rng = np.random.default_rng(seed)
  feats = [rng.standard_normal(s).astype(np.float32) for s in feature_shapes(*size, widths)]
  return widths, feats


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_heads_match_mmseg(size):
  """UPerHead and FCNHead alone, on the same random features, eval mode (running stats)."""
  pytest.importorskip("mmseg")
  import mm_oracle  # pylint: disable=import-outside-toplevel
  model = swin_jax.create_model(TINY_NAME, **TINY)
  variables = random_variables(model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), 5)
  sd = convert.export_torch_state_dict(variables, model, include_buffers=True)
  widths, feats = _head_variables(size, seed=6)
  decode_ref, aux_ref = mm_oracle.mmseg_heads(widths, 32, 16, 7)
  mm_oracle.load_heads(decode_ref, aux_ref, sd)
  ref_decode, ref_aux = mm_oracle.head_logits(decode_ref, aux_ref, feats)

  def heads(v, f):
    decode = UPerHead(7, 32).apply(_sub(v, "decode_head"), f)
    aux = FCNHead(7, channels=16).apply(_sub(v, "auxiliary_head"), f)
    return decode, aux

  decode, aux = jax.jit(heads)(variables, feats)
  assert decode.shape == ref_decode.shape == (2, size[0] // 4, size[1] // 4, 7)
  assert max_abs_diff(decode, ref_decode) <= ATOL
  assert max_abs_diff(aux, ref_aux) <= ATOL


def _sub(variables, name):
  return {k: v[name] for k, v in variables.items()}


@pytest.mark.parametrize("size", [(360, 488)], ids=["360x488"])
def test_tiny_upernet_matches_mmdet_backbone_and_mmseg_heads(size):
  pytest.importorskip("mmseg")
  import mm_oracle  # pylint: disable=import-outside-toplevel
  _check_full_model(swin_jax.create_model(TINY_NAME, **TINY), size, seed=7)


@pytest.mark.slow
def test_upernet_swin_t_matches_the_references_at_512():
  """The official model (Swin-T, heads 512 / 256, 150 classes), once, at 512x512."""
  pytest.importorskip("mmseg")
  _check_full_model(swin_jax.create_model(TINY_NAME, drop_path_rate=0.0), (512, 512), seed=8)


def _check_full_model(model, size, seed):
  """Export random variables, load them into the references and back through
  ``load_torch_variables``; logits, decode and aux logits within ATOL."""
  import mm_oracle  # pylint: disable=import-outside-toplevel
  variables = random_variables(model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), seed)
  sd = convert.export_torch_state_dict(variables, model, include_buffers=True, to_torch=True)
  reference = mm_oracle.upernet_reference(model, {k: v.numpy() for k, v in sd.items()})
  loaded = convert.load_torch_variables({"state_dict": sd}, model)
  images = np.random.default_rng(seed).standard_normal((1, *size, 3)).astype(np.float32)

  def forward(v, x):
    return model.apply(v, x), model.apply(v, x, method="head_logits")

  logits, (decode, aux) = jax.jit(forward)(loaded, images)
  ref_logits, ref_decode, ref_aux = mm_oracle.upernet_logits(reference, images)
  diffs = [max_abs_diff(logits, ref_logits), max_abs_diff(decode, ref_decode),
           max_abs_diff(aux, ref_aux)]
  assert max(diffs) <= ATOL, diffs


# ---------------------------------------------------------------------------------------
# SyncBN: train-mode statistics of the global batch on a (data 4, fsdp 2) mesh.


def test_batchnorm_in_train_mode_uses_the_global_batch_on_a_4x2_mesh():
  """8 examples, one per device. The heads' outputs and updated running statistics equal
  PyTorch's BatchNorm in train mode over the whole batch (what SyncBN computes); statistics
  per device would differ."""
  pytest.importorskip("mmseg")
  import mm_oracle  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh((4, 2))
  model = swin_jax.create_model(TINY_NAME, **TINY)
  variables = random_variables(model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), 9)
  widths = [16, 32, 64, 128]
  rng = np.random.default_rng(10)
  feats = [rng.standard_normal((8, *s[1:])).astype(np.float32)
           for s in feature_shapes(128, 96, widths)]
  # Dropout off: the outputs are then deterministic (it acts after every BatchNorm anyway).
  decode_head = UPerHead(7, 32, dropout_ratio=0.0)
  aux_head = FCNHead(7, channels=16, dropout_ratio=0.0)

  def train_apply(v, f):
    return (decode_head.apply(_sub(v, "decode_head"), f, train=True, mutable=["batch_stats"]),
            aux_head.apply(_sub(v, "auxiliary_head"), f, train=True, mutable=["batch_stats"]))

  sharded = [jax.device_put(f, NamedSharding(mesh, P(("data", "fsdp")))) for f in feats]
  assert all(len(f.addressable_shards) == 8 and f.addressable_shards[0].data.shape[0] == 1
             for f in sharded)
  replicated = jax.device_put(variables, NamedSharding(mesh, P()))
  (decode, decode_new), (aux, aux_new) = jax.jit(train_apply)(replicated, sharded)

  decode_ref, aux_ref = mm_oracle.mmseg_heads(widths, 32, 16, 7, dropout_ratio=0.0)
  mm_oracle.load_heads(decode_ref, aux_ref,
                       convert.export_torch_state_dict(variables, model, include_buffers=True))
  decode_ref.train()
  aux_ref.train()
  ref_decode, ref_aux = mm_oracle.head_logits(decode_ref, aux_ref, feats)
  assert max_abs_diff(decode, ref_decode) <= ATOL
  assert max_abs_diff(aux, ref_aux) <= ATOL
  ours = _stats_by_official_key({"decode_head": decode_new["batch_stats"],
                                 "auxiliary_head": aux_new["batch_stats"]})
  compared = 0
  for prefix, ref in (("decode_head.", decode_ref), ("auxiliary_head.", aux_ref)):
    for key, value in ref.state_dict().items():
      if key.endswith(("running_mean", "running_var")):
        assert max_abs_diff(ours[prefix + key], value.numpy()) <= 1e-5, key
        compared += 1
  assert compared == 2 * 13  # 12 BatchNorms in the decode head, 1 in the auxiliary head


def _stats_by_official_key(stats):
  flat = flax.traverse_util.flatten_dict(stats)
  return {upernet_convert.to_official_key(upernet_convert.stat_key(p)): np.asarray(v)
          for p, v in flat.items()}


# ---------------------------------------------------------------------------------------
# Dropout2d.


def test_dropout_drops_whole_channels_in_train_only():
  head = FCNHead(4, in_index=0, channels=4, num_convs=0, dropout_ratio=0.5)
  x = np.abs(np.random.default_rng(12).standard_normal((3, 5, 6, 4))).astype(np.float32) + 1
  variables = {"params": {"conv_seg": {"kernel": np.eye(4, dtype=np.float32)[None, None],
                                       "bias": np.zeros(4, np.float32)}}}
  out = np.asarray(head.apply(variables, [x], train=True,
                              rngs={"dropout": jax.random.PRNGKey(0)}))
  dropped = np.all(out == 0, axis=(1, 2))             # (B, C): whole maps zeroed
  kept = np.all(np.isclose(out, 2 * x), axis=(1, 2))  # or all scaled by 1 / (1 - p)
  assert np.all(dropped | kept) and dropped.any() and kept.any()
  np.testing.assert_array_equal(head.apply(variables, [x], train=False), x)
