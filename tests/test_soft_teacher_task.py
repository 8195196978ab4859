"""Soft Teacher on the one loop: the labelled / unlabelled stream, a tiny Faster R-CNN
trained two steps with its EMA teacher, the total loss rebuilt from the component passes,
no gradient into the teacher, and a bit-exact resume of the teacher state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import digit_scenes, semi_split, sources
from swin_jax.models.detection import box_transform
from swin_jax.models.detection import pseudo_labels as pl
from swin_jax.tasks import detection, soft_teacher
from swin_jax.tasks.soft_teacher_losses import student_unsup_losses, teacher_pseudo_labels
from swin_jax.train import config as config_lib
from swin_jax.train import init_from, loop
from test_detection_task import tiny_config as tiny_detection_config
from test_experiments import load_script
from train_runs import (assert_same_state, compilation_cache_dir, metric_lines,
                        persistent_compilation_cache, resume_from_checkpoint, train_losses,
                        two_checkpointed_steps)

pytestmark = pytest.mark.xdist_group("soft_teacher_task")


def tiny_config(data_dir: str = ""):
  """The detection tests' tiny detector (without its mask head) and 16 digit scenes, half
  labelled, 2 labelled + 4 unlabelled per batch; thresholds so low that an untrained
  teacher's detections feed every target (RPN, cls and reg); step 1 a burn-in step."""
  detection_config = tiny_detection_config()
  config = config_lib.base_config("soft_teacher")
  config.model = detection_config.model
  config.model.name = "faster_rcnn_swin_tiny_patch4_window7_fpn"
  del config.model.overrides["mask_channels"]
  config.dataset = detection_config.dataset
  config.dataset.data_dir = data_dir
  config.dataset.read_threads = 2
  config.task.update(dict(
      canvas=(64, 64), scale_range=((64, 48), (64, 64)), test_scale=(64, 64), max_instances=4,
      rpn_samples=64, rcnn_samples=32, labelled_percent=50.0, unlabelled_per_labelled=2,
      initial_score_threshold=0.0, rpn_pseudo_threshold=0.0, cls_pseudo_threshold=0.0,
      reg_pseudo_threshold=1.0, burn_in_steps=1))
  two_checkpointed_steps(config)
  config.optimizer.update(dict(name="sgd", base_lr=0.01, reference_batch_size=2,
                               schedule="step", step_steps=(1,), warmup_mode="mmcv",
                               warmup_steps=1, no_decay_1d_and_bias=False))
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Two steps through ``loop.train_and_evaluate``, a checkpoint after each:
  ``(config, RunResult, workdir)``."""
  root = tmp_path_factory.mktemp("soft_teacher_run")
  config = tiny_config(str(root / "tfds"))
  workdir = str(root / "run")
  with persistent_compilation_cache(compilation_cache_dir(tmp_path_factory)):
    return config, loop.train_and_evaluate(config, workdir), workdir


def test_stream_groups_one_labelled_scene_with_r_unlabelled_ones(trained):
  """Labelled images come only from the official split's positions, unlabelled ones only
  from the rest, ``r`` per labelled image; the views carry their matrices."""
  config, _, _ = trained
  task = tasks.get_task(config)
  train = sources.open_source(config.dataset, "train")
  labelled, rest = task.split_positions(train)
  np.testing.assert_array_equal(labelled, semi_split.labelled_positions(16, 1, 50.0))
  assert len(labelled) == 8 and set(labelled).isdisjoint(rest) and len(rest) == 8

  def image_ids(positions):
    return {int(train[int(i)]["image_id"]) for i in positions}

  seen = {"labelled": set(), "unlabelled": set()}
  groups = soft_teacher._Groups(  # pylint: disable=protected-access
      _ids_stream(train, labelled), _ids_stream(train, rest), 2)
  for i in range(8):
    group = groups[i]
    assert len(group["unlabelled"]) == 2
    seen["labelled"].add(group["labelled"])
    seen["unlabelled"].update(group["unlabelled"])
  assert seen["labelled"] <= image_ids(labelled)
  assert seen["unlabelled"] <= image_ids(rest)

  batch = next(task.train_iterator())
  spec = task.batch_spec(config.batch_size)
  assert set(batch) == set(spec)
  for key, value in spec.items():
    assert batch[key].shape == value.shape and batch[key].dtype == value.dtype, key


def _ids_stream(source, positions):
  import grain  # pylint: disable=import-outside-toplevel
  ids = [int(source[int(i)]["image_id"]) for i in positions]
  return grain.MapDataset.source(ids).shuffle(seed=0).repeat(None)


def test_tiny_soft_teacher_trains_with_an_ema_teacher_through_the_loop(trained):
  config, result, workdir = trained
  for name in ("train/loss", "train/sup_loss_cls", "train/unsup_loss_cls",
               "train/unsup_loss_rpn_cls", "train/unsup_loss_bbox"):
    assert np.isfinite(result.metrics[name]), name
  # With every threshold open, all three target sets are fed.
  for name in ("train/rpn_pseudo_boxes", "train/cls_pseudo_boxes", "train/reg_pseudo_boxes"):
    assert result.metrics[name] > 0, name
  assert 0.0 <= result.metrics["eval/box_ap"] <= 1.0
  # Step 1 is the burn-in: supervised only, no teacher pass (step 2 fed every target).
  first = next(m for m in metric_lines(workdir) if m["step"] == 1)
  assert first["train/sup_loss_cls"] > 0
  for name in ("train/unsup_loss_cls", "train/unsup_loss_rpn_cls", "train/pseudo_boxes"):
    assert first[name] == 0.0, name
  teacher, student = result.state.extra["teacher"], result.state.params
  assert jax.tree.structure(teacher) == jax.tree.structure(student)
  # The burn-in left the teacher a copy of student 1; step 2 averaged in student 2 (m 0.5).
  moved = [not np.array_equal(t, s) for t, s in zip(jax.tree.leaves(teacher),
                                                     jax.tree.leaves(student))]
  assert any(moved)


def test_resumed_run_ends_bit_for_bit_with_the_teacher(trained, tmp_path, tmp_path_factory):
  config, result, workdir = trained
  resumed = str(tmp_path / "resumed")
  again = resume_from_checkpoint(workdir, 1, resumed, config,
                                 compilation_cache_dir(tmp_path_factory))
  assert dict(train_losses(resumed)) == {2: dict(train_losses(workdir))[2]}
  assert_same_state(result.state, again.state)     # teacher (state.extra) included


def test_latest_run_extra_reads_the_teacher_from_the_checkpoint(trained):
  """``init_from.latest_run_extra`` gives the run's model and the saved teacher (what the
  pseudo-box figure draws from)."""
  _, result, workdir = trained
  model, extra = init_from.latest_run_extra(workdir)
  assert model.num_classes == 10 and not model.with_mask
  assert set(extra) == {"teacher"}
  want = jax.device_get(result.state.extra["teacher"])
  jax.tree.map(np.testing.assert_array_equal, extra["teacher"], want)
  # The teacher is its own tree, not the student's params.
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(extra["teacher"]), jax.tree.leaves(jax.device_get(result.state.params))))


def task_on_a_batch(trained, unsup_weight: float):
  """The tiny run's task with ``unsup_weight``, its model, the trained student params and
  the first train batch."""
  config, result, _ = trained
  config = config.copy_and_resolve_references()
  config.task.unsup_weight = unsup_weight
  task = tasks.get_task(config)
  batch = jax.tree.map(jnp.asarray, next(task.train_iterator()))
  return task, task.build_model(), jax.device_get(result.state.params), batch


def test_total_loss_is_sup_plus_weighted_unsup_and_the_teacher_gets_no_gradient(trained):
  """The task's loss on a real batch equals the sum rebuilt from the component passes
  (teacher pseudo labels, view transfer, student losses, soft weights from the teacher's
  background scores), and its gradient with respect to the teacher is zero."""
  task, model, params, batch = task_on_a_batch(trained, unsup_weight=3.0)
  teacher = jax.device_get(trained[1].state.extra["teacher"])
  rng = jax.random.key(5)

  def total(teacher_params):
    loss, (metrics, _) = task.loss_fn(model, params, {}, batch, rng,
                                      extra={"teacher": teacher_params})
    return loss, metrics

  @jax.jit
  def everything(params, teacher):
    (loss, metrics), teacher_grad = jax.value_and_grad(total, has_aux=True)(teacher)
    return loss, metrics, teacher_grad, rebuilt_loss(task, model, params, teacher, batch, rng)

  loss, metrics, teacher_grad, expected = everything(params, teacher)
  np.testing.assert_allclose(loss, expected["total"], rtol=1e-5)
  for name in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"):
    np.testing.assert_allclose(metrics[f"unsup_{name}"], expected[name], rtol=1e-5,
                               err_msg=name)
    assert np.isfinite(expected[name]) and expected[name] > 0, name
  for leaf in jax.tree.leaves(teacher_grad):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_unsup_weight_zero_is_the_supervised_baseline_on_the_same_stream(trained):
  """``unsup_weight=0`` (the experiment's supervised-only arm) is the detector's loss on the
  labelled images of the very same batches, with no unsupervised term computed."""
  task, model, params, batch = task_on_a_batch(trained, unsup_weight=0.0)
  rng = jax.random.key(6)

  @jax.jit
  def both(params):
    loss, (metrics, _) = task.loss_fn(model, params, {}, batch, rng,
                                      extra={"teacher": params})
    sup_rng = jax.random.split(rng, 4)[0]
    sup, (sup_metrics, _) = detection.DetectionTask.loss_fn(task, model, params, {}, batch,
                                                            sup_rng)
    return loss, metrics, sup, sup_metrics

  loss, metrics, sup, sup_metrics = both(params)
  np.testing.assert_array_equal(loss, sup)
  assert set(metrics) == {soft_teacher.SUP_PREFIX + k for k in sup_metrics}
  assert np.isfinite(sup) and sup > 0


def rebuilt_loss(task, model, params, teacher, batch, rng):
  """The loss from the pieces, following the official ``SoftTeacher.forward_train``."""
  cfg = task.config.task
  sup_rng, dropout, jitter_key, samplers = jax.random.split(rng, 4)
  sup_loss, _ = detection.DetectionTask.loss_fn(task, model, params, {}, batch, sup_rng)
  flat = {k: batch[k].reshape(-1, *batch[k].shape[2:]) for k in soft_teacher.VIEW_KEYS}
  n = flat["teacher_image"].shape[0]
  pseudo, feats = model.apply({"params": teacher}, flat["teacher_image"], flat["teacher_hw"],
                              jitter_key, initial_threshold=cfg.initial_score_threshold,
                              method=teacher_pseudo_labels)
  m = box_transform.relative_matrix(flat["teacher_matrix"], flat["student_matrix"])
  boxes = box_transform.transform_boxes(pseudo["boxes"], m, flat["student_hw"])
  kept = pseudo["valid"] & pl.box_sizes_ok(boxes)
  score_ok = kept & (pseudo["scores"] > cfg.cls_pseudo_threshold)
  reg_ok = kept & (pseudo["uncertainty"] < cfg.reg_pseudo_threshold)
  rpn_keys, cls_keys, reg_keys = (jax.random.split(k, n) for k in jax.random.split(samplers, 3))
  rpn_sampler, rcnn_sampler = task.samplers()
  terms, cls_score, cls_t = model.apply(
      {"params": params}, flat["student_image"], flat["student_hw"], boxes,
      pseudo["classes"], score_ok, score_ok, reg_ok, rpn_keys, cls_keys, reg_keys,
      rpn_sampler=rpn_sampler, rcnn_sampler=rcnn_sampler, method=student_unsup_losses,
      rngs={"dropout": dropout})
  back = box_transform.relative_matrix(flat["student_matrix"], flat["teacher_matrix"])
  teacher_rois = box_transform.transform_boxes(cls_t.rois, back, flat["teacher_hw"])
  scores, _ = model.apply({"params": teacher}, feats, teacher_rois, method="roi_outputs")
  background = jax.nn.softmax(scores, axis=-1)[..., -1]
  negative = (cls_t.labels == model.num_classes) & (cls_t.label_weights > 0)
  weights = jnp.where(negative, background, cls_t.label_weights)
  log_p = jax.nn.log_softmax(cls_score, axis=-1)
  ce = -jnp.take_along_axis(log_p, cls_t.labels[..., None], axis=-1)[..., 0]
  terms["loss_cls"] = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  unsup = sum(terms.values())
  return {**terms, "total": sup_loss + cfg.unsup_weight * unsup}


def test_pseudo_box_figure_draws_the_teacher_on_unlabelled_scenes(trained, tmp_path):
  """``experiments/soft_teacher_figure.py`` on the tiny run: the saved teacher's pseudo
  labels on unlabelled train scenes, in source pixels, listed and drawn."""
  figure = load_script("soft_teacher_figure")
  _, _, workdir = trained
  found = figure.unlabelled_pseudo_labels(workdir, count=2, seed=0)
  images, valid = found["images"], found["valid"]
  assert images.shape[0] == 2 and images.dtype == np.uint8
  assert valid.any()                     # every threshold of the tiny run is open
  boxes = found["boxes"][valid]
  height, width = images.shape[1:3]
  assert (boxes >= -1e-3).all() and (boxes[:, [0, 2]] <= width + 1e-3).all()
  assert (boxes[:, [1, 3]] <= height + 1e-3).all()
  assert found["gt_valid"].any(axis=1).all()   # digit scenes hold 1-3 digits each
  names = [str(d) for d in range(10)]
  assert len(figure.describe(found, names).splitlines()) == 1 + valid.sum()
  out = tmp_path / "pseudo_boxes.png"
  figure.draw(found, names, "tiny").savefig(out)
  assert out.stat().st_size > 0
