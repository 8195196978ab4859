"""The detection task on the seam: mmdet's train / test geometry on planted boxes and masks,
the loss as the sum of the component functions, COCO AP with detections mapped back to the
source image, TFDS coco examples, and a tiny Mask R-CNN through the one training loop."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import coco
from swin_jax.data import detection_transforms as dt
from swin_jax.data import digit_scenes
from swin_jax.data import mmseg_transforms as mt
from swin_jax.data import sources
from swin_jax.models.detection import anchors as anchors_lib
from swin_jax.models.detection import assigner, losses, targets
from swin_jax.tasks import detection
from swin_jax.train import config as config_lib
from swin_jax.train import loop
from train_runs import (assert_same_state, compilation_cache_dir, persistent_compilation_cache,
                        resume_from_checkpoint, train_losses, two_checkpointed_steps)

pytestmark = pytest.mark.xdist_group("detection_task")

CANVAS = (64, 64)
# A tiny Mask R-CNN: every code path of the official one (4 stages, FPN P2..P6, all heads).
TINY_MODEL = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1),
                  window_size=4, num_classes=10, drop_path_rate=0.0, neck_channels=16,
                  rpn_channels=16, fc_channels=32, mask_channels=16, rpn_max_per_img=64,
                  rpn_train_nms_pre=128, rpn_test_nms_pre=128, max_detections=20,
                  pre_nms_top_k=256)


def tiny_config(**task):
  config = config_lib.base_config("detection")
  config.model.name = "mask_rcnn_swin_tiny_patch4_window7_fpn"
  config.model.overrides.update(TINY_MODEL)
  config.dataset.name = digit_scenes.dataset_name(64, num_train=16, num_test=8,
                                                  digit_size=(24, 40), digits_per_scene=(1, 3))
  config.dataset.train_split, config.dataset.eval_split = "train", "test"
  config.dataset.num_classes = 10
  config.task.update(dict(canvas=CANVAS, train_scales=((64, 48), (64, 64)), test_scale=(64, 64),
                          flip_prob=0.5, max_instances=4, rpn_samples=64, rcnn_samples=32))
  config.task.update(task)
  return config


# ---------------------------------------------------------------------------------------
# Host geometry on planted boxes.


def planted_example():
  """A 40 x 60 image with two rectangles (the second a crowd box), their exact masks."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  boxes = np.array([[10, 5, 30, 25], [40, 20, 60, 40]], np.float32)
  masks = np.zeros((2, 40, 60), bool)
  for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
    masks[k, y0:y1, x0:x1] = True
  return {"image": image, "boxes": boxes, "labels": np.array([3, 7], np.int32),
          "crowd": np.array([False, True]), "area": masks.sum((1, 2)).astype(np.float32),
          "image_id": 5, "masks": masks}


def test_train_transform_flips_resizes_and_pads_boxes_masks_and_image():
  example = planted_example()
  transform = dt.DetectionTrainTransform(canvas=(96, 128), reader=dict, scales=((120, 80),),
                                         flip_prob=1.0, max_instances=3)
  out = transform(example, np.random.default_rng(0))
  # Crowd box gone; flipped (x' = 60 - x), then x2 (keep ratio: min(120/60, 80/40) = 2).
  np.testing.assert_array_equal(out["image_hw"], [80, 120])
  np.testing.assert_array_equal(out["gt_boxes"][0], [60, 10, 100, 50])
  np.testing.assert_array_equal(out["gt_boxes"][1:], 0)
  np.testing.assert_array_equal(out["gt_valid"], [True, False, False])
  np.testing.assert_array_equal(out["gt_labels"], [3, 0, 0])
  expected_mask = np.zeros((96, 128), bool)
  expected_mask[10:50, 60:100] = True
  np.testing.assert_array_equal(out["gt_masks"][0], expected_mask)
  assert not out["gt_masks"][1:].any()
  flipped = np.ascontiguousarray(example["image"][:, ::-1])
  np.testing.assert_array_equal(out["image"][:80, :120],
                                mt.normalize(mt.resize_bilinear(flipped, (80, 120))))
  assert not out["image"][80:].any() and not out["image"][:, 120:].any()
  assert out["image"].dtype == np.float32 and out["gt_masks"].dtype == bool


