"""Digit scenes: mask/box/segmentation consistency, occlusion, held-out digits, the TFDS
build read back through ``sources``, and the COCO JSON scored by pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swin_jax.data import demo_dataset
from swin_jax.data import digit_scenes
from swin_jax.data import sources

SIZE = 64
BUILD = {"size": 48, "num_train": 6, "num_test": 5, "seed": 3}
KEYS = {"image", "segmentation", "boxes", "classes", "instance_masks", "image_id",
        "source_index", "source_box", "unoccluded_area"}


@pytest.fixture(scope="module")
def pools():
  # digit_scenes' cached copy of demo_dataset.demo_splits() (loading it takes seconds).
  pools = digit_scenes.digit_pools()
  assert len(pools["test"][0]) == 10 * demo_dataset.TEST_PER_CLASS  # not swapped
  assert np.bincount(pools["test"][1]).tolist() == [demo_dataset.TEST_PER_CLASS] * 10
  return pools


@pytest.fixture(scope="module")
def test_scenes():
  return digit_scenes.generate_split("test", 24, size=SIZE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("digit_scenes_tfds"))
  return data_dir, digit_scenes.ensure_digit_scenes(data_dir, **BUILD)


def rerender_unoccluded(scene, digits):
  """Bool (N, H, W): each instance's digit redrawn alone from ``digits`` at its source box."""
  height, width = scene["segmentation"].shape
  full = np.zeros((len(scene["classes"]), height, width), bool)
  for k, (index, box) in enumerate(zip(scene["source_index"], scene["source_box"])):
    x0, y0, x1, y1 = (int(v) for v in box)
    intensity = digit_scenes.rescale_digit(digits[index], y1 - y0, x1 - x0)
    full[k, y0:y1, x0:x1] = intensity >= 128  # half of 255: the documented threshold
  return full


def expected_visible(full):
  return np.stack([full[k] & ~full[k + 1:].any(0) for k in range(len(full))])


def source_config(data_dir, name):
  return ml_collections.ConfigDict({"name": name, "data_dir": data_dir})


def quiet(fn, *args):
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args)


# --- one scene ---------------------------------------------------------------------------

def test_scene_arrays_have_the_documented_types(test_scenes):
  for scene in test_scenes:
    n = len(scene["classes"])
    assert set(scene) == KEYS and n >= 1
    assert scene["image"].shape == (SIZE, SIZE, 3) and scene["image"].dtype == np.uint8
    assert scene["segmentation"].shape == (SIZE, SIZE)
    assert scene["segmentation"].dtype == np.uint8
    assert scene["boxes"].shape == (n, 4) and scene["boxes"].dtype == np.float32
    assert scene["classes"].dtype == np.int64 and set(scene["classes"]) <= set(range(10))
    assert scene["instance_masks"].shape == (n, SIZE, SIZE)
    assert scene["instance_masks"].dtype == bool
  assert [int(s["image_id"]) for s in test_scenes] == list(range(len(test_scenes)))
  counts = [len(s["classes"]) for s in test_scenes]
  assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 1


def test_boxes_are_the_tight_exclusive_bounds_of_the_masks(test_scenes):
  for scene in test_scenes:
    for box, mask in zip(scene["boxes"], scene["instance_masks"]):
      ys, xs = np.nonzero(mask)
      assert len(ys) > 0
      assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_segmentation_is_the_union_of_the_instance_masks(test_scenes):
  for scene in test_scenes:
    masks, classes, segmentation = scene["instance_masks"], scene["classes"], scene["segmentation"]
    assert masks.sum(0).max() <= 1  # visible masks never overlap
    for digit in range(10):
      np.testing.assert_array_equal(masks[classes == digit].any(0), segmentation == 1 + digit)
    assert (segmentation <= 10).all()
    np.testing.assert_array_equal(segmentation > 0, masks.any(0))


