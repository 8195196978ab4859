"""swin_jax.convert: PyTorch (official / timm) checkpoints <-> swin_jax params.

Expectations are built independently of the converter: state dicts come from timm models
filled with random values, the official layout is derived from timm's by the renames in the
spec (section 4), expected Flax params are derived from timm's module types (Linear ->
transposed ``kernel``, Conv2d -> HWIO ``kernel``, LayerNorm ``weight`` -> ``scale``), resized
bias tables come from ``torch.nn.functional.interpolate`` exactly as the official
``load_pretrained`` calls it, and buffers come from timm's own computed module attributes.
Everything uses tiny models on CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F

import swin_jax
from torch_oracle import timm_to_official
from swin_jax.convert import (CheckpointMismatchError, export_torch_state_dict, head_map,
                              load_torch_checkpoint, map_22k_to_1k, resize_bias_table)
from swin_jax.models import SwinTransformer

# 3 stages at 64x64: resolutions 16, 8, 4 tokens; window 4 everywhere (stage 3 is clamped:
# resolution 4 = window, no shift, so no attention mask). Window multiples everywhere, so
# timm with strict_img_size=True builds the same buffers as the official code.
TINY = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4),
            window_size=4, num_classes=10)
# An independent copy of the official map, the oracle for the packaged one (tests/data/README.md).
OFFICIAL_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                            "official_map22kto1k.txt")


# ----------------------------------------------------------------------------- helpers


def _timm_model(**overrides) -> torch.nn.Module:
  return timm.models.swin_transformer.SwinTransformer(**{**TINY, **overrides}).eval()


def _random_state_dict(timm_model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
  """timm's state dict with fresh random values in EVERY tensor (norms and biases too)."""
  gen = torch.Generator().manual_seed(seed)
  out = {}
  for key, value in timm_model.state_dict().items():
    assert value.is_floating_point(), key  # timm's V1 buffers are not persistent
    out[key] = torch.randn(value.shape, generator=gen, dtype=value.dtype)
  return out


def _official_buffers(timm_model: torch.nn.Module) -> dict[str, torch.Tensor]:
  """The official persistent buffers, as timm computes them (timm's are not persistent)."""
  out = {}
  for i, stage in enumerate(timm_model.layers):
    for j, block in enumerate(stage.blocks):
      prefix = f"layers.{i}.blocks.{j}."
      out[prefix + "attn.relative_position_index"] = block.attn.relative_position_index
      if block.attn_mask is not None:  # a None buffer is not saved by the official model
        out[prefix + "attn_mask"] = block.attn_mask
  return out


def _expected_params(timm_model: torch.nn.Module, timm_sd: dict) -> dict:
  """Flat ``{flax_path: np.ndarray}`` for a timm-layout state dict, from timm's module types."""
  official = timm_to_official(timm_sd)
  renamed = dict(zip(official, timm_sd))  # official key -> timm key
  out = {}
  for key, value in official.items():
    module_name, leaf = renamed[key].rsplit(".", 1)
    module = timm_model.get_submodule(module_name)
    value = value.detach().float().numpy()
    if leaf == "weight" and isinstance(module, torch.nn.LayerNorm):
      leaf = "scale"
    elif leaf == "weight" and isinstance(module, torch.nn.Linear):
      leaf, value = "kernel", value.T
    elif leaf == "weight" and isinstance(module, torch.nn.Conv2d):
      leaf, value = "kernel", value.transpose(2, 3, 1, 0)
    else:
      assert leaf in ("bias", "relative_position_bias_table"), key
    parts: list[str] = []
    for part in key.rsplit(".", 1)[0].split("."):
      if part.isdigit():
        parts[-1] += f"_{part}"
      else:
        parts.append(part)
    out[(*parts, leaf)] = value
  return out


def _flatten(tree, prefix=()) -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, "items"):
      out.update(_flatten(value, (*prefix, key)))
    else:
      out[(*prefix, key)] = np.asarray(value)
  return out


def _nest(flat: dict) -> dict:
  nested: dict = {}
  for path, value in flat.items():
    node = nested
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return nested


