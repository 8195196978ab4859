"""``python -m swin_jax.convert`` as a real subprocess: .pth -> params dir -> .pth.

The checkpoint is a timm ``swin_tiny_patch4_window7_224`` (built at 64x64 with 10 classes)
filled with random values and saved in the official layout (``{'model': sd, ...}``).
Subprocesses run two at a time to keep the import overhead down.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

import swin_jax
from torch_oracle import timm_to_official
from swin_jax.convert import load_torch_checkpoint
from swin_jax.convert.params_dir import load_params_dir

MODEL = "swin_tiny_patch4_window7_224"
OVERRIDES = ["--img_size", "64", "--num_classes", "10"]

# The module fixture runs four subprocesses; under ``pytest -n N --dist loadgroup`` this keeps
# the module on one worker so they run once.
pytestmark = pytest.mark.xdist_group("convert_cli")


def _start(*args: str) -> subprocess.Popen:
  env = {**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen([sys.executable, "-m", "swin_jax.convert", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
  stdout, stderr = process.communicate(timeout=300)
  return process.returncode, stdout, stderr


def _flatten(tree, prefix=()) -> dict:
  out = {}
  for key, value in tree.items():
    if hasattr(value, "items"):
      out.update(_flatten(value, (*prefix, key)))
    else:
      out[(*prefix, key)] = np.asarray(value)
  return out


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  """Runs every subprocess once; returns what the tests inspect."""
  tmp = tmp_path_factory.mktemp("cli")
  tm = timm.create_model(MODEL, pretrained=False, img_size=64, num_classes=10).eval()
  gen = torch.Generator().manual_seed(0)
  # Random values in every tensor; scaled so that the 12-block forward stays finite.
  timm_sd = {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in tm.state_dict().items()}
  official_sd = timm_to_official(timm_sd)
  buffers = {}
  for i, stage in enumerate(tm.layers):
    for j, block in enumerate(stage.blocks):
      buffers[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = (
          block.attn.relative_position_index.clone())
      if block.attn_mask is not None:
        buffers[f"layers.{i}.blocks.{j}.attn_mask"] = block.attn_mask.clone()
  checkpoint = str(tmp / "swin_t.pth")
  torch.save({"model": official_sd, "epoch": 3}, checkpoint)
  out = str(tmp / "converted")
  exported = str(tmp / "exported" / "swin_t.pth")

  convert = _start("--checkpoint", checkpoint, "--model", MODEL, *OVERRIDES, "--out", out)
  bad_name = _start("--checkpoint", checkpoint, "--model", "swin_nonexistent", "--out",
                    str(tmp / "unused"))
  results = {"convert": _finish(convert), "bad_name": _finish(bad_name)}
  assert results["convert"][0] == 0, results["convert"][2][-3000:]
  export = _start("--params", out, "--to_torch", exported)
  again = _start("--checkpoint", checkpoint, "--model", MODEL, *OVERRIDES, "--out", out)
  results.update(export=_finish(export), again=_finish(again))

  # A 22K head (this project's fall11 label order) converted into a 1K model.
  head_22k = {"head.weight": torch.randn(21841, 768, generator=gen),
              "head.bias": torch.randn(21841, generator=gen)}
  checkpoint_22k = str(tmp / "swin_t_22k.pth")
  torch.save({"model": {**official_sd, **head_22k}}, checkpoint_22k)
  out_22k = str(tmp / "converted_22k")
  fall11 = _start("--checkpoint", checkpoint_22k, "--model", MODEL, "--img_size", "64",
                  "--label_space", "fall11", "--out", out_22k)
  results.update(fall11=_finish(fall11))
  return dict(results=results, checkpoint=checkpoint, out=out, exported=exported,
              official_sd=official_sd, buffers=buffers, tmp=tmp, head_22k=head_22k,
              out_22k=out_22k)


def test_converted_dir_matches_in_process_conversion(cli):
  model, params = load_params_dir(cli["out"])
  reference_model = swin_jax.models.create_model(MODEL, img_size=64, num_classes=10)
  assert model == reference_model
  assert (model.img_size, model.num_classes, model.embed_dim, model.window_size) == (
      64, 10, 96, 7)
  reference = load_torch_checkpoint(cli["checkpoint"], reference_model)
  flat, ref_flat = _flatten(params), _flatten(reference)
  assert sorted(flat) == sorted(ref_flat)
  for path, value in ref_flat.items():
    assert flat[path].dtype == np.float32, path
    np.testing.assert_array_equal(flat[path], value, err_msg=str(path))
  # Spot checks against the checkpoint itself (layouts per the spec).
  sd = cli["official_sd"]
  np.testing.assert_array_equal(flat[("patch_embed", "proj", "kernel")],
                                sd["patch_embed.proj.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat[("layers_2", "downsample", "reduction", "kernel")],
                                sd["layers.2.downsample.reduction.weight"].numpy().T)
  np.testing.assert_array_equal(flat[("head", "bias")], sd["head.bias"].numpy())

  images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)), jnp.float32)
  apply = jax.jit(model.apply)
  logits = np.asarray(apply({"params": params}, images))
  reference_logits = np.asarray(apply({"params": reference}, images))
  assert logits.shape == (2, 10) and np.isfinite(logits).all()
  np.testing.assert_array_equal(logits, reference_logits)


def test_export_writes_the_official_state_dict_with_buffers(cli):
  code, stdout, stderr = cli["results"]["export"]
  assert code == 0, stderr[-3000:]
  exported = torch.load(cli["exported"], map_location="cpu", weights_only=True)
  assert sorted(exported) == ["model"]
  sd = exported["model"]
  expected = {**cli["official_sd"], **cli["buffers"]}
  assert any(k.endswith("attn_mask") for k in cli["buffers"])
  assert sorted(sd) == sorted(expected)
  for key, value in expected.items():
    assert isinstance(sd[key], torch.Tensor) and sd[key].dtype == value.dtype, key
    assert torch.equal(sd[key], value), key


def test_existing_out_dir_is_refused(cli):
  code, stdout, stderr = cli["results"]["again"]
  assert code != 0
  assert cli["out"] in stderr
  # The first conversion is intact.
  load_params_dir(cli["out"])


def test_unknown_model_name_lists_the_valid_names(cli):
  code, stdout, stderr = cli["results"]["bad_name"]
  assert code != 0
  assert "swin_nonexistent" in stderr
  for name in ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224",
               "swin_base_patch4_window7_224", "swin_base_patch4_window12_384",
               "swin_large_patch4_window7_224", "swin_large_patch4_window12_384"):
    assert name in stderr
  assert not os.path.exists(cli["tmp"] / "unused")


def test_label_space_flag_maps_a_22k_head_by_fall11_synset(cli):
  code, stdout, stderr = cli["results"]["fall11"]
  assert code == 0, stderr[-3000:]
  assert "850 (teddy, teddy bear)" in stderr  # the warning names the class left at init
  model, params = load_params_dir(cli["out_22k"])
  assert model.num_classes == 1000
  index = swin_jax.convert.map_22k_to_1k("fall11")
  kernel, bias = np.asarray(params["head"]["kernel"]), np.asarray(params["head"]["bias"])
  w22k, b22k = cli["head_22k"]["head.weight"].numpy(), cli["head_22k"]["head.bias"].numpy()
  rows = np.flatnonzero(index >= 0)
  assert len(rows) == 999
  np.testing.assert_array_equal(kernel[:, rows], w22k[index[rows]].T)
  np.testing.assert_array_equal(bias[rows], b22k[index[rows]])
  # Teddy bear (not a fall11 synset) keeps the model's fresh init: trunc_normal(0.02), 0.
  assert bias[850] == 0 and 0.015 < kernel[:, 850].std() < 0.025
