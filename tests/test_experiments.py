"""The experiment scripts behind experiments/benchmarks.md run their real code paths (tiny
model, the 8 simulated devices of conftest.py). No timing checks."""

import importlib.util
import math
import os

import pytest

from swin_jax.models import SwinTransformer, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
            window_size=4, num_classes=10, drop_path_rate=0.1)


def load_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("mode", ["data", "fsdp"])
def test_scaling_measures_the_sharded_train_step(monkeypatch, mode):
  monkeypatch.setitem(registry.MODEL_CONFIGS, "scaling_tiny", TINY)
  row = load_script("scaling").measure("scaling_tiny", 8, mode, batch=16, steps=2)
  assert (row["devices"], row["mode"], row["batch"]) == (8, mode, 16)
  assert len(row["times_s"]) == 2 and row["img_per_s"] > 0 and row["compile_s"] > 0
  assert row["xla_mib_per_device"] > 0 and math.isfinite(row["loss"])


def test_fsdp_memory_splits_params_and_moments():
  fsdp_memory = load_script("fsdp_memory")
  model = SwinTransformer(**{**TINY, "embed_dim": 256}, scan_blocks=True)
  total, one = fsdp_memory.per_device_bytes(model, 1)
  _, eight = fsdp_memory.per_device_bytes(model, 8)
  # params + mu + nu in float32, plus Adam's int32 step count.
  assert one == 3 * 4 * total + 4
  assert eight < one / 2


def test_soft_teacher_arms_share_the_demo_detector_and_differ_in_their_switches():
  digits = load_script("soft_teacher_digits")
  burnin = digits.arm_config(5, 2, 500, "", digits.ARMS["supervised"])
  arm = digits.arm_config(5, 2, 100, "", digits.ARMS["no_jitter"], init_from="/runs/burnin")
  for config in (burnin, arm):
    assert config.task.labelled_percent == 5.0 and config.task.fold == config.seed == 2
    assert config.task.burn_in_steps == 0      # the shared run is the burn-in
    assert config.model == load_script("soft_teacher_digits").load_config(
        "configs/soft_teacher/demo.py").model
  assert burnin.task.unsup_weight == 0.0 and not burnin.init_from
  assert (arm.init_from, arm.init_from_scope) == ("/runs/burnin", "model")
  assert arm.task.box_jitter is False and arm.task.soft_weights is True
  assert arm.total_steps == 100 and tuple(arm.optimizer.step_steps) == (85,)


def test_soft_teacher_table_pairs_each_arm_with_the_same_seeds_supervised_run():
  digits = load_script("soft_teacher_digits")
  aps = {"burn-in": (0.10, 0.20), "supervised": (0.30, 0.50), "soft_teacher": (0.35, 0.40),
         "no_soft_weights": (0.30, 0.50), "no_jitter": (0.40, 0.70)}
  runs = [dict(fraction=10.0, seed=seed, arm=arm, box_ap=values[i])
          for arm, values in aps.items() for i, seed in enumerate((1, 2))]
  table = digits.summarise(runs, [10.0], [1, 2])
  rows = [line for line in table.splitlines() if line.startswith("| 10 %")]
  assert rows[0].startswith("| 10 % | 0.150 ± 0.071 (0.100, 0.200) | 0.400 ± 0.141")
  # soft_teacher - supervised per seed: +0.05, -0.10 -> mean -0.025
  assert rows[1].split(" | ")[1] == "-0.025 ± 0.106 (0.050, -0.100)"
  assert rows[1].split(" | ")[3].startswith("0.150 ± 0.071 (0.100, 0.200)")


def test_segmentation_figure_draws_the_runs_own_predictions_under_the_truth(tmp_path):
  # pylint: disable=import-outside-toplevel
  import jax
  import ml_collections
  import numpy as np
  from PIL import Image

  from swin_jax.convert.torch_checkpoint import init_params
  from swin_jax.data import digit_scenes, images, sources
  from train_runs import fake_segmentation_run

  figure = load_script("segmentation_figure")
  overrides = dict(img_size=32, patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                   window_size=4, num_classes=11, drop_path_rate=0.0)
  name = "swin_unet_tiny_patch4_window7_224"
  model = registry.create_model(name, **overrides)
  params = init_params(model, seed=3)
  names = ("background",) + tuple(str(d) for d in range(10))
  dataset = dict(name=digit_scenes.dataset_name(size=32, num_train=8, num_test=4),
                 data_dir=str(tmp_path / "tfds"), train_split="train", eval_split="test")
  run = fake_segmentation_run(tmp_path / "run", params, name, overrides, names,
                              dataset=dataset, task=dict(label_key="segmentation"))
  found = figure.predict_eval_scenes(run, 3)

  # Independently: the stored scenes, ImageNet-normalised, through the model.
  source = sources.open_source(ml_collections.ConfigDict(dataset), "test")
  stored = [source[i] for i in range(3)]
  np.testing.assert_array_equal(found["images"], np.stack([s["image"] for s in stored]))
  np.testing.assert_array_equal(found["labels"], np.stack([s["segmentation"] for s in stored]))
  pixels = (found["images"] / np.float32(255) - images.IMAGENET_MEAN) / images.IMAGENET_STD
  logits = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(
      params, pixels.astype(np.float32)))
  top2 = np.sort(logits, -1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-4   # near-ties another program may flip
  np.testing.assert_array_equal(found["predictions"][clear], logits.argmax(-1)[clear])

  lines = figure.describe(found)
  assert len(lines) == 3 and all(line.startswith(f"scene {j}: truth ")
                                 for j, line in enumerate(lines))
  out = tmp_path / "fig" / "predictions.png"
  assert figure.main(["--run", run, "--out", str(out), "--count", "3"]) == 0
  assert Image.open(out).size == (480, 520)   # 3 columns of 1.6 in, 5.2 in high, 100 dpi