def test_later_digits_take_pixels_from_earlier_ones(test_scenes, pools):
  digits = pools["test"][0]
  occluded_instances = 0
  for scene in test_scenes:
    full = rerender_unoccluded(scene, digits)
    np.testing.assert_array_equal(scene["instance_masks"], expected_visible(full))
    np.testing.assert_array_equal(scene["unoccluded_area"], full.sum((1, 2)))
    lost = scene["unoccluded_area"] - scene["instance_masks"].sum((1, 2))
    assert lost[-1] == 0  # the last digit painted is never covered
    assert (scene["instance_masks"].sum((1, 2)) >= 0.25 * scene["unoccluded_area"]).all()
    occluded_instances += int((lost > 0).sum())
  assert occluded_instances >= 5  # occlusion really happens, not just in principle


def test_no_occlusion_left_when_every_digit_must_stay_whole(pools):
  digits, labels = pools["train"]
  for index in range(10):
    rng = digit_scenes.scene_rng(0, "train", index)
    scene = digit_scenes.make_scene(rng, digits, labels, size=SIZE, min_visible_fraction=1.0)
    np.testing.assert_array_equal(scene["instance_masks"].sum((1, 2)), scene["unoccluded_area"])


def test_dropped_digits_are_not_painted(pools):
  # A canvas barely larger than the digits: most get covered and are dropped.
  digits, labels = pools["train"]
  options = {"size": 40, "digits_per_scene": (4, 4), "digit_size": (20, 24)}
  compared = 0
  for index in range(10):
    # The same random draws; only the drop rule differs.
    every = digit_scenes.make_scene(digit_scenes.scene_rng(1, "train", index), digits, labels,
                                    min_visible_fraction=0.0, **options)
    whole = digit_scenes.make_scene(digit_scenes.scene_rng(1, "train", index), digits, labels,
                                    min_visible_fraction=0.9, **options)
    dropped = ~np.isin(every["source_index"], whole["source_index"])
    if not dropped.any():
      continue
    compared += 1
    assert set(whole["source_index"]) < set(every["source_index"])
    # Where a dropped digit showed, the image now shows something else...
    showed = every["instance_masks"][dropped].any(0)
    assert (whole["image"] != every["image"]).any(-1)[showed].mean() > 0.9
    # ...and away from every digit both are the same background.
    away = np.ones(showed.shape, bool)
    for x0, y0, x1, y1 in every["source_box"].astype(int):
      away[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(whole["image"][away], every["image"][away])
  assert compared >= 3


def test_held_out_scenes_use_only_held_out_digits(test_scenes, pools):
  train_digits, test_digits = pools["train"][0], pools["test"][0]
  train_bytes = {d.tobytes() for d in train_digits}
  mismatches = 0
  for scene in test_scenes:
    assert (scene["source_index"] < len(test_digits)).all()
    assert not {test_digits[i].tobytes() for i in scene["source_index"]} & train_bytes
    # The masks are those of the held-out digits (and not of the train digits at the
    # same indices): pixel identity, not just index bookkeeping.
    np.testing.assert_array_equal(scene["instance_masks"],
                                  expected_visible(rerender_unoccluded(scene, test_digits)))
    np.testing.assert_array_equal(scene["classes"], pools["test"][1][scene["source_index"]])
    wrong = expected_visible(rerender_unoccluded(scene, train_digits))
    mismatches += not np.array_equal(scene["instance_masks"], wrong)
  assert mismatches == len(test_scenes)


def test_train_scenes_use_train_digits(pools):
  digits, labels = pools["train"]
  for scene in digit_scenes.generate_split("train", 6, size=SIZE):
    np.testing.assert_array_equal(scene["instance_masks"],
                                  expected_visible(rerender_unoccluded(scene, digits)))
    np.testing.assert_array_equal(scene["classes"], labels[scene["source_index"]])


def test_same_seed_same_bytes_other_seed_other_scenes(test_scenes):
  again = digit_scenes.generate_split("test", 24, size=SIZE)
  for a, b in zip(test_scenes, again):
    for key in KEYS:
      assert np.asarray(a[key]).tobytes() == np.asarray(b[key]).tobytes(), key
  other = digit_scenes.generate_split("test", 3, size=SIZE, seed=1)
  train = digit_scenes.generate_split("train", 3, size=SIZE)
  for scene in other + train:
    assert not any(np.array_equal(scene["image"], s["image"]) for s in test_scenes[:3])


def test_names_round_trip():
  assert digit_scenes.dataset_name() == "digit_scenes/128px"
  assert digit_scenes.parse_dataset_name("digit_scenes/128px:1.0.0") == {"size": 128}
  name = digit_scenes.dataset_name(**BUILD)
  assert name == "digit_scenes/48px_train6_test5_seed3"
  assert digit_scenes.parse_dataset_name(name) == BUILD
  assert digit_scenes.is_digit_scenes(name) and not digit_scenes.is_digit_scenes("mnist")
  with pytest.raises(ValueError):
    digit_scenes.parse_dataset_name("digit_scenes/large")


def test_a_layout_in_the_name_sizes_and_counts_the_digits():
  layout = {"size": 64, "digit_size": (24, 40), "digits_per_scene": (1, 3)}
  name = digit_scenes.dataset_name(**layout)
  assert name == "digit_scenes/64px_digits24-40_count1-3"
  assert digit_scenes.parse_dataset_name(name + ":1.0.0") == layout
  # The default layout of a canvas size is not spelt out.
  assert digit_scenes.dataset_name(64, digit_size=digit_scenes.digit_size_range(64)) == \
      "digit_scenes/64px"
  scenes = digit_scenes.generate_split("train", 20, size=64, digit_size=(24, 40),
                                       digits_per_scene=(1, 3))
  for scene in scenes:
    assert 1 <= len(scene["classes"]) <= 3
    x0, y0, x1, y1 = scene["source_box"].T
    longer = np.maximum(x1 - x0, y1 - y0)
    assert np.all((24 <= longer) & (longer <= 40))


def test_dark_polarity_puts_light_digits_on_dark_backgrounds_only():
  name = digit_scenes.dataset_name(32, polarity="dark")
  assert name == "digit_scenes/32px_dark"
  assert digit_scenes.parse_dataset_name(name) == {"size": 32, "polarity": "dark"}
  mixed = digit_scenes.generate_split("test", 40, size=32)
  dark = digit_scenes.generate_split("test", 40, size=32, polarity="dark")

  def ink_is_lighter(scene):
    gray = scene["image"].mean(-1)
    return gray[scene["segmentation"] > 0].mean() > gray[scene["segmentation"] == 0].mean()

  assert all(ink_is_lighter(s) for s in dark)
  assert 0 < sum(ink_is_lighter(s) for s in mixed) < len(mixed)
  # Same random stream: the scenes whose background was dark anyway are identical.
  same = [np.array_equal(a["image"], b["image"]) for a, b in zip(mixed, dark)]
  assert same == [ink_is_lighter(s) for s in mixed]
  with pytest.raises(ValueError, match="polarity"):
    digit_scenes.dataset_name(32, polarity="light")


# --- the TFDS build ----------------------------------------------------------------------

def test_build_reads_back_identical_arrays_through_sources(built):
  data_dir, name = built
  assert name == digit_scenes.dataset_name(**BUILD)
  options = {k: BUILD[k] for k in ("size", "seed")}
  for split, count in (("train", BUILD["num_train"]), ("test", BUILD["num_test"])):
    expected = digit_scenes.generate_split(split, count, **options)
    source = sources.open_source(source_config(data_dir, name), split)
    assert len(source) == count
    for k in range(count):
      example = source[k]
      assert set(example) == KEYS
      for key in KEYS:
        got, want = np.asarray(example[key]), np.asarray(expected[k][key])
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)


