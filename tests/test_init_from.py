"""init_from and the converter on a Swin nested in a task model (``params['backbone']``).

The oracle for every backbone value is the root-Swin conversion of the same checkpoint
(``load_torch_checkpoint`` on a classifier built like the backbone), which test_convert.py
checks against timm and torch's bicubic resize; the report is checked against names built
from the checkpoint's own keys. Checkpoints are timm models filled with random values.
"""

from __future__ import annotations

import json
import logging
import os
import re

import flax
import numpy as np
import pytest
import timm
import torch

from nested_models import TINY_BACKBONE, tiny_nested_model
from torch_oracle import timm_to_official
from swin_jax.convert import (CheckpointMismatchError, abstract_params, head_map,
                              load_torch_checkpoint, load_torch_variables, load_with_report,
                              params_dir)
from swin_jax.convert.torch_checkpoint import params_to_state_dict
from swin_jax.models import scan_layout
from swin_jax.models.swin import SwinTransformer
from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train import init_from

DEPTHS = TINY_BACKBONE["depths"]
# The classifier the nested backbone is built like (its own norm and a 10-class head).
CLASSIFIER = {**TINY_BACKBONE, "num_classes": 10, "feature_norm": False}
TIMM_ARGS = {k: TINY_BACKBONE[k] for k in ("img_size", "patch_size", "embed_dim", "depths",
                                           "num_heads", "window_size")}
FEATURE_NORMS = [f"backbone.norm{i}.{leaf}" for i in range(3) for leaf in ("weight", "bias")]


def _random_official_sd(seed: int, **timm_overrides) -> dict[str, torch.Tensor]:
  """A timm classifier's state dict, random in every tensor, renamed to the official layout."""
  tm = timm.models.swin_transformer.SwinTransformer(
      **{**TIMM_ARGS, "num_classes": 10, **timm_overrides})
  gen = torch.Generator().manual_seed(seed)
  return timm_to_official({k: torch.randn(v.shape, generator=gen)
                           for k, v in tm.state_dict().items()})


def _flat(tree) -> dict:
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(dict(tree)).items()}


def _filled(model, value: float) -> dict:
  """A params tree of ``model`` (its own layout) with every entry ``value``."""
  return flax.traverse_util.unflatten_dict(
      {p: np.full(s.shape, value, np.float32) for p, s in abstract_params(model).items()})