def _random_params(expected_flat: dict, seed: int) -> dict:
  """A nested params tree of jax arrays with the expected structure and random values."""
  rng = np.random.default_rng(seed)
  return _nest({path: jnp.asarray(rng.standard_normal(v.shape), jnp.float32)
                for path, v in expected_flat.items()})


def _assert_same_params(actual, expected_flat: dict) -> None:
  actual_flat = _flatten(actual)
  assert sorted(actual_flat) == sorted(expected_flat)
  for path, value in expected_flat.items():
    assert actual_flat[path].dtype == np.float32, path
    assert actual_flat[path].shape == value.shape, path
    np.testing.assert_array_equal(actual_flat[path], value, err_msg=str(path))


def _assert_same_state_dict(actual: dict, expected: dict) -> None:
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    value = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    got = actual[key].numpy() if isinstance(actual[key], torch.Tensor) else actual[key]
    assert got.shape == value.shape, key
    assert np.array_equal(got, value), key


def _torch_resize(table: np.ndarray, side: int) -> np.ndarray:
  """The official ``load_pretrained`` bias-table resize."""
  length, heads = table.shape
  s1 = int(np.sqrt(length))
  t = torch.from_numpy(np.asarray(table, np.float32))
  out = F.interpolate(t.permute(1, 0).view(1, heads, s1, s1), size=(side, side),
                      mode="bicubic", align_corners=False)
  return out.view(heads, side * side).permute(1, 0).numpy()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_timm():
  return _timm_model()


@pytest.fixture(scope="module")
def timm_sd(tiny_timm):
  return _random_state_dict(tiny_timm, seed=0)


@pytest.fixture(scope="module")
def official_sd(timm_sd):
  return timm_to_official(timm_sd)


@pytest.fixture(scope="module")
def expected(tiny_timm, timm_sd):
  return _expected_params(tiny_timm, timm_sd)


@pytest.fixture(scope="module")
def model():
  return SwinTransformer(**TINY)


# ----------------------------------------------------------------------------- 1. resize


@pytest.mark.parametrize("std", [1.0, 0.02])
@pytest.mark.parametrize("s_in,s_out", [(13, 23), (23, 13), (11, 19)])
def test_resize_bias_table_equals_torch_bicubic(std, s_in, s_out):
  heads = 4
  table = (np.random.default_rng(s_in * 100 + s_out).standard_normal((s_in * s_in, heads))
           * std).astype(np.float32)
  ours = resize_bias_table(table, (s_out, s_out))
  assert ours.shape == (s_out * s_out, heads) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, _torch_resize(table, s_out), rtol=0, atol=1e-6 * std)


def test_resize_bias_table_identity_size_is_exact():
  table = np.random.default_rng(0).standard_normal((169, 3)).astype(np.float32)
  np.testing.assert_array_equal(resize_bias_table(table, (13, 13)), table)


# ----------------------------------------------------------------------------- 2. W7 -> W12


@pytest.fixture(scope="module")
def window7_timm():
  # 192x192: resolutions 48, 24, 12, 6 -> windows 7, 7, 7, 6 (the clamp): tables 13^2, 11^2.
  tm = timm.models.swin_transformer.SwinTransformer(
      img_size=192, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
      window_size=7, num_classes=10)
  return tm, _random_state_dict(tm, seed=1)


@pytest.mark.parametrize("img_size", [384, 320])
def test_window7_checkpoint_into_window12_model(window7_timm, img_size):
  tm, sd = window7_timm
  model = SwinTransformer(img_size=img_size, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2),
                          num_heads=(1, 2, 2, 4), window_size=12, num_classes=10)
  params = _flatten(load_torch_checkpoint(sd, model))
  plain = _expected_params(tm, sd)
  resized = 0
  for stage in range(4):
    resolution = img_size // 4 // 2**stage
    window = min(resolution, 12)  # 320: stage 4 is 10x10 -> window 10 (19^2 table)
    for block in range(2):
      assert model.block_geometry(stage, block)[0] == (window, window)
      key = f"layers.{stage}.blocks.{block}.attn.relative_position_bias_table"
      source = sd[key].numpy()
      assert source.shape[0] == (13**2 if stage < 3 else 11**2)
      got = params[(f"layers_{stage}", f"blocks_{block}", "attn",
                    "relative_position_bias_table")]
      assert got.shape == ((2 * window - 1)**2, source.shape[1])
      np.testing.assert_allclose(got, _torch_resize(source, 2 * window - 1), rtol=0,
                                 atol=1e-6, err_msg=key)
      resized += 1
  assert resized == 8
  for path, value in plain.items():  # everything else is taken as is
    if path[-1] != "relative_position_bias_table":
      np.testing.assert_array_equal(params[path], value, err_msg=str(path))


