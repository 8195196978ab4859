"""The PyTorch nnFormer reference (``swin_jax.oracles.torch_nnformer``): the official
networks' sizes, state-dict keys, geometry and quirks.

The full official variants are built on the meta device (no memory, no init) for their
exact parameter counts (spec section 8, from running the official code). Forwards run on
reduced configs, float32 on CPU, each well under 2 s:

- Synapse: crop 32x64x64 (patch 2,4,4 -> maps 16, 8, 4, 2 under windows 4,4,8,4): shifted,
  masked windows at stages 0-1, a clamped global window at stage 2, a clamped 2^3 one at 3.
- Tumor: crop 32x64x64 (patch 4^3 -> 8x16x16 ... 1x2x2): one masked stage, then clamped.
- ACDC: the official depth 14 with H = W = 64 (the official 160 needs 3.5 s even at
  embedding 12). The official down_stride gives maps 14x16x16, 14x8x8, 7x4x4, 3x2x2: the same
  depth sequence 14, 14, 7, 3 as the official crop (so the same merge kernels and the
  output_padding that turns 3 back into 7). The windows are the official ones scaled with
  H and W -- (3,4,4), (3,4,4), (7,4,4), (3,2,2) -- so that, as at the official crop, stages
  0-1 shift by (1,2,2) around a padded depth and stages 2-3 fit their map exactly (no
  shift). The official windows themselves are checked at the official crop, on meta.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from timm.layers import DropPath  # noqa: E402

from swin_jax.oracles import torch_nnformer  # noqa: E402

SMALL = dict(embedding_dim=24, num_heads=(1, 2, 2, 4), num_classes=3)
SYNAPSE = dict(SMALL, crop_size=(32, 64, 64))
TUMOR = dict(SMALL, crop_size=(32, 64, 64))
ACDC = dict(SMALL, crop_size=(14, 64, 64),
            window_size=((3, 4, 4), (3, 4, 4), (7, 4, 4), (3, 2, 2)))


def seeded(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Every float tensor of ``model`` seeded random (norm weights around 1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.state_dict().items():
      if p.dtype.is_floating_point:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        if "norm" in name and name.endswith("weight"):
          p.add_(1.0)
  return model


def volume(model: torch.nn.Module, seed: int, batch: int = 1) -> torch.Tensor:
  cfg = model.config
  gen = torch.Generator().manual_seed(seed)
  return torch.randn(batch, cfg["input_channels"], *cfg["crop_size"], generator=gen)


@pytest.fixture(scope="module")
def official_meta() -> dict[str, torch.nn.Module]:
  """The three official networks, full size, on the meta device."""
  with torch.device("meta"):
    return {v: torch_nnformer.build(v) for v in ("synapse", "acdc", "tumor")}


# ----------------------------------------------------------------------------------------
# The official variants.


def test_official_param_counts(official_meta):
  counts = {v: torch_nnformer.param_count(m) for v, m in official_meta.items()}
  assert counts == {"synapse": 150_054_210, "acdc": 37_160_200, "tumor": 37_606_726}
  parts = {}
  for name, p in official_meta["synapse"].named_parameters():
    parts[name.split(".")[0]] = parts.get(name.split(".")[0], 0) + p.numel()
  assert parts == {"model_down": 119_045_772, "decoder": 30_406_284, "final": 602_154}
  # Deep supervision only for Synapse: 3 heads there, 1 elsewhere.
  assert [len(m.final) for m in official_meta.values()] == [3, 1, 1]
  assert [m.do_ds for m in official_meta.values()] == [True, False, False]


def test_official_acdc_geometry(official_meta):
  """At the official 14x160x160 the ACDC stages are 14x40x40 ... 3x5x5; stages 2-3 fit
  their windows exactly, so only there is the shift dropped (no clamping in ACDC)."""
  model = official_meta["acdc"]
  geometry = [[(b.input_resolution, b.window_size, b.shift_size) for b in layer.blocks]
              for layer in model.model_down.layers]
  assert geometry == [
      [((14, 40, 40), (3, 5, 5), (0, 0, 0)), ((14, 40, 40), (3, 5, 5), (1, 2, 2))],
      [((14, 20, 20), (3, 5, 5), (0, 0, 0)), ((14, 20, 20), (3, 5, 5), (1, 2, 2))],
      [((7, 10, 10), (7, 10, 10), (0, 0, 0))] * 2,
      [((3, 5, 5), (3, 5, 5), (0, 0, 0))] * 2]
  synapse = official_meta["synapse"]
  # Synapse 64x128x128 / (2,4,4): 32^3 ... 4^3; windows 4,4,8,4 make stages 2-3 global.
  assert [(layer.blocks[1].input_resolution, layer.blocks[1].window_size,
           layer.blocks[1].shift_size) for layer in synapse.model_down.layers] == [
               ((32,) * 3, (4,) * 3, (2,) * 3), ((16,) * 3, (4,) * 3, (2,) * 3),
               ((8,) * 3, (8,) * 3, (0,) * 3), ((4,) * 3, (4,) * 3, (0,) * 3)]


def test_build_errors_and_config():
  with pytest.raises(ValueError, match="unknown nnFormer variant"):
    torch_nnformer.build("brats")
  with pytest.raises(ValueError, match="down_stride"):  # an ACDC-only argument
    torch_nnformer.build("synapse", down_stride=((1, 4, 4),) * 4)
  with pytest.raises(ValueError, match="window_size"):
    torch_nnformer.build("tumor", window_size=(4, 4, 8))
  cfg = torch_nnformer.official_config("acdc", num_classes=2)
  assert cfg["num_classes"] == 2 and cfg["drop_path_rate"] == 0.2
  assert torch_nnformer.OFFICIAL["acdc"]["num_classes"] == 4  # the table is not mutated


def test_import_does_not_import_torch():
  code = ("import sys, swin_jax, swin_jax.oracles.torch_nnformer as t; "
          "t.official_config('acdc'); t.stage_resolutions('synapse', t.OFFICIAL['synapse']); "
          "bad = [m for m in ('torch', 'timm') if m in sys.modules]; assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------
# State dict and the relative-position index.


def test_state_dict_has_official_keys():
  model = torch_nnformer.build("synapse", **SYNAPSE)
  sd = model.state_dict()
  expected = {
      "model_down.patch_embed.proj1.conv1.weight": (12, 1, 3, 3, 3),
      "model_down.patch_embed.proj1.norm2.weight": (12,),
      "model_down.patch_embed.proj2.conv2.weight": (24, 24, 3, 3, 3),
      "model_down.patch_embed.norm.weight": (24,),
      "model_down.layers.0.blocks.1.attn.relative_position_bias_table": (343, 1),
      "model_down.layers.0.blocks.0.attn.relative_position_index": (64, 64),
      "model_down.layers.0.blocks.0.attn.qkv.weight": (72, 24),
      "model_down.layers.0.blocks.0.mlp.fc1.weight": (96, 24),
      "model_down.layers.0.downsample.reduction.weight": (48, 24, 3, 3, 3),
      "model_down.layers.0.downsample.norm.weight": (24,),
      "model_down.norm0.weight": (24,),
      "model_down.norm3.weight": (192,),
      # Stage 3 (2^3 maps) clamps its window 4 -> 2: a 27-row table.
      "model_down.layers.3.blocks.0.attn.relative_position_bias_table": (27, 4),
      "decoder.layers.0.Upsample.norm.weight": (48,),
      "decoder.layers.0.Upsample.up.weight": (48, 24, 2, 2, 2),
      "decoder.layers.0.blocks.0.attn.kv.weight": (48, 24),
      "decoder.layers.0.blocks.1.attn.qkv.weight": (72, 24),
      "final.0.up.weight": (24, 3, 2, 4, 4),
      "final.2.up.weight": (96, 3, 2, 4, 4),
  }
  assert {k: tuple(sd[k].shape) for k in expected if k in sd} == expected
  # The last stage has no merge, and the PatchEmbed's last block no second norm.
  assert not any(k.startswith("model_down.layers.3.downsample") for k in sd)
  assert "model_down.patch_embed.proj2.norm2.weight" not in sd
  # The skip-attention block has no query projection: kv and proj only.
  prefix = "decoder.layers.1.blocks.0.attn."
  assert sorted(k[len(prefix):] for k in sd if k.startswith(prefix)) == [
      "kv.bias", "kv.weight", "proj.bias", "proj.weight", "relative_position_bias_table",
      "relative_position_index"]
  # relative_position_index is a persistent int64 buffer, not a parameter.
  params = dict(model.named_parameters())
  index_keys = [k for k in sd if k.endswith("relative_position_index")]
  assert len(index_keys) == 8 + 6 and not set(index_keys) & set(params)
  assert all(sd[k].dtype == torch.int64 for k in index_keys)
  assert set(sd) - set(params) == set(index_keys)


def test_relative_position_index_collides():
  """4^3 window: offsets +3 in [0, 6] per axis, strides 11 (3*4-1) and 7 (2*4-1), so the
  index is at most 6*11 + 6*7 + 6 = 114: 115 of the table's 7^3 = 343 rows are read."""
  model = torch_nnformer.build("synapse", **SYNAPSE)
  attn = model.model_down.layers[0].blocks[0].attn
  index = attn.relative_position_index
  assert attn.relative_position_bias_table.shape == (343, 1)
  assert index.unique().numel() == 115 and int(index.min()) == 0 and int(index.max()) == 114

  def token(z, y, x):  # raster order inside the window
    return z * 16 + y * 4 + x

  # Offsets (-3,-2,+1) and (-2,-3,-3) both land on row 0*11 + 1*7 + 4 = 1*11 + 0 + 0 = 11.
  assert int(index[token(0, 0, 3), token(3, 2, 2)]) == 11
  assert int(index[token(0, 0, 0), token(2, 3, 3)]) == 11
  assert int(index[0, 0]) == 3 * 11 + 3 * 7 + 3  # zero offset


