"""Detection train canvas buckets: the plan predicts every output size, each batch sits on
the smallest bucket that holds its images, the stream is the one-canvas stream regrouped,
every host and a resumed iterator see the same bucket per step, and a tiny run over two
buckets compiles its train step exactly twice."""

from __future__ import annotations

import json
import re

import grain
import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import detection_buckets as db
from swin_jax.data import detection_transforms as dt
from swin_jax.data import digit_scenes
from swin_jax.data import pipeline
from swin_jax.train import config as config_lib

pytestmark = pytest.mark.xdist_group("detection_buckets")

# Sources of three shapes; scales (long, short) up to 96 x 64, and a crop branch that can
# turn a landscape image portrait: outputs of both orientations and two sizes.
SCALES = ((96, 64), (64, 32))
BUCKETS = ((64, 96), (96, 64), (32, 64), (64, 32))
SEED = 3


def canonical(h: int, w: int, seed: int) -> dict:
  """A canonical example of ``h x w`` with two boxes and their masks."""
  rng = np.random.default_rng(seed)
  boxes = np.array([[2, 3, w // 2, h // 2], [w // 3, h // 3, w - 1, h - 2]], np.float32)
  masks = np.zeros((2, h, w), bool)
  for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
    masks[k, y0:y1, x0:x1] = True
  return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "boxes": boxes,
          "labels": np.array([1, 2], np.int32), "crowd": np.zeros(2, bool),
          "area": masks.sum((1, 2)).astype(np.float32), "image_id": seed, "masks": masks}


SOURCE = [canonical(*((40, 60), (60, 40), (48, 48))[i % 3], i) for i in range(24)]
SIZES = np.array([e["image"].shape[:2] for e in SOURCE], np.int32)


def transform(canvas=(96, 96)) -> dt.DetectionTrainTransform:
  return dt.DetectionTrainTransform(canvas=canvas, reader=lambda e: e, scales=SCALES,
                                    flip_prob=0.5, crop_prob=0.5, crop_scales=((72, 48),),
                                    crop_size=(24, 48), max_instances=3)


def iterator(process_index=0, process_count=1, global_batch=4):
  return db.BucketedTrainIterator(SOURCE, SIZES, transform(), BUCKETS, global_batch, SEED,
                                  process_index, process_count, threads=2)


def take(it, steps: int) -> list[dict]:
  return [next(it) for _ in range(steps)]


# ----------------------------------------------------------------------------- canvases


def test_parse_buckets_validates_and_covers_both_orientations():
  assert db.parse_buckets((), SCALES) == ()
  assert db.parse_buckets([[64, 96], [96, 64]], SCALES) == ((64, 96), (96, 64))
  for bad, message in [(((64, 90), (96, 64)), "multiples of 32"),
                       (((64, 96), (64, 96), (96, 64)), "twice"),
                       (((64, 96),), "no canvas holds 96 x 64"),
                       ((64, 96), "canvas pairs"),
                       (((64, 96, 3), (96, 64)), "two positive")]:
    with pytest.raises(ValueError, match=message):
      db.parse_buckets(bad, SCALES)


def test_bucket_of_takes_the_smallest_canvas_that_holds_the_size():
  assert db.bucket_of((30, 50), BUCKETS) == 2
  assert db.bucket_of((50, 30), BUCKETS) == 3
  assert db.bucket_of((33, 50), BUCKETS) == 0
  assert db.bucket_of((32, 32), BUCKETS) == 2          # a tie: the first listed
  with pytest.raises(ValueError, match="no bucket"):
    db.bucket_of((97, 10), BUCKETS)


def test_swin_token_grids_pad_each_stage_to_the_window():
  assert db.swin_token_grids((1344, 896)) == [(336, 224), (168, 112), (84, 56), (42, 28)]
  assert db.swin_token_grids((800, 800)) == [(203, 203), (105, 105), (56, 56), (28, 28)]


def test_the_plan_predicts_every_output_size_crop_branch_included():
  t = transform(canvas=(128, 128))
  rng = np.random.default_rng(0)
  crops = 0
  for i in range(60):
    example = SOURCE[i % len(SOURCE)]
    seed = int(rng.integers(1 << 30))
    geometry = t.plan(example["image"].shape[:2], np.random.default_rng(seed))
    out = t(example, np.random.default_rng(seed))
    assert tuple(out["image_hw"]) == geometry.out_hw
    crops += geometry.crop_box is not None
  assert 10 < crops < 50


# ---------------------------------------------------------------------------- iterator


def test_batches_sit_on_the_smallest_bucket_holding_each_image():
  batches = take(iterator(), 12)
  seen = set()
  for batch in batches:
    canvas = batch["image"].shape[1:3]
    assert canvas in BUCKETS
    seen.add(canvas)
    assert batch["gt_masks"].shape[2:] == canvas
    for image, (h, w) in zip(batch["image"], batch["image_hw"]):
      assert BUCKETS[db.bucket_of((h, w), BUCKETS)] == canvas
      assert not image[h:].any() and not image[:, w:].any()   # padding only outside
  assert len(seen) >= 3


def test_the_stream_is_the_one_canvas_stream_regrouped():
  """Position j of the bucketed stream is the image and draws the one-canvas pipeline
  reads at j; every position is used once (emitted or still queued)."""
  it = iterator()
  one_canvas = (grain.MapDataset.source(SOURCE)
                .shuffle(seed=pipeline.seed_for(SEED, "shuffle")).repeat(None)
                .random_map(transform(), seed=pipeline.seed_for(SEED, "augment")))
  for j in (0, 1, 7, 23, 24, 40):
    mine, theirs = it.load(j, (96, 96)), one_canvas[j]
    for key in theirs:
      np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
  emitted = []
  for _ in range(10):
    _, positions = it.grouper.next()
    emitted += positions
  state = it.grouper.get_state()
  used = emitted + [j for queue in state["pending"] for j in queue]
  assert sorted(used) == list(range(state["position"]))


def test_two_hosts_feed_the_same_bucket_per_step_and_split_the_one_host_batch():
  one = take(iterator(), 8)
  hosts = [take(iterator(i, 2), 8) for i in range(2)]
  for step, batch in enumerate(one):
    assert hosts[0][step]["image"].shape[1:3] == hosts[1][step]["image"].shape[1:3]
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][step][key], hosts[1][step][key]]), batch[key])


