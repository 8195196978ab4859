"""The one loop hosts any task: a task with BatchNorm statistics and an EMA copy of the params
trains, shards and resumes through the same loop as classification.

The test task nests the Swin at ``backbone/`` under a BatchNorm + linear head and keeps an EMA
of the params in ``TrainState.extra`` (what Soft Teacher's teacher will be), updated by the
task's ``post_update`` hook.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import demo_dataset
from swin_jax.models import registry
from swin_jax.models.swin import SwinTransformer
from swin_jax.tasks.classification import ClassificationTask
from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train import config as config_lib
from swin_jax.train import loop
from train_runs import compilation_cache_dir, persistent_compilation_cache

# One worker runs the module: its runs share compiled programs (init, eval) through the cache.
pytestmark = pytest.mark.xdist_group("task_seam")

# Data 4 x fsdp 2: the extra state is sharded like the params it mirrors, and the batch over
# all 8 devices.
SHARDED = dict(mesh_shape=(4, 2), fsdp_min_weight_size=256)
EMA_MOMENTUM = 0.5
BN_MOMENTUM = 0.9


class SwinWithBatchNormHead(nn.Module):
  """``(B, 16, 16, 3) -> (B, 10)``: pooled last stage -> BatchNorm -> linear."""
  backbone: SwinTransformer
  num_classes: int = 10

  @nn.compact
  def __call__(self, images, train: bool = False):
    pooled = self.backbone.features(images, train)[-1].mean(axis=(1, 2))
    pooled = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, name="bn")(pooled)
    return nn.Dense(self.num_classes, name="head")(pooled)


class BatchNormEmaTask(ClassificationTask):
  """Classification with a BatchNorm model and an EMA of the params in ``extra``."""
  name = "test_batchnorm_ema"

  def build_model(self):
    # One stage of 2 blocks (4 x 4 tokens, the second block's windows shifted): these runs
    # cost their compiles, which grow with the blocks; the seam does not depend on depth.
    backbone = registry.create_model(
        "swin_t", img_size=16, patch_size=4, embed_dim=16, depths=(2,), num_heads=(1,),
        window_size=2, num_classes=0, feature_norm=True, drop_path_rate=0.1)
    return SwinWithBatchNormHead(backbone=backbone)

  def init_extra(self, params):
    return {"ema": params}

  def post_update(self, state):
    ema = jax.tree.map(lambda e, p: EMA_MOMENTUM * e + (1 - EMA_MOMENTUM) * p,
                       state.extra["ema"], state.params)
    return state.replace(extra={"ema": ema})


@pytest.fixture(autouse=True)
def registered_task(monkeypatch):
  monkeypatch.setitem(tasks.TASKS, BatchNormEmaTask.name, BatchNormEmaTask)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs of one config (a resumed run and its first part) compile their programs once."""
  with persistent_compilation_cache(compilation_cache_dir(tmp_path_factory)):
    yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  demo_dataset.ensure_demo_dataset(path)
  return path


def seam_config(data_dir: str, **fields):
  config = config_lib.base_config(BatchNormEmaTask.name)
  config.model.name = "swin_t"
  config.dataset.update(dict(name=demo_dataset.DEMO_DATASET, data_dir=data_dir,
                             train_split="train", eval_split="test[:16]", num_classes=10,
                             image_size=16, eval_crop=False, read_threads=2))
  config.task.aug.update(dict(crop_scale=(0.85, 1.0), hflip=0.0))
  config.task.mixup.mixup_alpha = 0.8
  # Constant lr: runs of different lengths share their first steps exactly.
  config.optimizer.update(dict(schedule="constant", warmup_epochs=0.0, base_lr=1e-3,
                               reference_batch_size=16))
  config.update(dict(batch_size=16, eval_batch_size=16, total_steps=6, log_every_steps=1,
                     checkpoint_every_steps=3, eval_every_steps=0))
  config.update(fields)
  return config


def _host(state):
  return jax.device_get(state)


def test_model_state_and_extra_are_trained_sharded_and_resumed_bit_for_bit(data_dir, tmp_path):
  straight = loop.train_and_evaluate(seam_config(data_dir, **SHARDED), str(tmp_path / "straight"))
  assert any("fsdp" in str(leaf.sharding.spec) for leaf in jax.tree.leaves(straight.state.extra))
  first = _host(straight.state)
  assert set(first.model_state) == {"batch_stats"}
  assert set(first.params) == {"backbone", "bn", "head"}
  # The statistics moved, and the EMA lags behind the params.
  assert np.any(first.model_state["batch_stats"]["bn"]["mean"] != 0)
  kernel, ema_kernel = first.params["head"]["kernel"], first.extra["ema"]["head"]["kernel"]
  assert not np.array_equal(kernel, ema_kernel)

  # Stop after 1 step, then continue to 6 from the checkpoint: every part of the state,
  # model_state and extra included, ends bit for bit where the straight run ended.
  workdir = str(tmp_path / "resumed")
  loop.train_and_evaluate(seam_config(data_dir, total_steps=1, **SHARDED), workdir)
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 1
  resumed = _host(loop.train_and_evaluate(seam_config(data_dir, **SHARDED), workdir).state)
  jax.tree.map(np.testing.assert_array_equal, resumed, first)
  # That the sharded BatchNorm collects the global batch's statistics (SyncBN, as one
  # device would): test_batch_statistics_are_the_global_batch_mean_and_var below, and
  # test_parity_upernet against torch BN over the whole batch on a (4, 2) mesh.


def test_batch_statistics_are_the_global_batch_mean_and_var(data_dir, tmp_path):
  """One step at lr 0 on the 8 devices: the running mean (and var) is ``(1 - momentum) *``
  the mean (var) over all 16 examples: under jit the BatchNorm sees the global batch (SyncBN),
  the statistics one device would collect."""
  from swin_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  config = seam_config(data_dir, total_steps=1, **SHARDED)
  config.optimizer.update(dict(base_lr=0.0))
  config.task.mixup.mixup_alpha = 0.0
  task = tasks.get_task(config)
  result = loop.train_and_evaluate(config, str(tmp_path))
  state = _host(result.state)
  batch = next(pipeline.train_iterator(config))
  model = task.build_model()
  # The pooled features the BatchNorm saw (params unchanged at lr 0; dropout/drop path use
  # the step's RNG, so recompute them with the same key the step used).
  step_rng = jax.random.fold_in(state.rng, 0)
  _, dropout_rng = jax.random.split(step_rng)
  features = model.apply({"params": state.params}, jnp.asarray(batch["image"]), True,
                         rngs={"dropout": dropout_rng},
                         method=lambda m, x, train: m.backbone.features(x, train)[-1])
  pooled = np.asarray(features).mean(axis=(1, 2))
  stats = state.model_state["batch_stats"]["bn"]
  np.testing.assert_allclose(stats["mean"], (1 - BN_MOMENTUM) * pooled.mean(axis=0),
                             rtol=1e-4, atol=1e-6)
  # The variance too (biased, as flax's BatchNorm takes it; the running var starts at 1).
  np.testing.assert_allclose(stats["var"], BN_MOMENTUM + (1 - BN_MOMENTUM) * pooled.var(axis=0),
                             rtol=1e-4, atol=1e-6)