# ----------------------------------------------------------------------------------------
# Reduced forwards.


def test_synapse_deep_supervision():
  model = seeded(torch_nnformer.build("synapse", **SYNAPSE), 0)
  x = volume(model, 1, batch=2)
  with torch.no_grad():
    outs = model(x)
    model.do_ds = False
    single = model(x)
  assert [tuple(o.shape) for o in outs] == [(2, 3, 32, 64, 64), (2, 3, 16, 32, 32),
                                            (2, 3, 8, 16, 16)]
  assert torch.equal(outs[0], single)  # final[0] on the last decoder output either way
  assert all(torch.isfinite(o).all() for o in outs)
  # Each head belongs to its scale: the 1/4 output comes from final[2] (4E channels in).
  assert model.final[2].up.in_channels == 4 * SYNAPSE["embedding_dim"]
  # Geometry: masked shifts at stages 0-1, clamped windows with no shift at 2-3.
  assert [(layer.blocks[1].window_size, layer.blocks[1].shift_size)
          for layer in model.model_down.layers] == [
              ((4,) * 3, (2,) * 3), ((4,) * 3, (2,) * 3), ((4,) * 3, (0,) * 3),
              ((2,) * 3, (0,) * 3)]


def test_tumor_heads_and_strides():
  model = seeded(torch_nnformer.build("tumor", **TUMOR, input_channels=4), 2)
  x = volume(model, 3)
  with torch.no_grad():
    out = model(x)
  assert tuple(out.shape) == (1, 3, 32, 64, 64) and torch.isfinite(out).all()
  assert len(model.final) == 1 and not model.do_ds
  # Both embedding blocks stride p/2 = 2 in every axis.
  embed = model.model_down.patch_embed
  assert embed.proj1.conv1.stride == embed.proj2.conv1.stride == (2, 2, 2)
  # num_heads[::-1][:-1]: decoder scale k takes the encoder's heads of scale k + 1.
  heads = [layer.blocks[0].attn.num_heads for layer in model.decoder.layers]
  assert heads == list(SMALL["num_heads"][1:])
  synapse = torch_nnformer.build("synapse", **SYNAPSE)
  assert [layer.blocks[0].attn.num_heads for layer in synapse.decoder.layers] == list(
      SMALL["num_heads"][:-1])
  assert synapse.model_down.patch_embed.proj1.conv1.stride == (2, 2, 2)
  assert synapse.model_down.patch_embed.proj2.conv1.stride == (1, 2, 2)