def test_resize_scales_boxes_per_axis_and_clips_and_shrinks_to_the_canvas():
  example = planted_example()
  # (45, 67): scale factors 67 / 60 and 45 / 40 (mmdet's w_scale, h_scale) in float32.
  out = dt.resize_to(example, (45, 67))
  w_scale, h_scale = np.float32(67 / 60), np.float32(45 / 40)
  np.testing.assert_array_equal(out["scale_factor"], [h_scale, w_scale])
  np.testing.assert_array_equal(out["boxes"][0], np.float32([10, 5, 30, 25]) *
                                np.float32([w_scale, h_scale, w_scale, h_scale]))
  assert out["boxes"][1, 2] == 67   # 60 * w_scale, clipped to the new width
  assert out["masks"].shape == (2, 45, 67)
  # A scale beyond the canvas: the largest keep-ratio size inside it.
  big = dt.keep_ratio_resize(example, (1000, 1000), canvas=(64, 64))
  assert big["image"].shape[:2] == (43, 64)


def test_crop_shifts_clips_and_drops_boxes_with_their_masks():
  example = planted_example()
  out = dt.crop(example, (0, 32, 40, 60))     # y0, x0, y1, x1
  # Box 0 ([10, 20) in x) falls left of the crop: dropped with its label and mask.
  np.testing.assert_array_equal(out["boxes"], [[8, 20, 28, 40]])
  np.testing.assert_array_equal(out["labels"], [7])
  assert out["masks"].shape == (1, 40, 28) and out["masks"][0, 20:40, 8:28].all()
  # absolute_range: each side uniform in [min(side, 384), min(side, 600)].
  rng = np.random.default_rng(0)
  sizes = np.array([dt.crop_size(rng, (300, 1000), (384, 600)) for _ in range(200)])
  assert (sizes[:, 0] == 300).all()
  assert sizes[:, 1].min() >= 384 and sizes[:, 1].max() <= 600


def test_eval_transform_keeps_the_source_ground_truth_and_scale():
  transform = dt.DetectionEvalTransform(canvas=(96, 128), reader=dict, scale=(120, 80),
                                        max_instances=3)
  out = transform(planted_example())
  np.testing.assert_array_equal(out["image_hw"], [80, 120])
  np.testing.assert_array_equal(out["scale_factor"], [2, 2])
  np.testing.assert_array_equal(out["orig_hw"], [40, 60])
  assert out["image_id"] == 5
  np.testing.assert_array_equal(out["gt_boxes"][:2], planted_example()["boxes"])
  np.testing.assert_array_equal(out["gt_valid"], [True, True, False])
  np.testing.assert_array_equal(out["gt_crowd"], [False, True, False])
  assert "gt_masks" not in out


# ---------------------------------------------------------------------------------------
# COCO evaluation on the host.


def eval_outputs(detections, scale=2.0):
  """One eval batch of the planted image whose detections are ``detections`` (canvas
  pixels, class, score) and masks all ones."""
  d = 20
  out = {"boxes": np.zeros((1, d, 4), np.float32), "scores": np.zeros((1, d), np.float32),
         "classes": np.full((1, d), -1, np.int32), "masks": np.zeros((1, d, 28, 28), np.float32),
         "num_detections": np.array([len(detections)], np.int32)}
  for k, (box, cls, score) in enumerate(detections):
    out["boxes"][0, k], out["classes"][0, k], out["scores"][0, k] = box, cls, score
    out["masks"][0, k] = 1.0
  ex = dt.DetectionEvalTransform(canvas=(96, 128), reader=dict, scale=(120, 80),
                                 max_instances=3)(planted_example())
  assert np.all(ex["scale_factor"] == scale)
  keys = ("image_id", "scale_factor", "orig_hw", "gt_boxes", "gt_labels", "gt_valid",
          "gt_crowd", "gt_area")
  out.update({k: np.asarray(ex[k])[None] for k in keys})
  out["mask"] = np.ones((1,), np.float32)
  return out