def test_build_is_reused_and_survives_a_lost_race(built, tmp_path, monkeypatch):
  data_dir, name = built
  info = os.path.join(data_dir, name, digit_scenes.VERSION, "dataset_info.json")
  mtime = os.path.getmtime(info)
  assert digit_scenes.ensure_digit_scenes(data_dir, **BUILD) == name
  assert os.path.getmtime(info) == mtime  # found, not rebuilt
  # Another process finishes first: our rename then fails and we keep its build.
  race_dir = str(tmp_path / "race")
  shutil.copytree(data_dir, race_dir)
  real, calls = digit_scenes.is_prepared, []

  def not_yet_at_first_look(*args):
    calls.append(args)
    return len(calls) > 1 and real(*args)

  monkeypatch.setattr(digit_scenes, "is_prepared", not_yet_at_first_look)
  digit_scenes.ensure_for_name(name + ":1.0.0", race_dir)
  assert len(calls) == 2  # it did build, and then found the winner's copy
  assert os.path.getmtime(info.replace(data_dir, race_dir)) == os.path.getmtime(info)
  assert sorted(os.listdir(race_dir)) == [digit_scenes.DATASET]  # staging removed


# --- COCO ----------------------------------------------------------------------------------

# pycocotools' mask decoding warns under numpy 2 (its own call, harmless).
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_coco_json_matches_the_split(built):
  data_dir, name = built
  path = digit_scenes.coco_annotations_path(data_dir, name)
  assert path == os.path.join(data_dir, name, digit_scenes.VERSION, "instances_test.json")
  coco = quiet(COCO, path)
  source = sources.open_source(source_config(data_dir, name), "test")
  assert sorted(coco.getImgIds()) == list(range(len(source)))
  assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [str(d) for d in range(10)]
  assert coco.getCatIds() == list(range(1, 11))
  for k in range(len(source)):
    scene = source[k]
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[int(scene["image_id"])]))
    assert len(annotations) == len(scene["classes"])
    for ann, box, digit, mask in zip(annotations, scene["boxes"], scene["classes"],
                                     scene["instance_masks"]):
      assert ann["category_id"] == 1 + digit and ann["iscrowd"] == 0 and ann["id"] >= 1
      x0, y0, x1, y1 = box.tolist()
      assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
      assert ann["area"] == mask.sum()
      np.testing.assert_array_equal(coco.annToMask(ann), mask)
      assert mask_utils.toBbox(ann["segmentation"]).tolist() == ann["bbox"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_detections_scores_ap_one(built, iou_type):
  data_dir, name = built
  path = digit_scenes.coco_annotations_path(data_dir, name)
  with open(path, encoding="utf-8") as f:
    annotations = json.load(f)["annotations"]
  ground_truth = quiet(COCO, path)

  def average_precision(class_shift):
    # Fresh dicts each time: loadRes adds fields to the detections it is given.
    detections = [{"image_id": a["image_id"], "score": 1.0,
                   "category_id": (a["category_id"] - 1 + class_shift) % 10 + 1,
                   **({"bbox": a["bbox"]} if iou_type == "bbox" else
                      {"segmentation": a["segmentation"]})} for a in annotations]
    evaluation = COCOeval(ground_truth, quiet(ground_truth.loadRes, detections), iou_type)
    for step in (evaluation.evaluate, evaluation.accumulate, evaluation.summarize):
      quiet(step)
    return evaluation.stats[:2]  # AP @ IoU 0.50:0.95, AP @ IoU 0.50

  assert average_precision(0) == pytest.approx([1.0, 1.0])
  # A wrong class on every detection must cost everything: the check is not vacuous.
  assert average_precision(1) == pytest.approx([0.0, 0.0])


# --- statistics --------------------------------------------------------------------------

def test_statistics_add_up(test_scenes, built):
  stats = digit_scenes.dataset_statistics(test_scenes)
  per_scene = [len(s["classes"]) for s in test_scenes]
  assert stats["scenes"] == len(test_scenes) and stats["instances"] == sum(per_scene)
  assert stats["instances_per_scene"] == {"mean": np.mean(per_scene), "min": min(per_scene),
                                          "max": max(per_scene)}
  assert sum(stats["class_counts"]) == stats["instances"]
  assert sum(stats["coco_area_buckets"].values()) == stats["instances"]
  foreground = np.mean([(s["segmentation"] > 0).mean() for s in test_scenes])
  assert stats["foreground_pixel_fraction"] == pytest.approx(foreground)
  assert stats["foreground_pixel_fraction"] + stats["background_pixel_fraction"] == \
      pytest.approx(1)
  assert 0 < stats["occluded_pixel_fraction"] < 0.5
  # The same numbers from the TFDS source as from in-memory scenes.
  data_dir, name = built
  source = sources.open_source(source_config(data_dir, name), "test")
  in_memory = digit_scenes.generate_split("test", BUILD["num_test"], size=BUILD["size"],
                                          seed=BUILD["seed"])
  assert digit_scenes.dataset_statistics(source) == digit_scenes.dataset_statistics(in_memory)