def test_acdc_depth_handling():
  model = seeded(torch_nnformer.build("acdc", **ACDC), 4)
  assert [layer.blocks[0].input_resolution for layer in model.model_down.layers] == [
      (14, 16, 16), (14, 8, 8), (7, 4, 4), (3, 2, 2)]
  assert [(layer.blocks[1].window_size, layer.blocks[1].shift_size)
          for layer in model.model_down.layers] == [
              ((3, 4, 4), (1, 2, 2)), ((3, 4, 4), (1, 2, 2)), ((7, 4, 4), (0, 0, 0)),
              ((3, 2, 2), (0, 0, 0))]
  merges = [layer.downsample.reduction for layer in model.model_down.layers[:3]]
  assert [(m.kernel_size, m.stride, m.padding) for m in merges] == [
      ((1, 3, 3), (1, 2, 2), (0, 1, 1)), ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
      ((3, 3, 3), (2, 2, 2), (0, 1, 1))]
  ups = [layer.Upsample.up for layer in model.decoder.layers]
  assert [(u.kernel_size, u.output_padding) for u in ups] == [
      ((1, 2, 2), (0, 0, 0)), ((2, 2, 2), (0, 0, 0)), ((2, 2, 2), (1, 0, 0))]
  assert model.model_down.patch_embed.proj1.conv1.stride == (1, 2, 2)
  x = volume(model, 5)
  with torch.no_grad():
    out = model(x)
  assert tuple(out.shape) == (1, 3, 14, 64, 64) and torch.isfinite(out).all()
  # With deep supervision (not the official ACDC setting) the heads show each decoder
  # scale's depth: 14, 14 and 7 (the 3 -> 7 transposed conv needs its output_padding).
  ds = seeded(torch_nnformer.build("acdc", **ACDC, deep_supervision=True), 4)
  with torch.no_grad():
    outs = ds(x)
  assert [tuple(o.shape[2:]) for o in outs] == [(14, 64, 64), (14, 32, 32), (7, 16, 16)]
  assert torch.equal(outs[0], out)  # same seed, same tensors: final[0] is the same head