def test_coco_evaluator_maps_detections_back_and_scores_them(tmp_path):
  gt_box = planted_example()["boxes"][0]
  perfect = [(gt_box * 2, 3, 0.9)]
  evaluator = detection.CocoEvaluator(tuple(range(1, 11)), None, with_masks=False)
  evaluator.update(eval_outputs(perfect))
  result = evaluator.result()
  assert result["eval/box_ap"] == pytest.approx(1.0)
  assert result["eval/box_ap50"] == pytest.approx(1.0)
  # The wrong class, or the box left in canvas pixels, scores nothing.
  for wrong in ([(gt_box * 2, 4, 0.9)], [(gt_box * 4, 3, 0.9)]):
    evaluator = detection.CocoEvaluator(tuple(range(1, 11)), None, with_masks=False)
    evaluator.update(eval_outputs(wrong))
    assert evaluator.result()["eval/box_ap"] == 0.0
  # Masks against a COCO JSON (class 3 is category 4): pasted at the source size from the
  # mapped-back box.
  scene = {"image_id": 5, "segmentation": np.zeros((40, 60), np.uint8),
           "boxes": planted_example()["boxes"][:1], "classes": np.array([3]),
           "instance_masks": planted_example()["masks"][:1]}
  path = digit_scenes.write_coco_json([scene], str(tmp_path / "gt.json"))
  evaluator = detection.CocoEvaluator(tuple(range(1, 11)), path, with_masks=True)
  evaluator.update(eval_outputs(perfect))
  result = evaluator.result()
  assert result["eval/box_ap"] == pytest.approx(1.0)
  assert result["eval/mask_ap50"] == pytest.approx(1.0)
  assert 0.0 < result["eval/mask_ap"] <= 1.0
  empty = detection.CocoEvaluator(tuple(range(1, 11)), path, with_masks=True)
  empty.update(eval_outputs([]))
  assert empty.result()["eval/box_ap"] == 0.0 and empty.result()["eval/mask_ap"] == 0.0


# ---------------------------------------------------------------------------------------
# TFDS coco/2017.


def coco_config(model="faster_rcnn_swin_tiny_patch4_window7_fpn", **task):
  config = config_lib.base_config("detection")
  config.model.name = model
  config.model.overrides.update(dict(TINY_MODEL, num_classes=80))
  config.dataset.name = coco.TFDS_NAME
  config.dataset.num_classes = 80
  config.task.update(dict(canvas=CANVAS, train_scales=((64, 48),), test_scale=(64, 48),
                          max_instances=8, crop_prob=0.5, crop_size=(16, 32)))
  config.task.update(task)
  return config


