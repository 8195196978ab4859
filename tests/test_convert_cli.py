"""``python -m swin_jax.convert`` as a real subprocess: .pth -> params dir -> .pth.

The checkpoint is a timm ``swin_tiny_patch4_window7_224`` (built at 64x64 with 10 classes)
filled with random values and saved in the official layout (``{'model': sd, ...}``).
Subprocesses run two at a time to keep the import overhead down.

Swin-Unet: an official checkpoint of the PyTorch reference (random weights) converts, exports
back as the official trainer saves it, resizes its tables for another window, and starts a
segmentation run (the main job's ``loop.train_and_evaluate`` with ``init_from``, in process:
the converter is the command under test); an ImageNet Swin starts one through the official
``load_from`` mirroring.
"""

from __future__ import annotations

import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

import swin_jax
import torch_oracle
from torch_oracle import timm_to_official
from train_runs import REPO
from swin_jax.convert import load_torch_checkpoint
from swin_jax.convert import swin_unet as swin_unet_convert
from swin_jax.convert.params_dir import load_params_dir
from swin_jax.oracles import torch_swin_unet
from swin_jax.train import init_from

MODEL = "swin_tiny_patch4_window7_224"
OVERRIDES = ["--img_size", "64", "--num_classes", "10"]

# The fixtures run subprocesses; under ``pytest -n N --dist loadgroup`` the group keeps the
# module on one worker, and session scope keeps each fixture alive there: a worker handed the
# group's tests in two chunks would tear a module-scoped fixture down and rebuild it.
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


@pytest.fixture(scope="session")
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

  # A 22K head (this project's fall11 label order) converted into a 1K model.
  head_22k = {"head.weight": torch.randn(21841, 768, generator=gen),
              "head.bias": torch.randn(21841, generator=gen)}
  checkpoint_22k = str(tmp / "swin_t_22k.pth")
  torch.save({"model": {**official_sd, **head_22k}}, checkpoint_22k)
  out_22k = str(tmp / "converted_22k")

  # Two waves: what needs no converted dir, then what reads (or refuses to overwrite) it.
  convert = _start("--checkpoint", checkpoint, "--model", MODEL, *OVERRIDES, "--out", out)
  bad_name = _start("--checkpoint", checkpoint, "--model", "swin_nonexistent", "--out",
                    str(tmp / "unused"))
  fall11 = _start("--checkpoint", checkpoint_22k, "--model", MODEL, "--img_size", "64",
                  "--label_space", "fall11", "--out", out_22k)
  results = {"convert": _finish(convert), "bad_name": _finish(bad_name),
             "fall11": _finish(fall11)}
  assert results["convert"][0] == 0, results["convert"][2][-3000:]
  export = _start("--params", out, "--to_torch", exported)
  again = _start("--checkpoint", checkpoint, "--model", MODEL, *OVERRIDES, "--out", out)
  results.update(export=_finish(export), again=_finish(again))
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


# ----------------------------------------------------------------------------------------
# Swin-Unet: official checkpoints -> params dir -> a segmentation run's init_from, the
# official load_from from an ImageNet Swin, and the bias-table resize of another window.

UNET_NAME = "swin_unet_tiny_patch4_window7_224"
# Four stages (the official load_from mirrors layers.i -> layers_up.(3-i)) at 32 px: maps
# 8, 4, 2, 1, so a window of 4 runs at stages 0-1 and clamps to 2 and 1 after.
UNET = dict(img_size=32, patch_size=4, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            window_size=4, num_classes=11, drop_path_rate=0.0)
UNET_FLAGS = ["--model", UNET_NAME, "--img_size", "32", "--num_classes", "11",
              "--override", "embed_dim=8", "--override", "depths=2,2,2,2",
              "--override", "num_heads=1,2,2,4"]
# A segmentation run of that model on 32 px digit scenes for one step at lr 0: its
# checkpoint holds exactly the params init_from gave it.
RUN_CONFIG = f'''
from configs.swin_unet import demo


def get_config():
  config = demo.get_config()
  config.model.overrides.update({dict(UNET, depths=list(UNET["depths"]),
                                      num_heads=list(UNET["num_heads"]))!r})
  config.dataset.update(dict(name=DATASET, data_dir=DATA_DIR, image_size=32, read_threads=1))
  config.optimizer.update(dict(base_lr=0.0, warmup_lr=0.0, min_lr=0.0))
  config.update(dict(batch_size=4, eval_batch_size=6, total_steps=1, log_every_steps=1,
                     checkpoint_every_steps=1, mesh_shape=(1, 1)))
  return config
'''


def _run_main_in_process(workdir: str, config: str, init: str) -> tuple[int, str, str]:
  """What ``python -m swin_jax.main --config=config --config.init_from=init`` runs, in this
  process: ``(0, stdout, '')`` (an error propagates)."""
  # pylint: disable=import-outside-toplevel
  import contextlib
  import importlib.util
  import io

  from swin_jax.train import loop
  spec = importlib.util.spec_from_file_location("unet_run_config", config)
  module = importlib.util.module_from_spec(spec)
  if REPO not in sys.path:  # the config imports configs.swin_unet, as the main job does
    sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  run_config = module.get_config()
  run_config.init_from = init
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    loop.train_and_evaluate(run_config, workdir)
  return 0, stdout.getvalue(), ""