# ----------------------------------------------------------------------------------------
# Quirks, checked on single blocks.


def _perturbation_reach(model, stage: int, block: int, target) -> float:
  """Max change of the block's output at voxel ``target`` when the input at voxel 0 moves."""
  layer = model.model_down.layers[stage]
  blk = layer.blocks[block]
  size = blk.input_resolution
  dim = blk.norm1.normalized_shape[0]
  gen = torch.Generator().manual_seed(6)
  x = torch.randn(1, size[0] * size[1] * size[2], dim, generator=gen)
  moved = x.clone()
  moved[0, 0] = torch.randn(dim, generator=gen)  # a new token (LayerNorm ignores offsets)
  mask = None
  if layer.masked:
    mask = torch_nnformer._modules().shift_mask(size, layer.window_size, layer.window_size // 2,
                                                x.device)
  with torch.no_grad():
    a, b = blk(x, mask).view(*size, dim), blk(moved, mask).view(*size, dim)
  return float((a[target] - b[target]).abs().max())


def test_shifted_windows_masked_or_wrapping():
  """The shifted window at the far corner holds the last rows and, rolled around, the first
  ones. Synapse masks them apart; ACDC has no mask, so voxel 0 reaches the far corner."""
  synapse = seeded(torch_nnformer.build("synapse", **SYNAPSE), 7)
  acdc = seeded(torch_nnformer.build("acdc", **ACDC), 7)
  assert _perturbation_reach(synapse, 0, 1, (15, 15, 15)) < 1e-6
  assert _perturbation_reach(synapse, 0, 1, (1, 1, 1)) > 1e-3  # same region: it does reach
  # ACDC depth 14 pads to 15 (window 3); rolled by 1, the last window is rows 13, pad, 0.
  assert _perturbation_reach(acdc, 0, 1, (13, 15, 15)) > 1e-3
  # Unshifted, neither reaches across windows.
  assert _perturbation_reach(acdc, 0, 0, (13, 15, 15)) == 0.0
  assert _perturbation_reach(synapse, 0, 0, (15, 15, 15)) == 0.0