def test_tfds_coco_mock_examples_through_the_transforms():
  """``tfds.testing.mock_data`` examples of the registered ``coco/2017`` features (no
  instance masks there: a Faster R-CNN reads them as they are)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  task = tasks.get_task(coco_config())
  assert task.category_ids() == coco.COCO_CATEGORY_IDS
  train, evaluate = task.train_transform(), task.eval_transform()
  with tfds.testing.mock_data(num_examples=3):
    source = tfds.data_source(coco.TFDS_NAME, split="train")
    examples = [source[i] for i in range(len(source))]
  assert "masks" not in coco.read_coco_example(examples[0])
  for i, example in enumerate(examples):
    for out, spec in ((train(example, np.random.default_rng(i)), task.batch_spec(1)),
                      (evaluate(example), task.eval_spec(1))):
      assert set(out) == set(spec)
      for key, s in spec.items():
        assert np.shape(out[key]) == s.shape[1:] and np.asarray(out[key]).dtype == s.dtype
  # Mask R-CNN on TFDS coco needs the annotation JSON's masks.
  mask_task = tasks.get_task(coco_config("mask_rcnn_swin_tiny_patch4_window7_fpn"))
  with pytest.raises(ValueError, match="no instance masks"):
    mask_task.train_transform()(examples[0], np.random.default_rng(0))


def test_coco_masks_come_from_the_annotation_json(tmp_path):
  data_dir = str(tmp_path)
  coco.build_fake_coco(data_dir, num_train=3, num_val=2)
  config = coco_config("mask_rcnn_swin_tiny_patch4_window7_fpn",
                       train_annotations=coco.TRAIN_ANNOTATIONS)
  config.dataset.data_dir = data_dir
  with open(coco.resolve_path(coco.TRAIN_ANNOTATIONS, data_dir)) as f:
    annotations = json.load(f)["annotations"]
  source = sources.open_source(config.dataset, "train")
  reader = tasks.get_task(config)._reader(train=True)   # pylint: disable=protected-access
  for k in range(len(source)):
    example = reader(source[k])
    by_id = {a["id"]: a for a in annotations if a["image_id"] == example["image_id"]}
    assert len(by_id) == len(example["boxes"])
    for box, mask, crowd in zip(example["boxes"], example["masks"], example["crowd"]):
      ann = next(a for a in by_id.values() if np.allclose(a["bbox"][:2], box[:2], atol=1e-3))
      x, y, w, h = ann["bbox"]
      np.testing.assert_allclose(box, [x, y, x + w, y + h], atol=1e-3)
      assert mask.sum() == ann["area"] and mask[y:y + h, x:x + w].all()
      assert crowd == bool(ann["iscrowd"])


# ---------------------------------------------------------------------------------------
# The loss, and a run through the loop.


def planted_batch(task, rng):
  """Two images on the 64 x 64 canvas (one resized to 48 x 64) with 2 and 1 instances."""
  images = rng.normal(size=(2, *CANVAS, 3)).astype(np.float32)
  image_hw = np.array([[64, 64], [48, 64]], np.int32)
  boxes = np.zeros((2, 4, 4), np.float32)
  boxes[0, :2] = [[4, 6, 36, 40], [30, 20, 60, 50]]
  boxes[1, :1] = [[10, 8, 42, 40]]
  valid = np.zeros((2, 4), bool)
  valid[0, :2] = valid[1, :1] = True
  masks = np.zeros((2, 4, *CANVAS), bool)
  for b, g in zip(*np.nonzero(valid)):
    x0, y0, x1, y1 = boxes[b, g].astype(int)
    masks[b, g, y0:y1, x0 + 2:x1 - 2] = True
  labels = np.array([[3, 7, 0, 0], [1, 0, 0, 0]], np.int32)
  batch = {"image": images, "image_hw": image_hw, "gt_boxes": boxes, "gt_labels": labels,
           "gt_valid": valid, "gt_masks": masks}
  spec = task.batch_spec(2)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (s.shape, s.dtype) for k, s in spec.items()}
  return batch


def component_losses(task, model, variables, batch, rng):
  """The loss terms from the component functions called directly, image by image."""
  rpn_sampler, rcnn_sampler = task.samplers()
  _, rpn_keys, rcnn_keys = detection.split_keys(rng, 2)
  apply = lambda *a, **k: model.apply(variables, *a, **k)  # noqa: E731
  feats = apply(batch["image"], method="features")
  cls, reg = apply(feats, method="rpn_outputs")
  anchors = np.concatenate(model.anchors(feats))
  sizes = [f.shape[1:3] for f in feats]
  pad = -(-batch["image_hw"] // 32) * 32
  stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
  rpn = stack([targets.rpn_targets(
      rpn_keys[b], anchors, assigner.anchor_valid_flags(sizes, pad[b], anchors_lib.STRIDES),
      batch["gt_boxes"][b], batch["gt_valid"][b], sampler=rpn_sampler) for b in range(2)])
  out = dict(zip(("loss_rpn_cls", "loss_rpn_bbox"), losses.rpn_loss(cls, reg, rpn)))
  rois, _, rois_valid = apply(feats, batch["image_hw"], True, method="proposals")
  rcnn = stack([targets.rcnn_targets(
      rcnn_keys[b], rois[b], rois_valid[b], batch["gt_boxes"][b], batch["gt_valid"][b],
      batch["gt_labels"][b], num_classes=10, sampler=rcnn_sampler) for b in range(2)])
  score, deltas = apply(feats, rcnn.rois, method="roi_outputs")
  out.update(zip(("loss_cls", "loss_bbox"), losses.rcnn_loss(score, deltas, rcnn)))
  p = rcnn_sampler.max_pos
  logits = apply(feats, rcnn.rois[:, :p], rcnn.labels[:, :p], method="mask_outputs")
  mask_t = stack([targets.mask_targets(rcnn.rois[b, :p], rcnn.pos_gt_inds[b, :p],
                                       rcnn.is_pos[b, :p], batch["gt_masks"][b],
                                       mask_hw=pad[b]) for b in range(2)])
  out["loss_mask"] = losses.mask_loss(logits, mask_t, rcnn.labels[:, :p], rcnn.is_pos[:, :p])
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Two steps of the tiny Mask R-CNN through ``loop.train_and_evaluate`` on 16 digit
  scenes, evaluated on 8, a checkpoint after each: ``(config, RunResult, workdir)``. The
  loss test reuses its params, so the module compiles one init; its programs go to the
  persistent cache for the resume test."""
  root = tmp_path_factory.mktemp("detection_run")
  config = tiny_config()
  config.dataset.data_dir = str(root / "tfds")
  config.dataset.read_threads = 2
  two_checkpointed_steps(config)
  config.optimizer.update(dict(schedule="step", step_epochs=(1.0,), warmup_mode="mmcv",
                               warmup_steps=1, no_decay_1d_and_bias=False,
                               no_decay_keywords=("norm",)))
  workdir = str(root / "run")
  with persistent_compilation_cache(compilation_cache_dir(tmp_path_factory)):
    return config, loop.train_and_evaluate(config, workdir), workdir