# ----------------------------------------------------------------------------- 3. 22K -> 1K


def test_shipped_22k_to_1k_map_is_the_official_one():
  with open(OFFICIAL_MAP) as f:
    official = [int(line) for line in f.read().split()]
  assert len(official) == 1000 and official[:3] == [359, 368, 460]
  shipped_file = swin_jax.__path__[0] + "/data/map22kto1k.txt"
  with open(shipped_file) as f:
    assert [int(line) for line in f.read().split()] == official
  np.testing.assert_array_equal(map_22k_to_1k(), official)


def _lines(name: str) -> list[str]:
  with open(os.path.join(swin_jax.__path__[0], "data", name)) as f:
    return f.read().split()


def test_fall11_map_is_by_synset_and_deviates_from_the_official_one_as_documented():
  official = np.loadtxt(OFFICIAL_MAP, dtype=np.int64)
  fall11 = map_22k_to_1k("fall11")
  np.testing.assert_array_equal(map_22k_to_1k("official"), official)
  fall11_synsets, synsets_1k = _lines("imagenet22k_synsets.txt"), _lines("imagenet_synsets.txt")
  assert len(fall11_synsets) == 21841 and fall11_synsets == sorted(fall11_synsets)
  # Every 1K class but teddy bear is a fall11 synset, at the row the map gives.
  assert synsets_1k[850] == "n04399382" and "n04399382" not in fall11_synsets
  assert head_map.missing_1k_classes("fall11") == [850]
  assert head_map.missing_1k_classes("official") == []
  assert fall11[850] == head_map.NO_ROW and official[850] == 5564
  for i, row in enumerate(fall11):
    if i != 850:
      assert fall11_synsets[row] == synsets_1k[i], i
  # The official head order (head_map.py): the first 718 classes at their sorted
  # position, one higher from class 718 (pier), two higher from class 982.
  assert synsets_1k[718] == "n03933933"
  np.testing.assert_array_equal(official[:718], fall11[:718])
  later = np.array([i for i in range(718, 982) if i != 850])
  np.testing.assert_array_equal(official[later], fall11[later] + 1)
  np.testing.assert_array_equal(official[982:], fall11[982:] + 2)


def test_unknown_label_space_is_refused(model, official_sd):
  with pytest.raises(ValueError, match="label_space"):
    map_22k_to_1k("imagenet21k")
  with pytest.raises(ValueError, match="label_space"):
    load_torch_checkpoint(official_sd, model, label_space="sorted")


@pytest.fixture(scope="module")
def sd_22k():
  return timm_to_official(_random_state_dict(_timm_model(num_classes=21841), seed=2))