def test_skip_attention_block():
  """The first decoder block, computed by hand on a single global window (the 4^3 map at
  decoder scale 2): Q = norm1(x_up) unprojected, K, V = kv(norm1(skip)), residual
  x_up + skip."""
  model = seeded(torch_nnformer.build("synapse", **SYNAPSE), 8)
  blk = model.decoder.layers[2].blocks[0]
  assert blk.input_resolution == blk.window_size == (4, 4, 4) and blk.shift_size == (0, 0, 0)
  n, c, heads = 64, blk.norm1.normalized_shape[0], blk.attn.num_heads
  d = c // heads
  gen = torch.Generator().manual_seed(9)
  x_up, skip = torch.randn(2, n, c, generator=gen), torch.randn(2, n, c, generator=gen)
  with torch.no_grad():
    got = blk(x_up + skip, None, skip=skip, x_up=x_up)
    q = blk.norm1(x_up).view(2, n, heads, d).transpose(1, 2)
    k, v = blk.attn.kv(blk.norm1(skip)).view(2, n, 2, heads, d).permute(2, 0, 3, 1, 4)
    bias = blk.attn.relative_position_bias_table[blk.attn.relative_position_index.view(-1)]
    logits = q @ k.transpose(-1, -2) / d**0.5 + bias.view(n, n, heads).permute(2, 0, 1)
    attended = (logits.softmax(-1) @ v).transpose(1, 2).reshape(2, n, c)
    y = x_up + skip + blk.attn.proj(attended)
    want = y + blk.mlp(blk.norm2(y))
  torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_drop_path_schedule():
  """Encoder and decoder each linspace(0, 0.2, 8 / 6); decoder list index 0 (the official
  i_layer 2, full resolution) takes the last slice."""
  model = torch_nnformer.build("synapse", **SYNAPSE)

  def rates(layers):
    return [[blk.drop_path.drop_prob if isinstance(blk.drop_path, DropPath) else 0.0
             for blk in layer.blocks] for layer in layers]

  assert not isinstance(model.model_down.layers[0].blocks[0].drop_path, DropPath)
  enc = [r for stage in rates(model.model_down.layers) for r in stage]
  assert enc == pytest.approx([0.2 * i / 7 for i in range(8)])
  assert rates(model.decoder.layers) == [pytest.approx([0.16, 0.2]),
                                         pytest.approx([0.08, 0.12]),
                                         pytest.approx([0.0, 0.04])]
  no_drop = torch_nnformer.build("synapse", **SYNAPSE, drop_path_rate=0.0)
  assert not any(isinstance(m, DropPath) for m in no_drop.modules()) and not no_drop.training