def _official_unet_sd(model, seed: int) -> dict[str, torch.Tensor]:
  """The reference's random weights plus the official buffers, official key names."""
  ref = torch_oracle.randomize_(torch_swin_unet.build(torch_swin_unet.official_config(model)),
                                seed)
  sd = {k: torch.from_numpy(v) for k, v in torch_oracle.state_dict_numpy(ref).items()}
  sd.update({k: torch.from_numpy(np.asarray(v))
             for k, v in swin_unet_convert.buffers(model).items()})
  return sd


@pytest.fixture(scope="session")
def unet_cli(tmp_path_factory):
  """Converts (two at a time), then runs a segmentation run with init_from (in process)
  beside the export. (The ImageNet -> Swin-Unet init_from is checked in process: the main job's
  init_from path is the same for every source.)"""
  from swin_jax.data import digit_scenes  # pylint: disable=import-outside-toplevel
  tmp = tmp_path_factory.mktemp("unet")
  model = swin_jax.create_model(UNET_NAME, **UNET)
  sd = _official_unet_sd(model, seed=21)
  prefixed = {swin_unet_convert.WRAPPER_PREFIX + k: v for k, v in sd.items()}
  wrapped, bare = str(tmp / "unet_wrapped.pth"), str(tmp / "unet_bare.pth")
  torch.save({"model": prefixed}, wrapped)   # as the brief's official-layout file
  torch.save(prefixed, bare)                 # as the official trainer.py saves ViT_seg
  # An ImageNet Swin of the same widths (timm, random), saved in the official layout.
  classifier = torch_oracle.randomize_(torch_oracle.timm_swin(dict(
      {k: v for k, v in UNET.items() if k != "num_classes"}, num_classes=10)), 22)
  imagenet_sd = timm_to_official(torch_oracle.state_dict_numpy(classifier))
  imagenet = str(tmp / "swin_imagenet.pth")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in imagenet_sd.items()}}, imagenet)

  converted, resized = str(tmp / "conv_unet"), str(tmp / "conv_unet_w2")
  exported = str(tmp / "exported" / "unet.pth")
  first = [_start("--checkpoint", wrapped, *UNET_FLAGS, "--window_size", "4", "--out", converted),
           _start("--checkpoint", bare, *UNET_FLAGS, "--window_size", "2", "--out", resized)]
  results = {"convert": _finish(first[0]), "resize": _finish(first[1])}
  assert results["convert"][0] == 0, results["convert"][2][-3000:]

  # The export runs beside the segmentation run, which runs in process: the main job's
  # init_from path is loop.train_and_evaluate's; the converter is the CLI under test.
  export = _start("--params", converted, "--to_torch", exported)
  data_dir = str(tmp / "tfds")
  dataset = digit_scenes.ensure_digit_scenes(data_dir, size=32, num_train=8, num_test=6)
  config = tmp / "unet_run.py"
  config.write_text(f"DATASET = {dataset!r}\nDATA_DIR = {data_dir!r}\n" + RUN_CONFIG)
  runs = {"from_unet": str(tmp / "run_from_unet")}
  results.update(from_unet=_run_main_in_process(runs["from_unet"], str(config), converted),
                 export=_finish(export))
  return dict(results=results, model=model, sd=sd, imagenet_sd=imagenet_sd, imagenet=imagenet,
              converted=converted, resized=resized, exported=exported, runs=runs)


def _per_block_flat(params, model) -> dict:
  return {"/".join(p): np.asarray(v) for p, v in flax.traverse_util.flatten_dict(
      swin_unet_convert.unstack_scanned(params, model)).items()}


def test_official_swin_unet_checkpoint_converts(unet_cli):
  code, stdout, stderr = unet_cli["results"]["convert"]
  assert code == 0, stderr[-3000:]
  assert "loaded" in stdout and "left at init" not in stdout
  model, params = load_params_dir(unet_cli["converted"])
  for field in ("img_size", "embed_dim", "depths", "num_heads", "window_size", "num_classes"):
    assert np.array_equal(getattr(model, field), getattr(unet_cli["model"], field)), field
  expected = swin_jax.convert.load_torch_variables(unet_cli["sd"], model)["params"]
  flat, ref = _per_block_flat(params, model), _per_block_flat(expected, model)
  assert sorted(flat) == sorted(ref)
  for path, value in ref.items():
    np.testing.assert_array_equal(flat[path], value, err_msg=path)


def test_swin_unet_export_is_what_the_official_trainer_saves(unet_cli):
  code, stdout, stderr = unet_cli["results"]["export"]
  assert code == 0, stderr[-3000:]
  exported = torch.load(unet_cli["exported"], map_location="cpu", weights_only=True)
  expected = {swin_unet_convert.WRAPPER_PREFIX + k: v for k, v in unet_cli["sd"].items()}
  assert sorted(exported) == sorted(expected)   # bare state dict, prefix and buffers
  for key, value in expected.items():
    assert torch.equal(exported[key], value.to(exported[key].dtype)), key


