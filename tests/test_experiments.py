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