@pytest.mark.parametrize("given_fallback", [False, True])
def test_22k_head_in_the_fall11_label_space(sd_22k, given_fallback, caplog):
  w22k, b22k = sd_22k["head.weight"].numpy(), sd_22k["head.bias"].numpy()
  fall11_synsets, synsets_1k = _lines("imagenet22k_synsets.txt"), _lines("imagenet_synsets.txt")
  model_1k = SwinTransformer(**{**TINY, "num_classes": 1000})
  fallback = None
  if given_fallback:
    fallback = _nest({path: np.full(v.shape, 3.0, np.float32) for path, v in
                      swin_jax.convert.abstract_params(model_1k).items()})
  with caplog.at_level(logging.WARNING):
    params = load_torch_checkpoint(sd_22k, model_1k, fallback_params=fallback,
                                   label_space="fall11")
  kernel, bias = params["head"]["kernel"], params["head"]["bias"]
  for i in (0, 500, 717, 718, 849, 851, 981, 982, 999):
    row = fall11_synsets.index(synsets_1k[i])
    np.testing.assert_array_equal(kernel[:, i], w22k[row], err_msg=str(i))
    assert bias[i] == b22k[row], i
  # Teddy bear keeps the model's own values: the fallback, or the official fresh init.
  if given_fallback:
    np.testing.assert_array_equal(kernel[:, 850], np.full(64, 3.0, np.float32))
    assert bias[850] == 3.0
  else:
    assert bias[850] == 0.0 and 0.01 < kernel[:, 850].std() < 0.03  # trunc_normal(0.02)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 2  # one per head tensor
  assert all("850 (teddy, teddy bear)" in w and "fall11" in w for w in warnings)
  # The rest of the model is the checkpoint's, as in the official label space.
  np.testing.assert_array_equal(params["norm"]["scale"], sd_22k["norm.weight"].numpy())


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_22k_head_is_mapped_to_1k(layout):
  tm = _timm_model(num_classes=21841)
  sd = _random_state_dict(tm, seed=2)
  if layout == "official":
    sd = timm_to_official(sd)
  prefix = "head." if layout == "official" else "head.fc."
  w22k, b22k = sd[prefix + "weight"].numpy(), sd[prefix + "bias"].numpy()
  assert w22k.shape == (21841, 64)
  index = np.loadtxt(OFFICIAL_MAP, dtype=np.int64)
  params = load_torch_checkpoint(sd, SwinTransformer(**{**TINY, "num_classes": 1000}))
  np.testing.assert_array_equal(params["head"]["kernel"], w22k[index].T)
  np.testing.assert_array_equal(params["head"]["bias"], b22k[index])
  np.testing.assert_array_equal(params["norm"]["scale"], sd["norm.weight"].numpy())


# ----------------------------------------------------------------------------- 4. round trips


def test_official_layout_round_trip_and_buffers(model, official_sd, expected):
  buffers = {k: v.clone() for k, v in _official_buffers(_timm_model()).items()}
  # An official checkpoint carries the buffers; loading drops them.
  params = load_torch_checkpoint({**official_sd, **buffers}, model)
  _assert_same_params(params, expected)
  _assert_same_state_dict(export_torch_state_dict(params, model), official_sd)
  # With buffers: exactly the official state dict (shifted blocks only have an attn_mask).
  assert {k for k in buffers if k.endswith("attn_mask")} == {
      "layers.0.blocks.1.attn_mask", "layers.1.blocks.1.attn_mask"}
  full = export_torch_state_dict(params, model, include_buffers=True)
  _assert_same_state_dict(full, {**official_sd, **buffers})
  assert full["layers.0.blocks.0.attn.relative_position_index"].dtype == np.int64
  assert full["layers.0.blocks.1.attn_mask"].dtype == np.float32


def test_timm_layout_round_trip(model, timm_sd, expected):
  params = load_torch_checkpoint(timm_sd, model)
  _assert_same_params(params, expected)
  _assert_same_state_dict(export_torch_state_dict(params, model, layout="timm"), timm_sd)


def test_timm_export_loads_into_timm_strictly(model, timm_sd):
  params = load_torch_checkpoint(timm_sd, model)
  tm = _timm_model()
  tm.load_state_dict(export_torch_state_dict(params, model, layout="timm", to_torch=True),
                     strict=True)
  _assert_same_state_dict(tm.state_dict(), timm_sd)


def test_params_export_load_round_trip(model, expected):
  params = _random_params(expected, seed=3)
  flat = _flatten(params)
  for layout in ("official", "timm"):
    sd = export_torch_state_dict(params, model, layout=layout)
    _assert_same_params(load_torch_checkpoint(sd, model), flat)


