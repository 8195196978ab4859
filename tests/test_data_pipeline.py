"""Sources, the embedded demo dataset, and the per-host train / eval pipelines."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from swin_jax.data import demo_dataset
from swin_jax.data import images as images_lib
from swin_jax.data import pipeline
from swin_jax.data import sources
from swin_jax.train.config import base_config

import data_fakes

NUM_TRAIN, NUM_EVAL, NUM_CLASSES = 24, 11, 4


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("fake_tfds"))
  data_fakes.build_fake_imagenet(data_dir, num_examples=NUM_TRAIN, eval_examples=NUM_EVAL,
                                 num_classes=NUM_CLASSES)
  return data_dir


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("demo_tfds"))
  demo_dataset.ensure_demo_dataset(data_dir)
  return data_dir


def make_config(data_dir, *, batch_size=8, image_size=16, **aug):
  config = base_config()
  config.dataset.name = "imagenet2012"
  config.dataset.data_dir = data_dir
  config.dataset.num_classes = NUM_CLASSES
  config.dataset.image_size = image_size
  config.batch_size = batch_size
  config.seed = 3
  config.task.aug.randaugment = "rand-m9-mstd0.5-inc1"
  config.task.aug.reprob = 0.25
  config.task.aug.update(aug)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def image_keys(batch):
  return {np.round(image, 4).tobytes() for image in batch["image"]}


# --- sources ---------------------------------------------------------------------------

def test_missing_dataset_fails_fast_naming_name_dir_and_readme(tmp_path):
  config = make_config(str(tmp_path / "nothing_here"))
  start = time.perf_counter()
  with pytest.raises(sources.DatasetNotFoundError) as info:
    sources.open_source(config.dataset, "train")
  assert time.perf_counter() - start < 5
  message = str(info.value)
  assert "imagenet2012" in message and str(tmp_path / "nothing_here") in message
  assert "Preparing ImageNet" in message
  assert isinstance(info.value, FileNotFoundError)
  assert not (tmp_path / "nothing_here").exists()  # nothing downloaded or prepared


def test_missing_unregistered_dataset_and_other_version(tmp_path, fake_dir):
  config = make_config(str(tmp_path))
  config.dataset.name = "imagenet22k"
  with pytest.raises(sources.DatasetNotFoundError, match="imagenet22k not found"):
    sources.open_source(config.dataset, "train")
  config = make_config(fake_dir)
  config.dataset.name = "imagenet2012:5.0.0"
  with pytest.raises(sources.DatasetNotFoundError, match="found other versions"):
    sources.open_source(config.dataset, "train")


def test_tfrecord_build_asks_for_array_record(tmp_path):
  features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(4, 4, 1)),
                                         "label": tfds.features.ClassLabel(num_classes=2)})
  examples = [(i, {"image": np.zeros((4, 4, 1), np.uint8), "label": 0}) for i in range(2)]
  tfds.dataset_builders.store_as_tfds_dataset(
      "tfrecord_only", "1.0.0", features, {"train": examples}, data_dir=str(tmp_path),
      file_format="tfrecord")
  config = make_config(str(tmp_path))
  config.dataset.name = "tfrecord_only"
  with pytest.raises(sources.DatasetFormatError, match="--file_format=array_record"):
    sources.open_source(config.dataset, "train")


def test_open_source_reads_examples_and_rejects_unknown_split(fake_dir):
  config = make_config(fake_dir)
  source = sources.open_source(config.dataset, "validation")
  assert len(source) == NUM_EVAL
  example = source[0]
  assert example["image"].dtype == np.uint8 and example["image"].ndim == 3
  assert 0 <= int(example["label"]) < NUM_CLASSES
  with pytest.raises(ValueError, match=r"no split 'test'.*train, validation"):
    sources.open_source(config.dataset, "test")


# --- the demo dataset ------------------------------------------------------------------

def test_demo_dataset_splits_classes_and_no_shared_image(demo_dir):
  config = make_config(demo_dir)
  config.dataset.name = demo_dataset.DEMO_DATASET
  train = sources.open_source(config.dataset, "train")
  test = sources.open_source(config.dataset, "test")
  assert (len(train), len(test)) == (4000, 1000)
  train_items = [train[i] for i in range(len(train))]
  test_items = [test[i] for i in range(len(test))]
  assert train_items[0]["image"].shape == (28, 28, 1)
  assert train_items[0]["image"].dtype == np.uint8
  for items, per_class in ((train_items, 400), (test_items, 100)):
    counts = np.bincount([int(e["label"]) for e in items], minlength=10)
    assert counts.tolist() == [per_class] * 10
  train_images = {e["image"].tobytes() for e in train_items}
  assert not train_images & {e["image"].tobytes() for e in test_items}
  assert pipeline.train_examples(config) == 4000


def test_demo_dataset_uses_tfds_default_dir(demo_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", demo_dir)
  config = make_config("")
  config.dataset.name = demo_dataset.DEMO_DATASET
  start = time.perf_counter()
  assert len(sources.open_source(config.dataset, "test")) == 1000
  assert time.perf_counter() - start < 5  # found, not rebuilt


def test_demo_build_losing_a_race_keeps_the_winner(demo_dir, tmp_path, monkeypatch):
  # Another process finishes first: our rename then fails and we keep its build.
  data_dir = tmp_path / "race"
  shutil.copytree(demo_dir, data_dir)
  winner_info = data_dir / demo_dataset.DEMO_DATASET / demo_dataset.VERSION / "dataset_info.json"
  mtime = os.path.getmtime(winner_info)
  real, calls = demo_dataset.is_prepared, []

  def not_yet_at_first_look(path):
    calls.append(path)
    return len(calls) > 1 and real(path)

  monkeypatch.setattr(demo_dataset, "is_prepared", not_yet_at_first_look)
  demo_dataset.ensure_demo_dataset(str(data_dir))
  assert len(calls) == 2  # it did build, and then found the winner's copy
  assert os.path.getmtime(winner_info) == mtime
  assert sorted(os.listdir(data_dir)) == [demo_dataset.DEMO_DATASET]  # staging removed


# --- train pipeline ----------------------------------------------------------------------

def test_train_batches_have_the_promised_shapes(fake_dir):
  it = pipeline.train_iterator(make_config(fake_dir, batch_size=8, image_size=16))
  batch = next(it)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert np.isfinite(batch["image"]).all()
  assert pipeline.train_examples(make_config(fake_dir)) == NUM_TRAIN


def test_grayscale_demo_images_become_rgb(demo_dir):
  config = make_config(demo_dir, batch_size=4, image_size=20)
  config.dataset.name = demo_dataset.DEMO_DATASET
  batch = next(pipeline.train_iterator(config))
  assert batch["image"].shape == (4, 20, 20, 3)


def test_train_is_deterministic_given_the_seed(fake_dir):
  config = make_config(fake_dir)
  first = take(pipeline.train_iterator(config), 3)
  assert_batches_equal(first, take(pipeline.train_iterator(config), 3))
  config.seed = 4
  other = take(pipeline.train_iterator(config), 1)
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_state_round_trip_resumes_bit_exactly(fake_dir):
  config = make_config(fake_dir)
  it = pipeline.train_iterator(config)
  take(it, 4)  # past the first epoch (24 examples = 3 batches)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 3)
  resumed = pipeline.train_iterator(config)
  fresh = take(pipeline.train_iterator(config), 1)[0]
  assert not np.array_equal(fresh["image"], expected[0]["image"])  # the state matters
  resumed.set_state(state)
  assert_batches_equal(expected, take(resumed, 3))


def test_infinite_and_reshuffled_each_epoch(fake_dir):
  # No randomness in the transform: each epoch holds the same images in a new order.
  config = make_config(fake_dir, random_resized_crop=False, hflip=0.0, randaugment="",
                       reprob=0.0)
  batches = take(pipeline.train_iterator(config), 9)  # 3 epochs of 3 batches
  epochs = [np.concatenate([b["image"] for b in batches[i:i + 3]]) for i in (0, 3, 6)]
  keys = [[np.round(x, 4).tobytes() for x in e] for e in epochs]
  assert len(set(keys[0])) == NUM_TRAIN
  assert set(keys[0]) == set(keys[1]) == set(keys[2])
  assert keys[0] != keys[1] and keys[1] != keys[2]


def test_hosts_read_disjoint_shares_that_cover_the_data(fake_dir):
  config = make_config(fake_dir, batch_size=8, random_resized_crop=False, hflip=0.0,
                       randaugment="", reprob=0.0)
  epoch = {}
  for host in range(2):
    it = pipeline.train_iterator(config, process_index=host, process_count=2)
    batches = take(it, 3)  # 12 examples per host at 4 per host-batch: one epoch
    assert batches[0]["image"].shape[0] == 4
    epoch[host] = set().union(*(image_keys(b) for b in batches))
  assert len(epoch[0]) == len(epoch[1]) == NUM_TRAIN // 2
  assert not epoch[0] & epoch[1]
  every = pipeline.train_iterator(config)
  assert epoch[0] | epoch[1] == set().union(*(image_keys(b) for b in take(every, 3)))


def test_global_batches_do_not_depend_on_the_number_of_hosts(fake_dir):
  """Host slices, concatenated, are the one-host batches bit for bit (augmentation on)."""
  config = make_config(fake_dir, batch_size=8)
  single = take(pipeline.train_iterator(config), 5)  # crosses an epoch boundary (24 examples)
  hosts = [take(pipeline.train_iterator(config, i, 4), 5) for i in range(4)]
  joined = [{key: np.concatenate([h[step][key] for h in hosts]) for key in single[step]}
            for step in range(5)]
  assert_batches_equal(single, joined)


def test_batch_size_must_divide_over_hosts(fake_dir):
  with pytest.raises(ValueError, match="batch_size 8 must be a positive multiple.*3"):
    pipeline.train_iterator(make_config(fake_dir, batch_size=8), 0, 3)


# --- eval pipeline ------------------------------------------------------------------------

def test_eval_is_the_official_transform_with_padding_and_mask(fake_dir):
  config = make_config(fake_dir, image_size=16)
  config.eval_batch_size = 4
  batches = list(pipeline.eval_iterator(config))
  assert len(batches) == 3  # 11 examples -> 4 + 4 + 3 real, 1 padding
  for batch in batches:
    assert set(batch) == {"image", "label", "mask"}
    assert batch["mask"].dtype == np.float32 and batch["mask"].shape == (4,)
  assert batches[-1]["mask"].tolist() == [1, 1, 1, 0]
  assert not batches[-1]["image"][3].any() and batches[-1]["label"][3] == 0
  source = sources.open_source(config.dataset, "validation")
  for i in (0, 5, 10):
    expected = images_lib.eval_transform(Image.fromarray(source[i]["image"]), 16, True)
    np.testing.assert_array_equal(batches[i // 4]["image"][i % 4], expected)
    assert batches[i // 4]["label"][i % 4] == source[i]["label"]
  assert list(pipeline.eval_iterator(config))[0]["label"].tolist() == \
      batches[0]["label"].tolist()  # re-iterable, same order


def test_eval_hosts_get_equal_batch_counts_and_cover_everything_once(fake_dir):
  config = make_config(fake_dir, image_size=16, batch_size=4)
  config.dataset.eval_crop = False
  seen = []
  counts = []
  for host in range(2):
    batches = list(pipeline.eval_iterator(config, process_index=host, process_count=2))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (2, 16, 16, 3)
      seen += [img.tobytes() for img, m in zip(batch["image"], batch["mask"]) if m]
  assert counts == [3, 3]  # shares of 6 and 5, padded to 3 batches of 2 on both hosts
  assert len(seen) == NUM_EVAL == len(set(seen))
