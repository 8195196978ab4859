"""UperNet through the training loop: its SyncBN statistics on a mesh and across a resume.

``configs/upernet/demo.py`` shrunk (width-8 backbone, heads 16 / 8 wide, 64 digit scenes),
run in-process on a (4, 2) data x fsdp mesh, once straight and once resumed from its step-3
checkpoint. (That train-mode BatchNorm on a mesh uses the global batch's statistics, SyncBN,
is checked against torch in test_parity_upernet and through the loop in test_task_seam.)
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs.upernet import demo
from swin_jax.data import digit_scenes
from swin_jax.train import loop
from train_runs import (assert_same_state, compilation_cache_dir, persistent_compilation_cache,
                        resume_from_checkpoint, train_losses)

# One worker runs the module: the straight run is every test's starting point.
pytestmark = pytest.mark.xdist_group("upernet_run")

STEPS = 6


def tiny_upernet(data_dir: str, **fields):
  """The demo recipe (loss, optimizer, augmentation) on a tiny model and 64 scenes."""
  config = demo.get_config()
  config.model.overrides.update(dict(embed_dim=8, num_heads=(1, 1, 2), channels=16,
                                     aux_channels=8, drop_path_rate=0.1))
  config.init_from = ""            # the demo starts from runs/demo; this one from its init
  layout = digit_scenes.parse_dataset_name(config.dataset.name)
  layout.update(num_train=64, num_test=8, seed=0)
  config.dataset.update(dict(name=digit_scenes.dataset_name(**layout), data_dir=data_dir,
                             read_threads=2))
  config.update(dict(batch_size=16, eval_batch_size=8, total_steps=STEPS, log_every_steps=1,
                     checkpoint_every_steps=3, eval_every_steps=0, mesh_shape=(4, 2),
                     fsdp_min_weight_size=256))
  config.update(fields)
  return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return compilation_cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def straight(data_dir, cache_dir, tmp_path_factory):
  """``(workdir, result)`` of the uninterrupted run on the (4, 2) mesh."""
  workdir = str(tmp_path_factory.mktemp("upernet_straight"))
  with persistent_compilation_cache(cache_dir):
    return workdir, loop.train_and_evaluate(tiny_upernet(data_dir), workdir)


def _batch_stats(state) -> dict:
  return jax.device_get(state.model_state["batch_stats"])


def test_the_run_trains_sharded_and_moves_its_batch_statistics(straight):
  _, result = straight
  stats = _batch_stats(result.state)
  assert {"decode_head", "auxiliary_head"} <= set(stats)
  means = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(stats)
           if "mean" in jax.tree_util.keystr(path)]
  assert means and all(np.any(mean != 0) for mean in means)   # every BN saw batches
  shardings = [str(leaf.sharding.spec) for leaf in jax.tree.leaves(result.state.params)]
  assert any("fsdp" in spec for spec in shardings)
  assert np.isfinite(result.metrics["train/loss"])
  assert 0.0 <= result.metrics["eval/miou"] <= 1.0


def test_a_run_resumed_from_its_step_3_checkpoint_ends_bit_for_bit(straight, data_dir,
                                                                    cache_dir, tmp_path):
  workdir, result = straight
  resumed = resume_from_checkpoint(workdir, 3, str(tmp_path), tiny_upernet(data_dir), cache_dir)
  assert_same_state(resumed.state, result.state)   # params, AdamW moments, BN statistics
  assert train_losses(str(tmp_path)) == train_losses(workdir)[3:]
  assert resumed.metrics["eval/miou"] == result.metrics["eval/miou"]