def test_a_restored_iterator_continues_bit_for_bit():
  it = iterator(1, 2)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))   # as the checkpoint stores it
  expected = take(it, 6)
  again = iterator(1, 2)
  again.set_state(state)
  for a, b in zip(take(again, 6), expected):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  with pytest.raises(ValueError, match="train_buckets changed"):
    db.BucketedTrainIterator(SOURCE, SIZES, transform(), BUCKETS[:2], 4, SEED).set_state(state)


def test_an_image_whose_size_differs_from_its_listed_size_is_an_error():
  wrong = SIZES.copy()
  wrong[:, 0] += 8
  it = db.BucketedTrainIterator(SOURCE, wrong, transform(), BUCKETS, 4, SEED)
  with pytest.raises(ValueError, match="stale image-size cache"):
    it.load(0, (96, 96))


# --------------------------------------------------------------------------------- task


def tiny_config(**task):
  """A tiny Faster R-CNN on 16 digit scenes, trained at 32 or 64 px (two buckets)."""
  config = config_lib.base_config("detection")
  config.model.name = "faster_rcnn_swin_tiny_patch4_window7_fpn"
  config.model.overrides.update(dict(
      img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1), window_size=4,
      num_classes=10, drop_path_rate=0.0, neck_channels=16, rpn_channels=16, fc_channels=32,
      rpn_max_per_img=64, rpn_train_nms_pre=128, rpn_test_nms_pre=128, max_detections=20,
      pre_nms_top_k=256))
  config.dataset.name = digit_scenes.dataset_name(64, num_train=16, num_test=8,
                                                  digit_size=(24, 40), digits_per_scene=(1, 3))
  config.dataset.train_split, config.dataset.eval_split = "train", "test"
  config.dataset.num_classes = 10
  config.dataset.read_threads = 2
  config.task.update(dict(canvas=(64, 64), train_scales=((64, 32), (64, 64)),
                          test_scale=(64, 64), flip_prob=0.5, max_instances=4,
                          rpn_samples=64, rcnn_samples=32,
                          train_buckets=((32, 32), (64, 64))))
  config.task.update(task)
  config.mesh_shape = (1, 1)
  config.batch_size = 2
  config.total_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 4
  config.eval_every_steps = 0
  return config


def test_a_bad_train_buckets_value_is_a_clear_error(tmp_path):
  config = tiny_config(train_buckets=((32, 32),))
  with pytest.raises(ValueError, match=r"task.train_buckets .* no canvas holds 64 x 64"):
    tasks.get_task(config).train_buckets()
  config = tiny_config(train_buckets=((48, 64), (64, 64)))
  with pytest.raises(ValueError, match="multiples of 32"):
    tasks.get_task(config).train_buckets()
  config = config_lib.base_config("soft_teacher")
  config.task.train_buckets = ((800, 1344), (1344, 800))
  with pytest.raises(ValueError, match="not supported by the soft_teacher task"):
    tasks.get_task(config).batch_spec(1)


def test_the_coco_recipes_train_on_their_buckets():
  from configs.detection import common  # pylint: disable=import-outside-toplevel
  for schedule in common.SCHEDULES:
    config = common.mask_rcnn_coco("mask_rcnn_swin_tiny_patch4_window7_fpn", schedule)
    config_lib.validate_config(config)
    assert tasks.get_task(config).train_buckets() == common.TRAIN_BUCKETS


def test_the_padding_experiment_runs_on_a_small_sample():
  from test_experiments import load_script  # pylint: disable=import-outside-toplevel
  report = load_script("detection_buckets").run(n=400, seed=0, max_compiles=4)
  rows = report["results"]
  single = rows["single canvas (recipe before buckets)"]
  assert single["compiles"] == 1 and single["relative_swin_cost"] == 1.0
  assert rows["orientation"]["swin_padding"] < single["swin_padding"]
  assert [len(r["buckets"]) for name, r in rows.items() if name.startswith("greedy")] == [3, 4]
  assert "| greedy 4:" in load_script("detection_buckets").table(report)


@pytest.mark.slow   # two detection train-step compiles: 2-4 minutes on 2 loaded cores
def test_a_run_over_two_buckets_compiles_the_step_twice_and_trains(tmp_path, capsys,
                                                                   monkeypatch):
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  config.dataset.data_dir = str(tmp_path / "tfds")
  # The end-of-run eval (its own program) is not what this test measures.
  monkeypatch.setattr(loop, "evaluate", lambda *args: {})
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  compiles = [int(n) for n in re.findall(r"^train compiles: (\d+)", out, re.M)]
  assert compiles == [1, 2], out
  assert re.search(r"train compiles: 2 \(image \(2, (32, 32|64, 64), 3\)\)", out)
  assert "train buckets (share of the first images): 32x32" in out
  assert np.isfinite(result.metrics["train/loss"])
  assert result.metrics["train/loss"] > 0
