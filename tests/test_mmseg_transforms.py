"""mmseg's ADE20K pipeline in numpy (``swin_jax.data.mmseg_transforms``): against the real
mmseg 1.2.2 / mmcv 2.1 transforms and OpenCV with the same draws, its statistics over many
draws, the TFDS ``scene_parse150`` feature spec through the task, and the task's selection.

The oracles run mmseg's transforms with numpy's global random functions replaced by scripted
values, and ours with a generator that returns the same values, so both make the same random
choices. Images go to mmseg in BGR (as it loads them) and come back to RGB. OpenCV's uint8
resize and HSV -> RGB depend a little on its build (module docstring): those comparisons
allow one grey level in at most 0.1 % of the values (on the x86 AVX2 wheel here they agree
exactly); integer ones (RGB -> HSV, nearest, sizes, crops, flips, labels) are exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import mmseg_transforms as mt
from swin_jax.train import config as config_lib

MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def smooth_image(rng, h, w):
  """uint8 RGB with gradients and noise (bilinear weights and HSV sectors all matter)."""
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([yy * 255 / max(h - 1, 1), xx * 255 / max(w - 1, 1),
                   (yy + xx) * 127 / max(h + w - 2, 1)], axis=-1)
  return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def block_label(rng, h, w, classes=6):
  """(h, w) uint8 labels: a few rectangles of classes 1..classes on 0 ('other')."""
  label = np.zeros((h, w), np.uint8)
  for k in range(1, classes + 1):
    y, x = rng.integers(0, max(h - 4, 1)), rng.integers(0, max(w - 4, 1))
    label[y:y + rng.integers(4, h // 2 + 5), x:x + rng.integers(4, w // 2 + 5)] = k
  return label


def assert_matches_opencv(ours, ref, scale=1.0, anywhere=False):
  """Equal but for one grey level (``scale`` converts to grey levels) in at most 0.1 % of
  the values, or ``anywhere`` (rows narrower than OpenCV's vector block: its rounding
  tail)."""
  assert ours.shape == ref.shape and ours.dtype == ref.dtype
  diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64)) * scale
  assert diff.max() <= 1.001, diff.max()
  if not anywhere:
    assert np.mean(diff > 1e-3) <= 1e-3, np.mean(diff > 1e-3)


class ScriptedGenerator:
  """A ``np.random.Generator`` stand-in replaying values by kind: ``random()`` from
  ``'random'``; ``integers(2)`` from ``'coin'``; ``integers(lo, hi)`` from ``'offset'`` (lo 0)
  or ``'hue'`` (lo < 0) as ``lo + int(f * (hi - lo))`` of a fraction f; ``uniform`` from
  ``'uniform'`` as ``lo + f (hi - lo)``."""

  def __init__(self, script):
    self.queues = {k: list(v) for k, v in script.items()}

  def random(self):
    return self.queues["random"].pop(0)

  def integers(self, low, high=None):
    if high is None:
      assert low == 2
      return self.queues["coin"].pop(0)
    f = self.queues["offset" if low == 0 else "hue"].pop(0)
    return low + int(f * (high - low))

  def uniform(self, low, high):
    return low + self.queues["uniform"].pop(0) * (high - low)


def script_numpy_random(monkeypatch, script, flip_prob=0.5):
  """Replaces numpy.random's functions that mmcv / mmseg call by the same script:
  ``random_sample`` (the resize ratio), ``randint`` (coins, crop offsets, hue),
  ``uniform`` and ``choice`` (RandomFlip's direction, from the flip draw of 'random')."""
  queues = {k: list(v) for k, v in script.items()}
  randoms = queues["random"]

  def randint(low, high=None):
    if high is None:
      assert low == 2
      return queues["coin"].pop(0)
    f = queues["offset" if low == 0 else "hue"].pop(0)
    return low + int(f * (high - low))

  def choice(options, p=None):
    assert list(options) == ["horizontal", None] and p[0] == flip_prob
    return "horizontal" if randoms.pop(0) < flip_prob else None

  monkeypatch.setattr(np.random, "random_sample", lambda: randoms.pop(0))
  monkeypatch.setattr(np.random, "randint", randint)
  monkeypatch.setattr(np.random, "uniform", lambda low, high: low + queues["uniform"].pop(0)
                      * (high - low))
  monkeypatch.setattr(np.random, "choice", choice)
  return queues


def random_script(rng, crops=11):
  return {"random": list(rng.random(2)), "coin": list(rng.integers(0, 2, 6)),
          "offset": list(rng.random(2 * crops)), "hue": list(rng.random(1)),
          "uniform": list(rng.random(4))}


@pytest.fixture(scope="module")
def mm():
  """mmcv / mmseg transforms (mmcv-lite: the compiled-op stub first)."""
  pytest.importorskip("cv2")
  pytest.importorskip("mmseg")
  import mm_stubs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import mmcv  # pylint: disable=import-outside-toplevel
  from mmcv.transforms import processing  # pylint: disable=import-outside-toplevel
  from mmseg.datasets.transforms import transforms  # pylint: disable=import-outside-toplevel
  return mmcv, processing, transforms


# ------------------------------------------------------------------ (a) against mmseg/mmcv


def test_resize_and_hsv_match_opencv(mm):
  import cv2  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for _ in range(12):
    h, w = rng.integers(3, 90, 2)
    dh, dw = rng.integers(3, 200, 2)
    image, label = smooth_image(rng, h, w), block_label(rng, h, w).astype(np.int32)
    ref = cv2.resize(image, (int(dw), int(dh)), interpolation=cv2.INTER_LINEAR)
    assert_matches_opencv(mt.resize_bilinear(image, (dh, dw)), ref)
    y0, x0 = rng.integers(0, dh), rng.integers(0, dw)
    window = mt.resize_bilinear(image, (dh, dw), window=(y0, y0 + 32, x0, x0 + 32))
    np.testing.assert_array_equal(window, mt.resize_bilinear(image, (dh, dw))[y0:y0 + 32,
                                                                             x0:x0 + 32])
    np.testing.assert_array_equal(
        mt.resize_nearest(label, (dh, dw)),
        cv2.resize(label, (int(dw), int(dh)), interpolation=cv2.INTER_NEAREST))
  # Every colour through RGB -> HSV (integer arithmetic, exact), 64 wide rows for HSV -> RGB.
  colours = np.arange(1 << 24, dtype=np.uint32)[::7]
  rgb = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], -1).astype(np.uint8)
  rgb = rgb[:len(rgb) // 64 * 64].reshape(-1, 64, 3)
  np.testing.assert_array_equal(mt.rgb_to_hsv(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
  hsv = np.stack(np.meshgrid(np.arange(180), np.arange(0, 256, 3), np.arange(0, 256, 3),
                             indexing="ij"), -1).astype(np.uint8).reshape(-1, 3)
  hsv = hsv[:len(hsv) // 64 * 64].reshape(-1, 64, 3)
  assert_matches_opencv(mt.hsv_to_rgb(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


def test_rescale_sizes_match_mmcv(mm, monkeypatch):
  """RandomResize's scale for a drawn ratio and mmcv's keep-ratio size, many sizes/ratios."""
  mmcv, processing, _ = mm
  rng = np.random.default_rng(1)
  draws = []
  monkeypatch.setattr(np.random, "random_sample", lambda: draws.pop(0))
  for _ in range(300):
    h, w = (int(s) for s in rng.integers(20, 2500, 2))
    u = float(rng.random())
    draws.append(u)
    scale = processing.RandomResize._random_sample_ratio((2048, 512), (0.5, 2.0))
    assert mt.sample_scale(ScriptedGenerator({"random": [u]})) == scale
    new_w, new_h = mmcv.rescale_size((w, h), scale)
    assert mt.keep_ratio_rescale_size((h, w), scale) == (new_h, new_w)


def test_random_resize_crop_flip_match_mmcv_mmseg(mm, monkeypatch):
  """RandomResize (keep ratio), RandomCrop (cat_max_ratio, re-crops) and RandomFlip with the
  same draws give the same arrays."""
  _, processing, transforms = mm
  rng = np.random.default_rng(2)
  resize = processing.RandomResize(scale=(128, 64), ratio_range=(0.5, 2.0), keep_ratio=True)
  crop = transforms.RandomCrop(crop_size=(32, 32), cat_max_ratio=0.75)
  flip = processing.RandomFlip(prob=0.5, direction="horizontal")
  retried = 0
  for _ in range(10):
    # Mostly class 0: many crops hold one class (or >= 75 % of one) and are re-drawn.
    image, label = smooth_image(rng, 40, 56), np.zeros((40, 56), np.uint8)
    y, x = rng.integers(0, 20, 2)
    label[y:y + 15, x:x + 20] = 3
    label[:4] = 255
    script = random_script(rng)
    left = script_numpy_random(monkeypatch, script)
    results = {"img": image[..., ::-1].copy(), "gt_seg_map": label.copy(),
               "seg_fields": ["gt_seg_map"]}
    results = flip.transform(crop.transform(resize.transform(results)))
    monkeypatch.undo()
    ours_rng = ScriptedGenerator(script)
    out_image, out_label = mt.random_resize(image, label, ours_rng, (128, 64), (0.5, 2.0))
    out_image, out_label = mt.random_crop(out_image, out_label, ours_rng, 32, 0.75)
    out_image, out_label = mt.random_flip(out_image, out_label, ours_rng, 0.5)
    assert {k: len(v) for k, v in ours_rng.queues.items()} == {k: len(v)
                                                              for k, v in left.items()}
    retried += len(left["offset"]) < 20
    np.testing.assert_array_equal(out_label, results["gt_seg_map"])
    assert_matches_opencv(out_image, results["img"][..., ::-1])
  assert retried, "no example re-drew its crop"


def test_crop_acceptance_matches_mmseg_on_a_planted_label(mm, monkeypatch):
  """Given offsets: mmseg keeps the first acceptable crop of the first 10, else the 11th."""
  _, _, transforms = mm
  label = np.ones((48, 48), np.uint8)
  label[18:30, 18:30] = 2
  label[:4] = 255                               # ignored rows count for nothing
  crop = transforms.RandomCrop(crop_size=(16, 16), cat_max_ratio=0.75)
  rng = np.random.default_rng(3)
  for first_good in (0, 3, 9, None):
    offsets = [(0, 0)] * 11                     # all class 1: rejected
    if first_good is not None:
      offsets[first_good] = (12, 12)            # overlap 10 x 10 of class 2: accepted
    offsets[10] = tuple(rng.integers(0, 33, 2))
    fractions = [o / 33 + 1e-9 for pair in offsets for o in pair]
    script_numpy_random(monkeypatch, {"random": [], "offset": fractions})
    results = crop.transform({"img": np.zeros((48, 48, 3), np.uint8), "gt_seg_map": label,
                              "seg_fields": ["gt_seg_map"]})
    monkeypatch.undo()
    box = mt.crop_bbox(label, ScriptedGenerator({"offset": fractions}), 16, 0.75)
    expected = offsets[10] if first_good is None else offsets[first_good]
    assert box[::2] == expected
    np.testing.assert_array_equal(label[box[0]:box[1], box[2]:box[3]], results["gt_seg_map"])
  assert mt.crop_acceptable(label[12:28, 12:28], 0.75)
  assert not mt.crop_acceptable(label[0:16, 0:16], 0.75)
  assert not mt.crop_acceptable(np.full((4, 4), 255), 0.75)


def test_photometric_distortion_matches_mmseg_for_every_branch(mm, monkeypatch):
  """All 32 coin patterns (brightness, contrast mode, contrast, saturation, hue)."""
  _, _, transforms = mm
  rng = np.random.default_rng(4)
  image = smooth_image(rng, 16, 64)
  distortion = transforms.PhotoMetricDistortion()
  for pattern in range(32):
    coins = [(pattern >> k) & 1 for k in range(5)]
    script = {"random": [], "coin": coins, "uniform": list(rng.random(4)),
              "hue": list(rng.random(1))}
    script_numpy_random(monkeypatch, script)
    ref = distortion.transform({"img": image[..., ::-1].copy()})["img"][..., ::-1]
    monkeypatch.undo()
    assert_matches_opencv(mt.photometric_distortion(image, ScriptedGenerator(script)), ref)


def test_train_transform_matches_the_mmseg_pipeline(mm, monkeypatch):
  """MMSegTrainTransform end to end against LoadAnnotations(reduce_zero_label) ->
  RandomResize -> RandomCrop -> RandomFlip -> PhotoMetricDistortion -> imnormalize -> impad."""
  mmcv, processing, transforms = mm
  rng = np.random.default_rng(5)
  # (40, 56) by (256, 128): always larger than the crop; (30, 24) by (96, 48): often padded,
  # its rows then narrower than OpenCV's HSV vector block.
  for size, scale, padded in [((40, 56), (256, 128), False), ((30, 24), (96, 48), True)]:
    ours = mt.MMSegTrainTransform(crop_size=64, scale=scale, label_key="annotation",
                                  reduce_zero_label=True)
    pipeline = [processing.RandomResize(scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
                transforms.RandomCrop(crop_size=(64, 64), cat_max_ratio=0.75),
                processing.RandomFlip(prob=0.5), transforms.PhotoMetricDistortion()]
    for _ in range(3):
      image, label = smooth_image(rng, *size), block_label(rng, *size)
      script = random_script(rng)
      script_numpy_random(monkeypatch, script)
      results = {"img": image[..., ::-1].copy(),
                 "gt_seg_map": mt.reduce_zero_label(label).astype(np.uint8),
                 "seg_fields": ["gt_seg_map"]}
      for transform in pipeline:
        results = transform.transform(results)
      monkeypatch.undo()
      ref_image = mmcv.imnormalize(results["img"].astype(np.float32), MEAN, STD, to_rgb=True)
      ref_image = mmcv.impad(ref_image, shape=(64, 64), pad_val=0)
      ref_label = mmcv.impad(results["gt_seg_map"], shape=(64, 64), pad_val=255)
      out = ours({"image": image, "annotation": np.stack([label] * 3, -1)},
                 ScriptedGenerator(script))
      assert out["image"].dtype == np.float32 and out["label"].dtype == np.int32
      np.testing.assert_array_equal(out["label"], ref_label)
      assert_matches_opencv(out["image"], ref_image, scale=STD, anywhere=padded)


def test_eval_transform_matches_mmcv_keep_ratio_resize(mm):
  mmcv, processing, _ = mm
  rng = np.random.default_rng(6)
  image, label = smooth_image(rng, 30, 40), block_label(rng, 30, 40)
  out = mt.MMSegEvalTransform(reduce_zero_label=True, ratios=(1.0, 0.75))(
      {"image": image, "label": label})
  # The official fork's MultiScaleFlipAug: Resize to (int(2048 r), int(512 r)), keep ratio.
  for image_r, size, scale, expected in zip(out["images"], out["image_sizes"],
                                            [(2048, 512), (1536, 384)],
                                            [(512, 683, 3), (384, 512, 3)]):
    results = processing.Resize(scale=scale, keep_ratio=True).transform(
        {"img": image[..., ::-1].copy()})
    assert image_r.shape == results["img"].shape == expected
    assert tuple(size) == expected[:2]
    ref = mmcv.imnormalize(results["img"].astype(np.float32), MEAN, STD, to_rgb=True)
    assert_matches_opencv(image_r, ref, scale=STD)
  np.testing.assert_array_equal(out["label_full"], mt.reduce_zero_label(label))
  np.testing.assert_array_equal(out["label_size"], [30, 40])


# ----------------------------------------------------------------------- (b) statistics


def test_resize_ratio_distribution():
  """Short side int(16 r) for r ~ U[0.5, 2): 8..31, mean about 19.5."""
  rng = np.random.default_rng(7)
  image, label = np.zeros((40, 30, 3), np.uint8), np.zeros((40, 30), np.int32)
  shorts = [mt.keep_ratio_rescale_size((40, 30), mt.sample_scale(rng, (64, 16)))[1]
            for _ in range(4000)]
  assert min(shorts) == 8 and max(shorts) == 31
  assert abs(np.mean(shorts) - 19.5) < 0.4
  for _ in range(5):                            # the arrays follow the drawn size
    state = rng.bit_generator.state
    out_image, out_label = mt.random_resize(image, label, rng, (64, 16))
    rng.bit_generator.state = state
    size = mt.keep_ratio_rescale_size((40, 30), mt.sample_scale(rng, (64, 16)))
    assert out_image.shape[:2] == out_label.shape == size


def test_flip_frequency():
  rng = np.random.default_rng(8)
  image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
  label = np.array([[0, 1], [2, 3]])
  flips = 0
  for _ in range(4000):
    out_image, out_label = mt.random_flip(image, label, rng)
    flipped = out_label[0, 0] == 1
    flips += flipped
    np.testing.assert_array_equal(out_image, image[:, ::-1] if flipped else image)
  assert abs(flips / 4000 - 0.5) < 0.03


def test_crop_keeps_the_first_acceptable_of_ten():
  """Replaying each seed's draws: the crop is the first acceptable of the first 10, else the
  11th; no accepted crop has a class share >= 0.75."""
  label = np.ones((48, 48), np.int32)
  label[18:30, 18:30] = 2
  redrawn = unacceptable = 0
  for seed in range(300):
    box = mt.crop_bbox(label, np.random.default_rng(seed), 16, 0.75)
    replay = np.random.default_rng(seed)
    draws = [(int(replay.integers(0, 33)), int(replay.integers(0, 33))) for _ in range(11)]
    good = [d for d in draws[:10]
            if mt.crop_acceptable(label[d[0]:d[0] + 16, d[1]:d[1] + 16], 0.75)]
    assert box[::2] == (good[0] if good else draws[10])
    crop = label[box[0]:box[1], box[2]:box[3]]
    if good:
      assert np.max(np.bincount(crop.ravel())) / crop.size < 0.75
    redrawn += box[::2] != draws[0]
    unacceptable += not good
  # p(acceptable) per draw is 0.21: about 237 of 300 re-draw, about 28 find none in 10.
  assert redrawn > 200 and 10 < unacceptable < 50


def test_padding_where_the_image_is_smaller_than_the_crop():
  rng = np.random.default_rng(9)
  transform = mt.MMSegTrainTransform(crop_size=32, scale=(16, 8), ratio_range=(0.5, 1.0),
                                     cat_max_ratio=1.0)
  label = rng.integers(0, 5, (10, 12)).astype(np.uint8)
  for _ in range(20):
    out = transform({"image": smooth_image(rng, 10, 12), "label": label}, rng)
    rows = np.nonzero((out["label"] != 255).any(1))[0]
    cols = np.nonzero((out["label"] != 255).any(0))[0]
    h, w = rows.max() + 1, cols.max() + 1
    assert h < 32 and w < 32
    assert np.all(out["label"][h:] == 255) and np.all(out["label"][:, w:] == 255)
    assert np.all(out["image"][h:] == 0) and np.all(out["image"][:, w:] == 0)
    assert np.all(out["label"][:h, :w] < 5)
    assert out["image"].shape == (32, 32, 3) and out["label"].shape == (32, 32)


def test_transform_is_the_composition_of_the_steps():
  """Resizing only the crop window changes neither the draws nor the numbers."""
  rng = np.random.default_rng(10)
  transform = mt.MMSegTrainTransform(crop_size=32, scale=(128, 64))
  for seed in range(4):
    image, label = smooth_image(rng, 40, 56), block_label(rng, 40, 56).astype(np.int32)
    out = transform({"image": image, "label": label}, np.random.default_rng(seed))
    steps = np.random.default_rng(seed)
    x, y = mt.random_resize(image, label, steps, (128, 64), (0.5, 2.0))
    x, y = mt.random_crop(x, y, steps, 32, 0.75)
    x, y = mt.random_flip(x, y, steps, 0.5)
    x, y = mt.pad_to(mt.normalize(mt.photometric_distortion(x, steps)), y, 32)
    np.testing.assert_array_equal(out["image"], x)
    np.testing.assert_array_equal(out["label"], y)


# ---------------------------------------------------- (c) the TFDS builder's feature spec


def test_scene_parse150_mock_examples_through_the_task():
  """``tfds.testing.mock_data`` examples of the registered builder's features go through
  the ADE20K config's train transform (crop 64). The mock draws each image feature's size
  independently, so both are cut to their common size; keys, dtypes and channels are the
  builder's."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from configs.upernet import common  # pylint: disable=import-outside-toplevel
  config = common.ade20k_160k("upernet_swin_tiny_patch4_window7_512")
  config.dataset.image_size = 64
  config.task.mmseg.crop_size = 64
  config_lib.validate_config(config)
  task = tasks.get_task(config)
  transform = task.train_transform()
  assert isinstance(transform, mt.MMSegTrainTransform)
  assert transform.reduce_zero_label and transform.scale == (2048, 512)
  spec = task.batch_spec(1)
  with tfds.testing.mock_data(num_examples=2):
    source = tfds.data_source("scene_parse150", split="train")
    examples = [source[i] for i in range(len(source))]
  assert len(examples) == 2
  for i, example in enumerate(examples):
    assert set(example) == {"image", config.task.label_key}
    image, annotation = example["image"], example["annotation"]
    assert image.dtype == annotation.dtype == np.uint8
    assert image.shape[-1] == annotation.shape[-1] == 3
    h, w = min(image.shape[0], annotation.shape[0]), min(image.shape[1], annotation.shape[1])
    example = {"image": image[:h, :w], "annotation": annotation[:h, :w]}
    out = transform(example, np.random.default_rng(i))
    assert set(out) == set(spec)
    for key in spec:
      assert out[key].shape == spec[key].shape[1:] and out[key].dtype == spec[key].dtype
    allowed = set(np.unique(mt.reduce_zero_label(annotation[:h, :w, 0]))) | {255}
    assert set(np.unique(out["label"])) <= allowed


# ------------------------------------------------------------------ (d) the task's choice


def segmentation_config(**task):
  config = config_lib.base_config("segmentation")
  config.dataset.num_classes = 4
  config.dataset.image_size = 32
  config.task.update(task)
  return config


def test_pipeline_selection_and_errors():
  default = tasks.get_task(segmentation_config())
  assert type(default.train_transform()).__name__ == "SegTransform"
  mmseg = tasks.get_task(segmentation_config(pipeline="mmseg"))
  assert mmseg.train_transform() == mt.MMSegTrainTransform(crop_size=32)
  assert mmseg.eval_transform() == mt.MMSegEvalTransform()          # mmseg's test pipeline
  bad = tasks.get_task(segmentation_config(pipeline="mmsegmentation"))
  with pytest.raises(ValueError, match=r"task.pipeline 'mmsegmentation' is not one of"):
    bad.train_transform()
  with pytest.raises(ValueError, match=r"task.pipeline 'mmsegmentation'"):
    bad.eval_transform()
  config = segmentation_config(pipeline="mmseg")
  config.task.mmseg.crop_size = 48
  with pytest.raises(ValueError, match=r"task.mmseg.crop_size 48 must be dataset.image_size"):
    tasks.get_task(config).train_transform()
  config = segmentation_config(pipeline="mmseg")
  config.task.mmseg.ratio_range = (2.0, 0.5)
  with pytest.raises(ValueError, match=r"task.mmseg: ratio_range \(2.0, 0.5\)"):
    tasks.get_task(config).train_transform()
  config = segmentation_config(pipeline="mmseg")
  config.task.mmseg.cat_max_ratio = 1.5
  with pytest.raises(ValueError, match=r"task.mmseg: cat_max_ratio 1.5"):
    tasks.get_task(config).train_transform()
  with pytest.raises(ValueError, match="uint8"):
    mt.MMSegTrainTransform(crop_size=8)({"image": np.zeros((8, 8, 3), np.float32),
                                         "label": np.zeros((8, 8))}, np.random.default_rng(0))