def test_tiny_mask_rcnn_trains_and_reports_coco_ap_through_the_loop(trained):
  config, result, _ = trained
  for name in ("train/loss",) + tuple(f"train/{n}" for n in detection.LOSS_NAMES):
    assert np.isfinite(result.metrics[name]), name
  # Ground truth: the scenes' own COCO JSON (mask AP needs it).
  assert os.path.exists(digit_scenes.coco_annotations_path(config.dataset.data_dir,
                                                           config.dataset.name))
  for name in ("eval/box_ap", "eval/box_ap50", "eval/mask_ap", "eval/mask_ap50"):
    assert 0.0 <= result.metrics[name] <= 1.0, name
  assert set(result.state.params["roi_head"]) == {"bbox_head", "mask_head"}


def test_resumed_detection_run_ends_bit_for_bit(trained, tmp_path, tmp_path_factory):
  """Resumed from its step-1 checkpoint (samplers' keys, data order, flips and scales from
  the checkpointed state), the run's step 2 and final state equal the uninterrupted run's."""
  config, result, workdir = trained
  resumed = str(tmp_path / "resumed")
  again = resume_from_checkpoint(workdir, 1, resumed, config,
                                 compilation_cache_dir(tmp_path_factory))
  assert dict(train_losses(resumed)) == {2: dict(train_losses(workdir))[2]}
  assert_same_state(result.state, again.state)
  assert again.metrics["eval/box_ap"] == result.metrics["eval/box_ap"]


def test_init_builds_the_params_of_the_test_path():
  task = tasks.get_task(tiny_config())
  model = task.build_model()
  shape = lambda x: x.shape  # noqa: E731
  cheap = jax.eval_shape(lambda: task.init_variables(model, jax.random.key(0)))
  full = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *CANVAS, 3))))
  assert jax.tree.map(shape, cheap) == jax.tree.map(shape, full)


