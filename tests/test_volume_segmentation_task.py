"""nnFormer on the one loop: a tiny run on organ phantoms (train, sliding-window eval), the
exact resume of a 3D run, the eval windows and their scoring, and the data errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import organ_phantoms
from swin_jax.tasks import medical_metrics
from swin_jax.tasks import volume_inference
from swin_jax.train import checkpoint as checkpoint_lib
from nnformer_runs import GROUP, SIZE, load, tiny_config
from train_runs import (REPO, assert_same_state, compilation_cache_dir, resume_from_checkpoint,
                        train_losses)

pytestmark = pytest.mark.xdist_group(GROUP)


@pytest.fixture(name="data_dir")
def _data_dir(nnformer_data_dir):
  return nnformer_data_dir


@pytest.fixture(name="tiny_run")
def _tiny_run(nnformer_tiny_run):
  return nnformer_tiny_run


def test_tiny_nnformer_trains_and_scores_the_test_volumes(tiny_run):
  workdir, result = tiny_run
  losses = train_losses(workdir)
  assert [s for s, _ in losses] == [1, 2, 3, 4]
  # CE (ln 5 at init) minus the soft Dice of 4 organs: finite, below CE's start.
  assert all(np.isfinite(l) and -1.0 < l < 3.0 for _, l in losses)
  metrics = result.metrics
  assert 0.0 <= metrics["eval/mean_dice"] <= 1.0
  assert {f"eval/dice/{k}" for k in range(1, 5)} <= set(metrics)
  assert np.isfinite(metrics["eval/mean_hd95"])
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 4


def test_a_3d_run_resumes_bit_for_bit(tiny_run, data_dir, tmp_path_factory):
  """From the step-2 checkpoint to the end: losses and final state as the straight run."""
  workdir, result = tiny_run
  resumed = str(tmp_path_factory.mktemp("nnformer_resumed"))
  again = resume_from_checkpoint(workdir, 2, resumed, tiny_config(data_dir),
                                 compilation_cache_dir(tmp_path_factory))
  assert dict(train_losses(resumed)) == {s: l for s, l in train_losses(workdir) if s > 2}
  assert_same_state(result.state, again.state)
  assert again.metrics == result.metrics


def test_eval_windows_cover_each_volume_and_split_between_hosts(data_dir):
  config = tiny_config(data_dir)
  task = tasks.get_task(config)
  shapes = task.eval_volume_shapes()
  assert shapes == [SIZE, SIZE]
  plan = volume_inference.window_plan(shapes, task.patch_size)
  # ceil((20 - 16) / 8) + 1 = 2 starts in depth, ceil((40 - 32) / 16) + 1 = 2 in H and W.
  assert len(plan) == 2 * 8
  one_host = list(task.eval_batches())
  assert sum(int(b["mask"].sum()) for b in one_host) == len(plan)
  assert {b["image"].shape for b in one_host} == {(2, 16, 32, 32, 1)}
  hosts = [list(task.eval_batches(i, 2)) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1])
  seen = sorted((int(v), tuple(s)) for h in hosts for b in h
                for v, s, m in zip(b["volume"], b["start"], b["mask"]) if m)
  assert seen == sorted(plan)


def test_evaluator_scores_perfect_windows_as_dice_one(data_dir):
  """Windows whose weighted probabilities are the one-hot labels stitch back into the
  labels: Dice 1 and HD95 0 for every organ of every volume."""
  config = tiny_config(data_dir)
  task = tasks.get_task(config)
  evaluator = task.evaluator()
  source = task._eval_source()   # pylint: disable=protected-access
  gaussian = volume_inference.gaussian_importance(task.patch_size)[..., None]
  for batch in task.eval_batches():
    weighted = []
    for volume, start, mask in zip(batch["volume"], batch["start"], batch["mask"]):
      if not mask:
        weighted.append(np.zeros((*task.patch_size, 5), np.float32))
        continue
      label = np.asarray(source[int(volume)]["label"])
      window = volume_inference.padded_window(label[..., None], tuple(start), task.patch_size)
      weighted.append(np.eye(5, dtype=np.float32)[window[..., 0]] * gaussian)
    evaluator.update({**batch, "weighted": np.stack(weighted)})
  metrics = evaluator.result()
  assert metrics["eval/mean_dice"] == 1.0 and metrics["eval/mean_hd95"] == 0.0
  assert medical_metrics.summarize_volume_scores(
      list(evaluator.scores.values()), 5, mean_over=(1, 3))["eval/mean_dice"] == 1.0


def test_a_model_of_other_channels_or_classes_is_refused(data_dir):
  config = tiny_config(data_dir)
  config.model.overrides.num_classes = 3
  with pytest.raises(ValueError, match="has 3 classes but dataset"):
    tasks.get_task(config).build_model()
  config = tiny_config(data_dir)
  config.model.overrides.in_channels = 2
  transform = tasks.get_task(config).train_transform()
  example = {"image": np.zeros((*SIZE, 1), np.float32), "label": np.zeros(SIZE, np.uint8)}
  with pytest.raises(ValueError, match="takes 2 input channel"):
    transform(example, np.random.default_rng(0))


def test_demo_config_is_the_documented_one():
  config = load("demo")
  assert config.model.name == "nnformer_synapse" and config.task.name == "volume_segmentation"
  assert config.dataset.name == organ_phantoms.dataset_name()
  assert os.path.exists(os.path.join(REPO, "configs", "nnformer", "demo.py"))