def test_other_window_resizes_encoder_and_decoder_tables(unet_cli):
  code, stdout, stderr = unet_cli["results"]["resize"]
  assert code == 0, stderr[-3000:]
  # Window 4 -> 2 changes the tables at stages 0 and 1 (maps 8 and 4) and their decoder
  # stages layers_up.3 and layers_up.2; stages 2-3 clamp to the map either way.
  assert "adapted: 8 x relative-position bias table resized" in stdout
  model, params = load_params_dir(unet_cli["resized"])
  assert model.window_size == 2
  flat = _per_block_flat(params, model)
  sd = unet_cli["sd"]
  for part, index in (("layers", 0), ("layers", 1), ("layers_up", 3), ("layers_up", 2)):
    for block in (0, 1):
      key = f"{part}.{index}.blocks.{block}.attn.relative_position_bias_table"
      np.testing.assert_array_equal(
          flat[f"{part}_{index}/blocks_{block}/attn/relative_position_bias_table"],
          swin_jax.convert.resize_bias_table(sd[key].numpy(), (3, 3)), err_msg=key)
  np.testing.assert_array_equal(
      flat["layers_up_1/blocks_0/attn/relative_position_bias_table"],
      sd["layers_up.1.blocks.0.attn.relative_position_bias_table"].numpy())


def test_init_from_a_converted_swin_unet_loads_the_whole_model(unet_cli):
  code, stdout, stderr = unet_cli["results"]["from_unet"]
  assert code == 0, stdout[-2000:] + stderr[-3000:]
  n = len(torch_oracle.state_dict_numpy(torch_swin_unet.build(
      torch_swin_unet.official_config(unet_cli["model"]))))
  assert f"loaded {n} of {n} params from the checkpoint" in stdout
  assert "initialised params from" in stdout
  model, params = init_from.latest_run_params(unet_cli["runs"]["from_unet"])
  assert model == unet_cli["model"]  # config.json's lists are tuples again
  _, converted = load_params_dir(unet_cli["converted"])
  flat, ref = _per_block_flat(params, model), _per_block_flat(converted, model)
  for path, value in ref.items():  # lr 0: the checkpoint holds what init_from loaded
    np.testing.assert_array_equal(flat[path], value, err_msg=path)


def test_init_from_an_imagenet_swin_mirrors_the_encoder_into_the_decoder(unet_cli):
  model = unet_cli["model"]
  params, report = init_from.load_initial(unet_cli["imagenet"], model)
  summary = report.summary()
  assert "adapted: 78 x mirrored from the encoder" in summary   # 3 stages x 2 blocks x 13
  assert "left at init" in summary and "layers_up.0.expand.weight" in summary
  assert "dropped from the checkpoint" in summary and "head.weight" in summary
  flat = _per_block_flat(params, model)
  sd = unet_cli["imagenet_sd"]

  def torch_value(key: str, path: str) -> np.ndarray:
    return swin_jax.convert.keys.torch_to_flax_array(tuple(path.split("/")), sd[key])

  for i in range(4):
    for leaf, name in (("attn/qkv/kernel", "attn.qkv.weight"), ("norm2/scale", "norm2.weight"),
                       ("attn/relative_position_bias_table",
                        "attn.relative_position_bias_table")):
      key = f"layers.{i}.blocks.1.{name}"
      np.testing.assert_array_equal(flat[f"layers_{i}/blocks_1/{leaf}"],
                                    torch_value(key, f"layers_{i}/blocks_1/{leaf}"), err_msg=key)
      if i < 3:  # decoder stage 3-i mirrors encoder stage i
        np.testing.assert_array_equal(flat[f"layers_up_{3 - i}/blocks_1/{leaf}"],
                                      torch_value(key, f"layers_up_{3 - i}/blocks_1/{leaf}"),
                                      err_msg=f"layers_up.{3 - i} <- {key}")


def test_init_from_resizes_a_swin_unet_of_another_window(unet_cli):
  """In process: the window-4 converted dir into a window-2 model, with the report."""
  target = swin_jax.create_model(UNET_NAME, **dict(UNET, window_size=2))
  params, report = init_from.load_initial(unet_cli["converted"], target)
  resized = [key for key, how in report.adapted if "bias table resized" in how]
  assert len(resized) == 8 and not report.left_at_init and not report.dropped
  assert "layers_up.3.blocks.1.attn.relative_position_bias_table" in resized
  assert params["layers_0"]["blocks_0"]["attn"]["relative_position_bias_table"].shape == (9, 1)
  # A strict load: another head count is still an error, not a silent re-init.
  with pytest.raises(swin_jax.convert.CheckpointMismatchError, match="shape mismatch"):
    init_from.load_initial(unet_cli["converted"], swin_jax.create_model(
        UNET_NAME, **dict(UNET, num_classes=5)))