def test_to_torch_returns_torch_tensors(model, official_sd):
  params = load_torch_checkpoint(official_sd, model)
  sd = export_torch_state_dict(params, model, include_buffers=True, to_torch=True)
  assert all(isinstance(v, torch.Tensor) for v in sd.values())
  assert sd["layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
  assert sd["patch_embed.proj.weight"].dtype == torch.float32
  for key, value in official_sd.items():
    assert torch.equal(sd[key], value), key


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_to_torch_tensors_do_not_alias_params(model, official_sd, expected):
  for params in (_random_params(expected, seed=4), load_torch_checkpoint(official_sd, model)):
    before = {k: v.copy() for k, v in _flatten(params).items()}
    for tensor in export_torch_state_dict(params, model, to_torch=True).values():
      tensor.add_(1.0)
    for path, value in _flatten(params).items():
      np.testing.assert_array_equal(value, before[path], err_msg=str(path))


# ----------------------------------------------------------------------------- 5. readers


@pytest.mark.parametrize("form", ["torch_dict", "numpy_dict", "official_pth", "plain_pth",
                                  "state_dict_pth", "ddp_pth", "safetensors", "npz", "bin"])
def test_readers_give_identical_params(form, model, official_sd, timm_sd, expected, tmp_path):
  sd = official_sd if form in ("official_pth", "ddp_pth", "safetensors") else timm_sd
  numpy_sd = {k: v.numpy() for k, v in sd.items()}
  if form == "torch_dict":
    source = sd
  elif form == "numpy_dict":
    source = numpy_sd
  elif form == "official_pth":
    source = tmp_path / "ckpt.pth"  # a pathlib.Path
    torch.save({"model": sd, "epoch": 3, "max_accuracy": 81.2}, source)
  elif form == "plain_pth":
    source = str(tmp_path / "ckpt.pth")
    torch.save(sd, source)
  elif form == "state_dict_pth":
    source = str(tmp_path / "ckpt.pt")
    torch.save({"state_dict": sd}, source)
  elif form == "ddp_pth":
    source = str(tmp_path / "ckpt.pth")
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, source)
  elif form == "safetensors":
    source = str(tmp_path / "ckpt.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, source)
  elif form == "npz":
    source = str(tmp_path / "ckpt.npz")
    np.savez(source, **numpy_sd)
  else:
    source = str(tmp_path / "pytorch_model.bin")
    torch.save(sd, source)
  _assert_same_params(load_torch_checkpoint(source, model), expected)


def test_checkpoint_with_pickled_objects_loads_with_a_warning(model, official_sd, expected,
                                                            tmp_path, caplog):
  # Official training checkpoints also pickle their (yacs) config, which torch's safe
  # loader refuses.
  path = str(tmp_path / "ckpt_epoch_3.pth")
  torch.save({"model": official_sd, "config": argparse.Namespace(lr=1e-3), "epoch": 3}, path)
  with caplog.at_level(logging.WARNING):
    _assert_same_params(load_torch_checkpoint(path, model), expected)
  assert any("weights_only=False" in r.getMessage() for r in caplog.records)


def test_buffers_in_input_are_dropped_silently(model, official_sd, timm_sd, expected, caplog):
  buffers = {k: v.clone() for k, v in _official_buffers(_timm_model()).items()}
  with caplog.at_level(logging.WARNING):
    _assert_same_params(load_torch_checkpoint({**official_sd, **buffers}, model), expected)
    _assert_same_params(load_torch_checkpoint({**timm_sd, **buffers}, model), expected)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_half_precision_input_becomes_float32(model, timm_sd):
  half = {k: v.to(torch.bfloat16) for k, v in timm_sd.items()}
  params = _flatten(load_torch_checkpoint(half, model))
  assert params[("norm", "scale")].dtype == np.float32
  np.testing.assert_array_equal(params[("norm", "scale")],
                                half["norm.weight"].float().numpy())


def test_loaded_params_do_not_alias_the_input(model):
  sd = {k: v.numpy().copy() for k, v in _random_state_dict(_timm_model(), seed=5).items()}
  params = load_torch_checkpoint(sd, model)
  before = params["norm"]["bias"].copy()
  sd["norm.bias"] += 1
  np.testing.assert_array_equal(params["norm"]["bias"], before)


# ----------------------------------------------------------------------------- 6. bad input


def _problem_lines(message: str, kind: str) -> list[str]:
  return [line for line in message.splitlines() if line.strip().startswith(kind)]


def test_wrong_variant_lists_every_mismatch(model, official_sd):
  big = timm_to_official(_random_state_dict(_timm_model(embed_dim=32), seed=6))
  assert sorted(big) == sorted(official_sd)
  mismatched = [k for k in big if big[k].shape != official_sd[k].shape]
  assert len(mismatched) > 20
  with pytest.raises(CheckpointMismatchError) as info:
    load_torch_checkpoint(big, model)
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert f"({len(mismatched)} problem(s))" in message
  assert len(_problem_lines(message, "shape mismatch:")) == len(mismatched)
  for key in mismatched:
    assert (f"shape mismatch: {key} checkpoint {tuple(big[key].shape)} vs model "
            f"{tuple(official_sd[key].shape)}") in message
  assert "checkpoint looks like: embed_dim=32 " in message
  assert not _problem_lines(message, "missing") and not _problem_lines(message, "unexpected")


def test_summary_reports_the_first_stage_window(window7_timm):
  _, sd = window7_timm  # windows 7, 7, 7, 6 (the last stage is clamped)
  model = SwinTransformer(img_size=192, patch_size=4, embed_dim=32, depths=(2, 2, 2, 2),
                          num_heads=(1, 2, 2, 4), window_size=7, num_classes=10)
  with pytest.raises(CheckpointMismatchError) as info:
    load_torch_checkpoint(sd, model)
  assert ("checkpoint looks like: embed_dim=16 depths=(2, 2, 2, 2) num_heads=(1, 2, 2, 4) "
          "window(stage 1)=7 num_classes=10") in str(info.value)


def test_missing_keys_are_named(model, official_sd):
  removed = ["layers.1.blocks.0.mlp.fc1.weight", "head.bias"]
  sd = {k: v for k, v in official_sd.items() if k not in removed}
  with pytest.raises(CheckpointMismatchError) as info:
    load_torch_checkpoint(sd, model)
  message = str(info.value)
  assert "(2 problem(s))" in message
  lines = _problem_lines(message, "missing from checkpoint:")
  assert len(lines) == 2
  for key in removed:
    assert (f"missing from checkpoint: {key} (model shape {tuple(official_sd[key].shape)})"
            in message)


def test_unexpected_keys_are_named(model, timm_sd):
  sd = {**timm_sd, "foo.bar.weight": torch.zeros(3, 4)}
  with pytest.raises(CheckpointMismatchError) as info:
    load_torch_checkpoint(sd, model)
  message = str(info.value)
  assert "(1 problem(s))" in message
  assert "unexpected in checkpoint: foo.bar.weight (3, 4)" in message


@pytest.mark.parametrize("classes", [5, 21841])
def test_head_with_other_class_count_is_a_mismatch(model, classes):
  sd = _random_state_dict(_timm_model(num_classes=classes), seed=7)
  with pytest.raises(CheckpointMismatchError) as info:
    load_torch_checkpoint(sd, model)
  message = str(info.value)
  assert "(2 problem(s))" in message
  assert f"shape mismatch: head.weight checkpoint ({classes}, 64) vs model (10, 64)" in message
  assert f"shape mismatch: head.bias checkpoint ({classes},) vs model (10,)" in message


def test_table_with_other_head_count_is_not_resized(model):
  # Window 7 and heads (2, 2, 4): stage 1's tables differ in heads (a mismatch, even though
  # the window differs too); stage 2's have the model's heads and are resized 13^2 -> 7^2.
  sd = _random_state_dict(_timm_model(window_size=7, num_heads=(2, 2, 4)), seed=8)
  with pytest.raises(CheckpointMismatchError) as info:
    load_torch_checkpoint(sd, model)
  message = str(info.value)
  assert "(2 problem(s))" in message
  for block in (0, 1):
    assert (f"shape mismatch: layers.0.blocks.{block}.attn.relative_position_bias_table "
            "checkpoint (169, 2) vs model (49, 1)") in message


@pytest.mark.parametrize("shape", [(50, 1), (49,)])
def test_malformed_table_is_reported_as_mismatch(model, timm_sd, expected, shape):
  key = "layers.0.blocks.0.attn.relative_position_bias_table"
  sd = {**timm_sd, key: torch.zeros(shape)}
  with pytest.raises(CheckpointMismatchError, match=re.escape(f"shape mismatch: {key}")):
    load_torch_checkpoint(sd, model)
  params = load_torch_checkpoint(sd, model, strict=False,
                                 fallback_params=_random_params(expected, seed=0))
  assert params["layers_0"]["blocks_0"]["attn"]["relative_position_bias_table"].shape == (49, 1)


def test_not_strict_keeps_fallback_for_what_does_not_fit(model, official_sd, expected, caplog):
  big = timm_to_official(_random_state_dict(_timm_model(embed_dim=32), seed=6))
  sd = {k: v for k, v in big.items() if k != "layers.2.blocks.1.attn.relative_position_bias_table"}
  sd["foo.bar.weight"] = torch.zeros(2)
  fallback = {path: np.full(v.shape, 7.0, np.float32) for path, v in expected.items()}
  nested = _nest(fallback)
  with caplog.at_level(logging.WARNING):
    params = _flatten(load_torch_checkpoint(sd, model, strict=False, fallback_params=nested))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert "shape mismatch: patch_embed.proj.weight" in warnings[0]
  assert "missing from checkpoint: layers.2.blocks.1.attn.relative_position_bias_table" in (
      warnings[0])
  assert "unexpected in checkpoint: foo.bar.weight" in warnings[0]
  assert sorted(params) == sorted(expected)
  fits = 0
  for path, value in expected.items():
    key = ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1])
    key += "." + {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    if key in sd and tuple(sd[key].shape) == tuple(official_sd[key].shape):
      # Fits (the tables, whose shape only depends on the heads, and head.bias).
      np.testing.assert_array_equal(params[path], sd[key].numpy(), err_msg=key)
      fits += 1
    else:
      np.testing.assert_array_equal(params[path], fallback[path], err_msg=key)
  assert fits == 6


def test_not_strict_default_fallback_is_fresh_init():
  # A one-block model: the default fallback jit-compiles an init.
  config = dict(img_size=16, patch_size=4, embed_dim=8, depths=(1,), num_heads=(1,),
                window_size=4, num_classes=3)
  tm = timm.models.swin_transformer.SwinTransformer(**config)
  sd = _random_state_dict(tm, seed=9)
  expected_flat = _expected_params(tm, sd)
  removed = {"norm.weight": ("norm", "scale"), "head.fc.bias": ("head", "bias"),
             "layers.0.blocks.0.mlp.fc1.weight": ("layers_0", "blocks_0", "mlp", "fc1", "kernel")}
  params = _flatten(load_torch_checkpoint({k: v for k, v in sd.items() if k not in removed},
                                          SwinTransformer(**config), strict=False))
  assert sorted(params) == sorted(expected_flat)
  for path, value in expected_flat.items():
    if path not in removed.values():
      np.testing.assert_array_equal(params[path], value, err_msg=str(path))
  # The official init: LayerNorm weight 1, head bias 0, Linear weights trunc_normal(std .02).
  np.testing.assert_array_equal(params[("norm", "scale")], np.ones(8, np.float32))
  np.testing.assert_array_equal(params[("head", "bias")], np.zeros(3, np.float32))
  fc1 = params[removed["layers.0.blocks.0.mlp.fc1.weight"]]
  assert fc1.shape == (8, 32)
  assert 0.015 < fc1.std() < 0.025 and abs(fc1.mean()) < 0.005


def test_nonexistent_path(model, tmp_path):
  missing = str(tmp_path / "no_such_checkpoint.pth")
  with pytest.raises(FileNotFoundError, match=re.escape(missing)):
    load_torch_checkpoint(missing, model)


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3, "note": "x"}])
def test_file_that_is_not_a_state_dict(model, tmp_path, content):
  path = str(tmp_path / "bad.pth")
  torch.save(content, path)
  with pytest.raises(ValueError):
    load_torch_checkpoint(path, model)


# ----------------------------------------------------------------------------- 7. export


def test_export_rejects_params_of_another_model(model):
  other = SwinTransformer(**{**TINY, "embed_dim": 32})
  params = load_torch_checkpoint(_random_state_dict(_timm_model(embed_dim=32), seed=10), other)
  with pytest.raises(CheckpointMismatchError):
    export_torch_state_dict(params, model)
  with pytest.raises(CheckpointMismatchError):
    export_torch_state_dict({k: v for k, v in params.items() if k != "head"}, other)


def test_export_rejects_bad_layout(model, official_sd):
  params = load_torch_checkpoint(official_sd, model)
  with pytest.raises(ValueError, match="bogus"):
    export_torch_state_dict(params, model, layout="bogus")
  with pytest.raises(ValueError):  # timm's buffers are not persistent
    export_torch_state_dict(params, model, layout="timm", include_buffers=True)