def _random_params(model, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return flax.traverse_util.unflatten_dict(
      {p: rng.standard_normal(s.shape).astype(np.float32)
       for p, s in abstract_params(model).items()})


def _per_block(params, model) -> dict:
  """Flat per-block params of a nested model in either layout."""
  if model.backbone.scan_blocks:
    params = scan_layout.unstack_blocks_at(params, ("backbone",), DEPTHS)
  return _flat(params)


def _assert_backbone_is(flat: dict, reference: dict) -> None:
  """The backbone (bar its feature norms) equals the root conversion (bar norm and head)."""
  for path, value in reference.items():
    if path[0] not in ("norm", "head"):
      np.testing.assert_array_equal(flat[("backbone", *path)], value, err_msg=str(path))


def _save_pth(tmp_path, sd, name="ckpt.pth") -> str:
  path = str(tmp_path / name)
  torch.save({"model": sd, "epoch": 3}, path)
  return path


def _fake_run(workdir, params, model_name: str, dataset: str) -> str:
  """A run dir as the training loop leaves it: config.json and checkpoints/<step>/state."""
  os.makedirs(workdir)
  with open(os.path.join(workdir, init_from.RUN_CONFIG_FILE), "w") as f:
    json.dump({"model": {"name": model_name, "overrides": {}}, "dataset": {"name": dataset}}, f)
  with checkpoint_lib.Checkpointer(workdir) as ckpt:
    ckpt.save(2, {"params": params, "step": np.int32(2)}, {"position": 0}, force=True)
    ckpt.wait()
  return str(workdir)


@pytest.fixture(scope="module")
def official_sd():
  return _random_official_sd(seed=0)


@pytest.fixture(scope="module")
def reference(official_sd):
  return _flat(load_torch_checkpoint(official_sd, SwinTransformer(**CLASSIFIER)))


def _expected_loaded(official_sd) -> list[str]:
  return sorted("backbone." + k for k in official_sd if not k.startswith(("norm.", "head.")))


# ---------------------------------------------------------------------- classifier -> task


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_classifier_pth_fills_just_the_backbone(official_sd, reference, scan_blocks, tmp_path):
  model = tiny_nested_model(scan_blocks=scan_blocks)
  fallback = _filled(model, 7.0)
  params, report = init_from.load_initial(_save_pth(tmp_path, official_sd), model,
                                          fallback_params=fallback)
  assert scan_layout.is_scanned(params["backbone"]) == scan_blocks
  flat = _per_block(params, model)
  assert sorted(flat) == sorted(_per_block(fallback, model))
  _assert_backbone_is(flat, reference)
  for path, value in flat.items():  # the feature norms and the task head stay at init
    if path[0] == "head" or path[1].startswith("norm") and path[1] != "norm":
      np.testing.assert_array_equal(value, np.full_like(value, 7.0), err_msg=str(path))
  # The report, by official name.
  assert sorted(report.loaded) == _expected_loaded(official_sd)
  assert sorted(report.left_at_init) == sorted(FEATURE_NORMS + ["head.weight", "head.bias"])
  assert sorted(report.dropped) == ["backbone.head.bias", "backbone.head.weight",
                                    "backbone.norm.bias", "backbone.norm.weight"]
  assert report.adapted == ()
  summary = report.summary()
  total = len(report.loaded) + 8
  assert summary.splitlines()[0] == (f"loaded {len(report.loaded)} of {total} params from "
                                     "the checkpoint")
  assert "left at init (8): backbone.norm0.bias, backbone.norm0.weight," in summary
  assert "dropped from the checkpoint (4):" in summary


@pytest.mark.parametrize("source_scan,target_scan", [(False, True), (True, False)])
def test_window_change_resizes_the_tables_like_the_root_conversion(source_scan, target_scan,
                                                                   tmp_path):
  # A W2 classifier (3x3 tables) into the W4 backbone (7x7 tables), from a .pth, or from a
  # swin_jax classifier run in either layout.
  sd = _random_official_sd(seed=1, window_size=2)
  reference = _flat(load_torch_checkpoint(sd, SwinTransformer(**CLASSIFIER)))
  assert reference[("layers_0", "blocks_0", "attn", "relative_position_bias_table")].shape == (
      49, 1)
  source = SwinTransformer(**{**CLASSIFIER, "window_size": 2, "scan_blocks": source_scan})
  run_params = load_torch_checkpoint(sd, source)
  run = _fake_run(tmp_path / "run", run_params, "swin_t", "imagenet2012")
  model = tiny_nested_model(scan_blocks=target_scan)
  for path in (_save_pth(tmp_path, sd), run):
    params, report = init_from.load_initial(path, model, fallback_params=_filled(model, 0.0))
    _assert_backbone_is(_per_block(params, model), reference)
    assert sorted(report.loaded) == _expected_loaded(sd)
    tables = [key for key, how in report.adapted]
    assert tables == [f"backbone.layers.{i}.blocks.{j}.attn.relative_position_bias_table"
                      for i in range(3) for j in range(2)]
    assert all(how == "relative-position bias table resized: (9, %d) -> (49, %d)" % (h, h)
               for (_, how), h in zip(report.adapted, [1, 1, 2, 2, 4, 4]))
    assert "adapted: 6 x relative-position bias table resized" in report.summary()


def test_default_fallback_is_a_fresh_init(official_sd, reference, tmp_path):
  model = tiny_nested_model()
  params, _ = init_from.load_initial(_save_pth(tmp_path, official_sd), model)
  _assert_backbone_is(_flat(params), reference)
  np.testing.assert_array_equal(params["backbone"]["norm0"]["scale"], np.ones(16, np.float32))
  np.testing.assert_array_equal(params["head"]["bias"], np.zeros(10, np.float32))
  # The task head's own init (flax's Dense default, lecun normal: std 1 / sqrt(112)).
  assert 0.07 < params["head"]["kernel"].std() < 0.12


def test_finer_patches_are_resized_so_a_2x_upsampled_image_embeds_the_same(tmp_path):
  """A patch-2 classifier (32 px) into the patch-4 backbone: every other param as the root
  conversion; the patch kernel gives the embedding of each 2x-upsampled (nearest) image
  that the checkpoint's kernel gives of the image itself."""
  sd = _random_official_sd(seed=4, patch_size=2, img_size=32)
  reference = _flat(load_torch_checkpoint(sd, SwinTransformer(
      **{**CLASSIFIER, "patch_size": 2, "img_size": 32})))
  model = tiny_nested_model()
  params, report = init_from.load_initial(_save_pth(tmp_path, sd), model,
                                          fallback_params=_filled(model, 0.0))
  assert report.adapted == (("backbone.patch_embed.proj.weight",
                             "patch embedding resized: (2, 2) -> (4, 4)"),)
  assert sorted(report.loaded) == _expected_loaded(sd)
  flat = _flat(params)
  for path, value in reference.items():
    if path[0] not in ("norm", "head", "patch_embed"):
      np.testing.assert_array_equal(flat[("backbone", *path)], value, err_msg=str(path))
  kernel2 = reference[("patch_embed", "proj", "kernel")]                # (2, 2, 3, 16)
  kernel4 = flat[("backbone", "patch_embed", "proj", "kernel")]         # (4, 4, 3, 16)
  image = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
  upsampled = image.repeat(2, axis=0).repeat(2, axis=1)

  def embed(x, kernel):   # non-overlapping patches: a strided conv, in numpy (float64)
    p = kernel.shape[0]
    patches = x.reshape(x.shape[0] // p, p, x.shape[1] // p, p, 3).transpose(0, 2, 1, 3, 4)
    return np.einsum("hwijc,ijcd->hwd", patches.astype(np.float64), kernel)

  np.testing.assert_allclose(embed(upsampled, kernel4), embed(image, kernel2), rtol=1e-5,
                             atol=1e-5)
  # The converter itself stays strict: another patch size is a mismatch there.
  with pytest.raises(CheckpointMismatchError, match="shape mismatch: patch_embed.proj"):
    load_torch_checkpoint(sd, SwinTransformer(**CLASSIFIER))


def test_another_variant_is_still_an_error(tmp_path):
  sd = _random_official_sd(seed=2, embed_dim=32)
  with pytest.raises(CheckpointMismatchError, match="shape mismatch: backbone.patch_embed") as e:
    init_from.load_initial(_save_pth(tmp_path, sd), tiny_nested_model(),
                           fallback_params=_filled(tiny_nested_model(), 0.0))
  assert "checkpoint looks like: embed_dim=32 " in str(e.value)
  assert "Not tolerated here: mismatch" in str(e.value)


# ---------------------------------------------------------------------- task -> task / classifier


def _task_model_run(tmp_path, source_scan: bool, seed: int) -> tuple[str, dict]:
  """A fake run of the tiny nested (UperNet-like) model with random params: its dir and
  its params per block."""
  source = tiny_nested_model(scan_blocks=source_scan)
  source_params = _random_params(source, seed=seed)
  run = _fake_run(tmp_path / "task_run", source_params, "upernet_tiny", "ade20k")
  return run, _per_block(source_params, source)


@pytest.mark.parametrize("source_scan", [False, True])
def test_task_model_run_gives_its_backbone(source_scan, tmp_path):
  run, source_flat = _task_model_run(tmp_path, source_scan, seed=3)

  # Into another task model (scanned): the whole backbone, feature norms included.
  target = tiny_nested_model(scan_blocks=True)
  params, report = init_from.load_initial(run, target, fallback_params=_filled(target, 5.0))
  flat = _per_block(params, target)
  for path, value in flat.items():
    expected = source_flat[path] if path[0] == "backbone" else np.full_like(value, 5.0)
    np.testing.assert_array_equal(value, expected, err_msg=str(path))
  assert sorted(report.left_at_init) == ["head.bias", "head.weight"]
  assert sorted(report.dropped) == ["head.bias", "head.weight"]  # the source's task head

  # Into a classifier: its norm and head stay at init, the feature norms are dropped.
  classifier = SwinTransformer(**CLASSIFIER)
  params, report = init_from.load_initial(run, classifier,
                                          fallback_params=_filled(classifier, 5.0))
  for path, value in _flat(params).items():
    if path[0] in ("norm", "head"):
      np.testing.assert_array_equal(value, np.full_like(value, 5.0), err_msg=str(path))
    else:
      np.testing.assert_array_equal(value, source_flat[("backbone", *path)], err_msg=str(path))
  assert sorted(report.left_at_init) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
  assert sorted(report.dropped) == sorted(
      [k.removeprefix("backbone.") for k in FEATURE_NORMS] + ["head.bias", "head.weight"])


@pytest.mark.parametrize("source_scan", [False, True])
def test_model_scope_takes_the_whole_task_model(source_scan, tmp_path):
  run, source_flat = _task_model_run(tmp_path, source_scan, seed=4)

  target = tiny_nested_model(scan_blocks=True)
  params, report = init_from.load_initial(run, target, fallback_params=_filled(target, 5.0),
                                          scope="model")
  flat = _per_block(params, target)
  assert flat.keys() == source_flat.keys()
  for path, value in flat.items():   # the head too, which scope 'auto' leaves at init
    np.testing.assert_array_equal(value, source_flat[path], err_msg=str(path))
  assert not report.left_at_init and not report.dropped

  # Strict: a source of another model is an error, not a partial load.
  with pytest.raises(CheckpointMismatchError, match="head"):
    init_from.load_initial(run, SwinTransformer(**CLASSIFIER), scope="model")
  with pytest.raises(ValueError, match="scope must be one of"):
    init_from.load_initial(run, target, scope="backbone")


# ---------------------------------------------------------------------- classifier -> classifier


def test_classifier_to_classifier_is_unchanged_and_strict(official_sd, reference, tmp_path):
  pth = _save_pth(tmp_path, official_sd)
  model = SwinTransformer(**CLASSIFIER)
  params = init_from.load_initial_params(pth, model)
  for path, value in reference.items():
    np.testing.assert_array_equal(_flat(params)[path], value, err_msg=str(path))
  converted = str(tmp_path / "converted")
  params_dir.save_params_dir(converted, params, "swin_t", CLASSIFIER)
  # A params dir whose model differs from the target: strict, as before.
  with pytest.raises(CheckpointMismatchError, match="shape mismatch: head.weight"):
    init_from.load_initial(converted, SwinTransformer(**{**CLASSIFIER, "num_classes": 5}))
  _, report = init_from.load_initial(pth, model)
  assert sorted(report.loaded) == sorted(official_sd)
  assert report.left_at_init == () and report.dropped == ()


# ---------------------------------------------------------------------- 22K label spaces


@pytest.fixture(scope="module")
def run_22k_params():
  model_22k = SwinTransformer(**{**CLASSIFIER, "num_classes": head_map.NUM_CLASSES_22K})
  return _random_params(model_22k, seed=4)


@pytest.mark.parametrize("dataset,label_space,expected_space", [
    ("imagenet22k", "auto", "fall11"), ("imagenet21k", "auto", "official"),
    ("imagenet22k", "official", "official"), ("imagenet2012", "fall11", "fall11")])
def test_22k_run_head_is_mapped_in_its_label_space(run_22k_params, dataset, label_space,
                                                   expected_space, tmp_path, caplog):
  run = _fake_run(tmp_path / "run22k", run_22k_params, "swin_t", dataset)
  assert init_from.resolve_label_space(run, label_space) == expected_space
  model_1k = SwinTransformer(**{**CLASSIFIER, "num_classes": 1000})
  with caplog.at_level(logging.WARNING):
    params, report = init_from.load_initial(run, model_1k, label_space,
                                            fallback_params=_filled(model_1k, 9.0))
  index = head_map.map_22k_to_1k(expected_space)
  kernel, source = params["head"]["kernel"], run_22k_params["head"]["kernel"]
  for i in range(1000):
    want = np.full(64, 9.0, np.float32) if index[i] < 0 else source[:, index[i]]
    np.testing.assert_array_equal(kernel[:, i], want, err_msg=str(i))
  teddy = [r.getMessage() for r in caplog.records if "teddy" in r.getMessage()]
  assert len(teddy) == (2 if expected_space == "fall11" else 0)
  assert sorted(key for key, _ in report.adapted) == ["head.bias", "head.weight"]
  assert all(how.startswith(f"22K head mapped to 1K: {expected_space} label space")
             for _, how in report.adapted)
  assert "head.weight" in report.loaded and report.left_at_init == ()


def test_label_space_of_files_and_bad_values(tmp_path, official_sd):
  pth = _save_pth(tmp_path, official_sd)
  assert init_from.resolve_label_space(pth) == "official"
  assert init_from.resolve_label_space(pth, "fall11") == "fall11"
  with pytest.raises(ValueError, match="label space"):
    init_from.resolve_label_space(pth, "sorted")


# ---------------------------------------------------------------------- load_torch_variables


@pytest.mark.parametrize("scan_blocks", [False, True])
@pytest.mark.parametrize("layout", ["official", "timm"])
def test_load_torch_variables_reads_prefixed_backbone_keys(scan_blocks, layout):
  # An mmseg-style checkpoint: weights under 'state_dict', the Swin under 'backbone.'.
  model = tiny_nested_model(scan_blocks=scan_blocks)
  expected = _random_params(tiny_nested_model(), seed=5)  # per block
  sd = params_to_state_dict(expected)
  assert "backbone.layers.0.blocks.1.attn.relative_position_bias_table" in sd
  assert sd["head.weight"].shape == (10, 16 + 32 + 64)  # torch layout (out, in)
  if layout == "timm":  # timm puts each merge at the start of the next stage
    sd = {re.sub(r"^backbone\.layers\.(\d+)\.downsample",
                 lambda m: f"backbone.layers.{int(m.group(1)) + 1}.downsample", k): v
          for k, v in sd.items()}
    assert "backbone.layers.2.downsample.reduction.weight" in sd
  variables = load_torch_variables({"state_dict": sd}, model)
  assert sorted(variables) == ["params"]
  got = _per_block(variables["params"], model)
  want = _flat(expected)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=str(path))

  extra = {**sd, "decode_head.conv_seg.weight": np.zeros((3, 4), np.float32)}
  with pytest.raises(CheckpointMismatchError,
                     match="unexpected in checkpoint: decode_head.conv_seg.weight"):
    load_torch_variables(extra, model)
  params, report = load_with_report(extra, model, allow=("unexpected",))
  assert report.dropped == ("decode_head.conv_seg.weight",)
  assert report.left_at_init == ()
