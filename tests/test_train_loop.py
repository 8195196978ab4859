"""The training loop in-process on 8 CPU devices: meshes, shipped configs, bad input."""

from __future__ import annotations

import fnmatch
import glob
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

import data_fakes
from swin_jax.data import demo_dataset, digit_scenes, sources
from swin_jax import tasks
from swin_jax.models import registry
from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train import config as config_lib
from swin_jax.train import init_from
from swin_jax.train import loop
from swin_jax.train import optimizer as optimizer_lib
from train_runs import (REPO, TINY_CONFIG, compilation_cache_dir, persistent_compilation_cache,
                        run_main, train_losses)

# Every recipe, the dense families' configs/<family>/*.py included.
SHIPPED_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if os.path.basename(p) not in ("__init__.py", "common.py"))


def load_config(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def shrink_to_tiny(config):
  """The config's model with 2 blocks of width 8 per stage (the official recipes scan over
  block pairs) and one drop-path rate; UperNet heads 16 (aux 8) channels wide. Recipes that
  differ only in model size (swin_{t,s,b}_1k, swin_{b,l}_22k, the three ADE20K ones) then
  build the same tiny model and share its compiled programs."""
  fields = registry.model_config(config.model.name, **config.model.overrides)
  stages = len(fields["depths"])
  config.model.overrides.update(dict(embed_dim=8, depths=(2,) * stages,
                                     num_heads=(1,) * stages, drop_path_rate=0.1))
  if "aux_channels" in fields:
    config.model.overrides.update(dict(channels=16, aux_channels=8))
  if config.task.name == "detection":   # narrow heads on a 64 px canvas
    config.model.overrides.update(dict(neck_channels=16, rpn_channels=16, fc_channels=32,
                                       mask_channels=16))
    config.task.update(dict(canvas=(64, 64), train_scales=((64, 48),), test_scale=(64, 48),
                            crop_scales=((64, 32),), crop_size=(24, 40)))
  return config


def tiny_program_group(path) -> str:
  """Configs whose shrunk model, data shape and task give one program share a group, so
  pytest-xdist (``--dist loadgroup``) runs them on one worker: the first compiles, the
  others read the persistent compilation cache."""
  config = shrink_to_tiny(load_config(path))
  fields = registry.model_config(config.model.name, **config.model.overrides)
  fields.pop("drop_path_rate", None)
  if config.task.name == "detection":
    # One group for the detectors, none of which trains here (ABSTRACT_GROUPS): a tiny Mask
    # R-CNN's two steps cost about two minutes of compiling on 2 cores, and the detection
    # task trains through this loop on digit scenes in test_detection_task; COCO reading is
    # tested on TFDS mock data there.
    return "detection"
  if config.task.name in ("simmim", "soft_teacher"):
    # Likewise: test_simmim_task and test_soft_teacher_task train through this loop.
    return config.task.name
  return repr((config.task.name, config.dataset.num_classes, config.dataset.image_size,
               sorted(fields.items())))


def _program_groups() -> dict[str, list[str]]:
  """Shipped config paths by tiny program, each group in sorted path order."""
  groups: dict[str, list[str]] = {}
  for path in SHIPPED_CONFIGS:
    groups.setdefault(tiny_program_group(path), []).append(path)
  return groups


def _param(path: str, number: int):
  return pytest.param(path, id=os.path.relpath(path, os.path.join(REPO, "configs")),
                      marks=pytest.mark.xdist_group(f"shipped_{number}"))


# Recipes that do not train here (checked at full size abstractly, with the configs that
# share a program), and where what their tiny run would exercise is tested instead. A tiny
# run costs about a minute of compiling on 2 cores; these would repeat another run's task,
# data pipeline and model code with other sizes (head classes, image size, window), which
# the abstract check builds at full size and the parity tests run.
TRAINED_ELSEWHERE = {
    "detection/*": "test_detection_task trains the detection task through this loop",
    "nnformer/*": "test_volume_segmentation_task trains the demo recipe (tiny nnFormer, "
                  "organ phantoms) through this loop; the others read data not shipped",
    "soft_teacher/*": "test_soft_teacher_task trains the task (tiny Faster R-CNN, digit "
                      "scenes, labelled + unlabelled views) through this loop, resumed",
    "simmim/demo.py": "test_simmim_task trains this recipe (tiny encoder) through this loop",
    "simmim/swin_b_192_*": "test_simmim_task (the same task and transforms, at 32 px)",
    "swin_b_22k.py": "swin_b_1k's group (the same tiny Swin V1 run, a 1,000-way head)",
    "swin_l_22k.py": "swin_b_1k's group (the same tiny Swin V1 run, a 1,000-way head)",
    "swin_b_384_ft.py": "swin_b_1k's group; 384 px / W12: test_parity_timm",
    "swinv2_b_22k.py": "swinv2_t_1k (Swin V2 through the loop); 192 px / W12: test_parity_v2",
    "swinv2_b_22kto1k_256.py": "swinv2_t_1k; W16 with pretrained windows: test_parity_v2",
    "swin_unet/demo.py": "test_train_resume trains it shrunk (tests/configs/tiny_unet.py) "
                         "through this loop, resumed mid-epoch",
    "swin_unet/synapse.py": "test_segmentation trains this recipe (a tiny stand-in net) on a "
                            "fake Synapse through this loop, per-volume evaluation included; "
                            "Swin-Unet through the loop: swin_unet/demo's run; 224 px / W7: "
                            "test_parity_swin_unet",
    "demo.py": "tests/configs/tiny_demo.py (this recipe, a smaller Swin) trains here on three "
               "meshes and in test_train_resume through the main job",
    "upernet/demo.py": "test_upernet_run trains it shrunk on a (4, 2) mesh through this "
                       "loop, resumed",
}


def _trains_here(path: str) -> bool:
  name = os.path.relpath(path, os.path.join(REPO, "configs"))
  return not any(fnmatch.fnmatch(name, pattern) for pattern in TRAINED_ELSEWHERE)


def shipped_config_params():
  """Per tiny-program group, the first config that trains here."""
  params = []
  for number, paths in enumerate(_program_groups().values()):
    trained = [p for p in paths if _trains_here(p)][:1]
    params += [_param(p, number) for p in trained]
  return params


def program_sharing_config_params():
  """Every other config: its tiny run would repeat a run of its group step for step, or
  it is trained elsewhere (``TRAINED_ELSEWHERE``); checked at full size without training."""
  params = []
  for number, paths in enumerate(_program_groups().values()):
    trained = [p for p in paths if _trains_here(p)][:1]
    params += [_param(p, number) for p in paths if p not in trained]
  return params


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs that share a program (recipes that differ only in model size, once shrunk; one
  model's init and eval under two learning rates) compile it once."""
  with persistent_compilation_cache(compilation_cache_dir(tmp_path_factory)):
    yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """What the runs here read: real demo digits, a fake imagenet2012 (1000 classes) and a
  fake ADE20K (scene_parse150; one test image: evaluation in image-size buckets, one
  compile each, is test_seg_inference's); digit scenes build themselves on first use."""
  path = str(tmp_path_factory.mktemp("tfds"))
  demo_dataset.ensure_demo_dataset(path)
  data_fakes.build_fake_imagenet(path, num_examples=16, eval_examples=8, num_classes=1000)
  data_fakes.build_fake_scene_parse150(path, num_examples=8, eval_examples=1)
  return path


def test_shipped_configs_are_found():
  names = {os.path.basename(p) for p in SHIPPED_CONFIGS}
  assert {"demo.py", "swin_t_1k.py", "swin_s_1k.py", "swin_b_1k.py", "swin_b_22k.py",
          "swin_l_22k.py", "swin_b_22kto1k.py", "swin_b_384_ft.py", "swinv2_t_1k.py",
          "swinv2_b_22k.py", "swinv2_b_22kto1k_256.py"} <= names


@pytest.mark.parametrize("path", shipped_config_params())
def test_every_shipped_config_trains_two_steps_and_evaluates(path, data_dir, tmp_path):
  """The config as shipped (dataset, classes, image size, recipe) with a tiny model/batch."""
  config = load_config(path)
  config_lib.validate_config(config)
  shrink_to_tiny(config)
  config.dataset.data_dir = data_dir
  config.dataset.read_threads = 2
  config.init_from = ""          # a demo's starting run (runs/demo) does not fit the tiny model
  config.batch_size = config.eval_batch_size = 8
  config.total_steps = 2
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 0
  if config.dataset.name == demo_dataset.DEMO_DATASET:
    config.dataset.eval_split = "test[:8]"
  if digit_scenes.is_digit_scenes(config.dataset.name):  # a few scenes of the same size
    layout = digit_scenes.parse_dataset_name(config.dataset.name)
    layout.update(num_train=16, num_test=8, seed=0)
    config.dataset.name = digit_scenes.dataset_name(**layout)
  if config.dataset.name == "scene_parse150":
    # mmseg's loss resizes the 150-class logits to the label: 1.3 GB per (8, 512, 512, 150)
    # float32 tensor, several live at once. 64 px keeps the recipe's program small.
    config.dataset.image_size = 64
    if "mmseg" in config.task:
      config.task.mmseg.crop_size = 64
      # mmseg's train and test resize scale (2048, 512), at that crop.
      config.task.mmseg.scale = config.task.mmseg.test_scale = (256, 64)
  result = loop.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(result.metrics["train/loss"])
  if config.task.name == "segmentation":
    params = result.state.params   # Swin-Unet's final conv, or UperNet's decode conv_seg
    classifier = params["output"] if "output" in params else params["decode_head"]["conv_seg"]
    assert classifier["kernel"].shape[-1] == config.dataset.num_classes
    assert 0.0 <= result.metrics["eval/mean_dice"] <= 1.0
  elif config.task.name == "detection":
    fc_cls = result.state.params["roi_head"]["bbox_head"]["fc_cls"]
    assert fc_cls["bias"].shape[0] == config.dataset.num_classes + 1   # + background
    assert 0.0 <= result.metrics["eval/box_ap"] <= 1.0
  else:
    assert result.state.params["head"]["bias"].shape[0] == config.dataset.num_classes
    assert 0.0 <= result.metrics["eval/top1"] <= 1.0
  assert [s for s, _ in train_losses(str(tmp_path))] == [1, 2]
  assert checkpoint_lib.Checkpointer(str(tmp_path)).latest_step() == 2


@pytest.mark.parametrize("path", program_sharing_config_params())
def test_recipes_sharing_a_tiny_program_build_their_full_size_state(path):
  """Task, model at the recipe's size and image size, and optimizer over its params, all
  abstractly (``jax.eval_shape``): what the tiny run of its group does not exercise."""
  config = load_config(path)
  config_lib.validate_config(config)
  task = tasks.get_task(config)
  model = task.build_model()
  variables = jax.eval_shape(lambda rng: task.init_variables(model, rng), jax.random.key(0))
  fields = registry.model_config(config.model.name, **config.model.overrides)
  if config.task.name != "simmim":   # SimMIM predicts pixels: no classes
    assert model.num_classes == config.dataset.num_classes
  assert fields["embed_dim"] > 8   # not shrunk: the recipe's own model
  tx, schedule = optimizer_lib.make_optimizer(config, total_steps=100, steps_per_epoch=10)
  opt_state = jax.eval_shape(tx.init, variables["params"])
  assert jax.tree.leaves(opt_state)
  assert np.isfinite(float(schedule(50)))


def tiny_config(data_dir, **overrides):
  config = load_config(TINY_CONFIG)
  config.dataset.data_dir = data_dir
  config.eval_batch_size = 8
  config.dataset.eval_split = "test[:8]"
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def test_meshes_1x1_8x1_4x2_give_the_same_losses_and_fsdp_splits_kernels(data_dir,
                                                                         tmp_path):
  losses = {}
  for shape in [(1, 1), (8, 1), (4, 2)]:
    workdir = str(tmp_path / f"mesh_{shape[0]}x{shape[1]}")
    config = tiny_config(data_dir, mesh_shape=shape, total_steps=10,
                         checkpoint_every_steps=10, fsdp_min_weight_size=1024)
    result = loop.train_and_evaluate(config, workdir)
    losses[shape] = np.array([loss for _, loss in train_losses(workdir)])
    if shape == (4, 2):
      kernel = result.state.params["layers_1"]["blocks_0"]["mlp"]["fc1"]["kernel"]  # (32, 128)
      assert "fsdp" in str(kernel.sharding.spec)
      assert kernel.addressable_shards[0].data.size == kernel.size // 2
      mu = jax.tree.leaves(result.state.opt_state)  # AdamW moments shard like their params
      assert any(getattr(leaf, "shape", None) == kernel.shape and
                 leaf.sharding.spec == kernel.sharding.spec for leaf in mu)
  assert len(losses[(1, 1)]) == 10
  for shape in [(8, 1), (4, 2)]:
    np.testing.assert_allclose(losses[shape], losses[(1, 1)], rtol=1e-4)


def test_non_finite_loss_stops_the_run_without_writing_a_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir, total_steps=4, checkpoint_every_steps=1)
  config.optimizer.base_lr = float("nan")  # NaN params after the first update
  with pytest.raises(loop.NonFiniteLossError, match="non-finite training metrics at step 1"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert checkpoint_lib.Checkpointer(str(tmp_path)).latest_step() is None


def test_22k_config_without_the_dataset_fails_naming_dataset_dir_and_readme(tmp_path):
  config = load_config(os.path.join(REPO, "configs", "swin_b_22k.py"))
  config.dataset.data_dir = str(tmp_path / "no_data_here")
  with pytest.raises(sources.DatasetNotFoundError) as error:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  message = str(error.value)
  assert "imagenet22k" in message and str(tmp_path / "no_data_here") in message
  assert 'README "Preparing ImageNet-1K and ImageNet-22K"' in message


def test_misspelt_config_field_is_rejected_by_name(data_dir):
  config = tiny_config(data_dir)
  config.batch_sise = 32
  with pytest.raises(ValueError, match="unknown config field 'batch_sise'"):
    config_lib.validate_config(config)


def test_misspelt_command_line_override_is_rejected_by_name(data_dir, tmp_path):
  process = run_main(str(tmp_path), data_dir, "--config.optimizer.base_lrr=0.1")
  assert process.returncode != 0
  assert "base_lrr" in process.stderr


def parse_config_flags(path: str, *overrides: str):
  """The config as ``python -m swin_jax.main`` parses it: locked, command-line overrides."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  argv = ["main", f"--config={path}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize("path", [TINY_CONFIG, os.path.join(REPO, "configs", "swin_t_1k.py")],
                         ids=os.path.basename)
def test_every_model_field_can_be_set_from_the_command_line(path):
  """A GPU user switches on bf16 (or any other model field) without editing the recipe."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from swin_jax import tasks  # pylint: disable=import-outside-toplevel
  config = parse_config_flags(
      path, "--config.model.overrides.dtype=bfloat16",
      "--config.model.overrides.attention_impl=dot_product",
      "--config.model.overrides.remat=dots", "--config.model.overrides.window_size=2",
      "--config.model.overrides.mlp_ratio=2.0", "--config.model.overrides.ape=True")
  model = tasks.get_task(config).build_model()
  assert model.dtype == jnp.bfloat16 and model.attention_impl == "dot_product"
  assert model.remat == "dots" and model.window_size == 2
  assert model.mlp_ratio == 2.0 and model.ape
  # Fields nobody set keep the named model's (or the recipe's) values.
  recipe = load_config(path)
  assert model.embed_dim == registry.model_config(
      recipe.model.name, **config_lib.model_overrides(recipe))["embed_dim"]
  assert set(registry.constructor_fields(type(model))) <= set(config.model.overrides)


def test_an_unknown_model_field_on_the_command_line_is_rejected_by_name():
  with pytest.raises(Exception, match="window_sise"):
    parse_config_flags(TINY_CONFIG, "--config.model.overrides.window_sise=2")


def test_run_writes_metrics_jsonl_tensorboard_and_its_config(data_dir, tmp_path):
  config = tiny_config(data_dir, total_steps=3, checkpoint_every_steps=3)
  loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    lines = [json.loads(line) for line in f]
  assert lines[0]["step"] == 1 and {"train/loss", "train/lr"} <= set(lines[0])
  assert {"eval/top1", "eval/top5"} <= set(lines[-1]) and lines[-1]["step"] == 3
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model"]["name"] == config.model.name


NO_LEARNING = {"total_steps": 1, "optimizer.base_lr": 0.0, "optimizer.warmup_lr": 0.0,
               "optimizer.min_lr": 0.0}


def test_init_from_a_scanned_run_into_a_per_block_run_and_from_a_pth(data_dir, tmp_path):
  """init_from translates layouts: a scanned run's final params start a per-block run
  through the loop (and the reverse through an exported .pth), value for value."""
  from swin_jax.convert import export_torch_state_dict  # pylint: disable=import-outside-toplevel
  from swin_jax.models import scan_layout  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  scanned_dir = str(tmp_path / "scanned")
  config = tiny_config(data_dir, total_steps=2, checkpoint_every_steps=2)
  config.model.overrides.update(dict(scan_blocks=True, remat="dots_no_batch"))
  first = loop.train_and_evaluate(config, scanned_dir)
  trained = jax.device_get(first.state.params)
  assert scan_layout.is_scanned(trained)

  # One step at lr 0 (AdamW's update, weight decay included, scales with lr): the next
  # run's params are exactly what init_from loaded.
  plain = tiny_config(data_dir, init_from=scanned_dir, **NO_LEARNING)
  loaded = jax.device_get(loop.train_and_evaluate(plain, str(tmp_path / "plain")).state.params)
  depths = config.model.overrides.depths
  jax.tree.map(np.testing.assert_array_equal, loaded, scan_layout.unstack_blocks(trained, depths))

  model = registry.create_model(plain.model.name, **plain.model.overrides)
  pth = str(tmp_path / "plain.pth")
  torch.save({"model": export_torch_state_dict(loaded, model, to_torch=True)}, pth)
  # Back into the scanned model by the same function the loop's init_from calls.
  scanned_model = registry.create_model(config.model.name, **config.model.overrides)
  back, report = init_from.load_initial(pth, scanned_model)
  assert not report.left_at_init and not report.dropped
  jax.tree.map(np.testing.assert_array_equal, back, trained)