def test_loss_is_the_sum_of_mmdets_terms_from_the_components(trained):
  config, result, _ = trained
  task = tasks.get_task(config)
  model = task.build_model()
  params = jax.device_get(result.state.params)
  batch = planted_batch(task, np.random.default_rng(0))
  rng = jax.random.key(3)

  @jax.jit
  def both(params, batch):
    loss, (terms, _) = task.loss_fn(model, params, {}, batch, rng)
    return loss, terms, component_losses(task, model, {"params": params}, batch, rng)

  loss, terms, expected = both(params, batch)
  assert set(expected) == set(detection.LOSS_NAMES) and set(terms) >= set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(terms[name], value, rtol=1e-5, err_msg=name)
    assert np.isfinite(value) and value > 0, name
  np.testing.assert_allclose(loss, sum(expected.values()), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# The drawing command (swin_jax.predict on a detection run).


def test_detections_map_back_to_the_image_and_draw_boxes_labels_and_masks():
  """``detect_image`` with a stub detector: boxes divided by the resize scale, masks pasted
  at the source size; ``draw_detections`` colours each instance's mask and outline."""
  import types  # pylint: disable=import-outside-toplevel

  from swin_jax import predict  # pylint: disable=import-outside-toplevel
  from swin_jax.visualize import detections  # pylint: disable=import-outside-toplevel

  class StubDetector:
    def apply(self, variables, images, image_hw):
      del variables
      assert images.shape == (1, 64, 64, 3)
      # One box in canvas pixels (the 60 x 90 image is resized x2/3 to 40 x 60: image_hw),
      # its mask all ones: pasted, it covers the box in the source image.
      h, w = image_hw[0, 0].astype(jnp.float32), image_hw[0, 1].astype(jnp.float32)
      box = jnp.stack([jnp.float32(8.0), jnp.float32(4.0), w * 32 / 60, h / 2])
      return {"boxes": box[None, None], "scores": jnp.asarray([[0.9]]),
              "classes": jnp.asarray([[3]]), "num_detections": jnp.asarray([1]),
              "masks": jnp.ones((1, 1, 28, 28))}

  loaded = types.SimpleNamespace(model=StubDetector(), params={}, model_state={})
  image = np.full((60, 90, 3), 200, np.uint8)
  dets = predict.detect_image(loaded, image, scale=(60, 40), canvas=(64, 64))
  np.testing.assert_allclose(dets["boxes"], [[12.0, 6.0, 48.0, 30.0]], rtol=1e-6)
  assert dets["masks"].shape == (1, 60, 90)
  assert dets["masks"][0, 6:30, 12:48].all() and dets["masks"][0].sum() == 24 * 36
  names = [str(d) for d in range(10)]
  shown = detections.draw_detections(image, dets["boxes"], dets["scores"], dets["classes"],
                                     names, masks=dets["masks"], alpha=0.5)
  color = detections.detection_colors(10)[3].astype(np.float32)
  inside = np.rint(0.5 * 200 + 0.5 * color).astype(np.uint8)
  np.testing.assert_array_equal(shown[22, 30], inside)           # mask, below the label
  np.testing.assert_array_equal(shown[20, 12], detections.detection_colors(10)[3])  # outline
  np.testing.assert_array_equal(shown[50, 70], image[50, 70])    # untouched
  with pytest.raises(ValueError, match="classes must index the 10 names"):
    detections.draw_detections(image, dets["boxes"], dets["scores"], np.array([10]), names)


def test_predict_command_draws_a_runs_detections_on_a_scene(trained, tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from PIL import Image  # pylint: disable=import-outside-toplevel
  config, _, workdir = trained
  scene = np.asarray(sources.open_source(config.dataset, "test")[0]["image"], np.uint8)
  Image.fromarray(scene).save(tmp_path / "scene.png")
  out = tmp_path / "drawn" / "scene_detections.png"
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(
      [sys.executable, "-m", "swin_jax.predict", "--checkpoint", workdir, "--image",
       str(tmp_path / "scene.png"), "--overlay", str(out), "--min_score", "0"],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "detection)" in done.stdout and f"wrote {out}" in done.stdout
  # A two-step model is barely trained: whatever it kept (score > 0.05) is listed.
  listed = [line for line in done.stdout.splitlines() if "box (" in line]
  match = re.search(r"\((\d+) detections with score >= 0", done.stdout)
  assert match and int(match.group(1)) == len(listed)
  with Image.open(out) as png:
    assert png.size == (scene.shape[1], scene.shape[0])
