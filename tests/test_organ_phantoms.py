"""Organ phantoms: determinism, labels re-derived from the ellipsoid parameters, class
presence and sizes, the intensity design, names, and the TFDS build read back."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from swin_jax.data import organ_phantoms as op
from swin_jax.data import sources

SIZE = op.DEFAULT_SIZE
BUILD = {"size": (16, 32, 32), "num_train": 3, "num_test": 2, "seed": 5}


@pytest.fixture(scope="module")
def phantoms():
  """``(image, label, params)`` of 6 train and 4 test volumes at the default size."""
  return [op.make_phantom(op.phantom_rng(1, split, i), SIZE)
          for split, count in (("train", 6), ("test", 4)) for i in range(count)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("organ_phantoms_tfds"))
  return data_dir, op.ensure_organ_phantoms(data_dir, **BUILD)


def inside(size, ellipsoid):
  """Bool ``size``: the ellipsoid inequality on the full voxel grid, as a quadratic form."""
  spacing = np.asarray(op.SPACING)
  index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1)
  offset = (index - (np.asarray(size) - 1) / 2) * spacing - ellipsoid["centre"]
  rotation, axes = ellipsoid["rotation"], ellipsoid["semi_axes"]
  form = rotation @ np.diag(axes ** -2.0) @ rotation.T
  return np.einsum("...i,ij,...j->...", offset, form, offset) <= 1


def dice(prediction, label, k):
  return 2 * ((prediction == k) & (label == k)).sum() / ((prediction == k).sum() +
                                                         (label == k).sum())


def to_noise_sigmas(image, params):
  """The volume before the z-score, gain and offset: in units of the noise sigma."""
  mean, std = params["normalisation"]
  return (image.astype(np.float64) * std + mean - params["offset"]) / params["gain"]


# --- one phantom -------------------------------------------------------------------------

def test_volumes_are_deterministic_by_seed_split_and_index():
  a = op.make_example("train", 3, size=SIZE, seed=7)
  b = op.make_example("train", 3, size=SIZE, seed=7)
  for key in ("image", "label", "spacing"):
    np.testing.assert_array_equal(a[key], b[key])
  assert a["case_id"] == b["case_id"] == "train_0003"
  for other in (op.make_example("train", 3, size=SIZE, seed=8),
                op.make_example("test", 3, size=SIZE, seed=7),
                op.make_example("train", 4, size=SIZE, seed=7)):
    assert not np.array_equal(a["label"], other["label"])
    assert not np.allclose(a["image"], other["image"])


def test_examples_have_the_documented_types():
  example = op.make_example("test", 0)
  assert example["image"].shape == (*SIZE, 1) and example["image"].dtype == np.float32
  assert example["label"].shape == SIZE and example["label"].dtype == np.uint8
  assert example["spacing"].dtype == np.float32
  assert example["spacing"].tolist() == list(op.SPACING)
  assert op.SPACING[0] > op.SPACING[1] == op.SPACING[2]   # anisotropic, like CT/MR stacks


def test_labels_are_exactly_the_ellipsoid_construction(phantoms):
  scale = op.field_scale(SIZE)
  overlapping = 0
  for _, label, params in phantoms:
    body = inside(SIZE, params["body"])
    expected = np.zeros(SIZE, np.uint8)
    for organ in params["organs"]:   # in painting order: later classes overwrite
      mask = inside(SIZE, organ) & body
      overlapping += int((mask & (expected > 0)).sum())
      expected[mask] = organ["label"]
    np.testing.assert_array_equal(label, expected)
    # The recorded parameters are the documented ones.
    labels = [organ["label"] for organ in params["organs"]]
    assert labels == sorted(labels)
    assert [labels.count(c.label) for c in op.ORGANS] == [c.blobs for c in op.ORGANS]
    for organ in params["organs"]:
      rotation = organ["rotation"]
      np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
      assert np.linalg.det(rotation) == pytest.approx(1.0)
      ranges = np.asarray(op.ORGANS[organ["label"] - 1].semi_axes_mm) * scale
      assert np.all((organ["semi_axes"] >= ranges[:, 0]) & (organ["semi_axes"] <= ranges[:, 1]))
      assert body[tuple(np.round(  # the centre is a point of the body
          organ["centre"] / op.SPACING + (np.asarray(SIZE) - 1) / 2).astype(int))]
  assert overlapping > 0   # the overwrite order matters in these volumes, not just in principle


def test_every_class_is_present_with_a_plausible_volume_fraction(phantoms):
  scale = op.field_scale(SIZE)
  voxel_mm3 = float(np.prod(op.SPACING))
  for _, label, params in phantoms:
    counts = np.bincount(label.ravel(), minlength=op.NUM_ORGANS + 1)
    assert len(counts) == op.NUM_ORGANS + 1
    for organ in op.ORGANS:
      low, high = np.asarray(organ.semi_axes_mm).T * scale
      smallest = organ.blobs * 4 / 3 * np.pi * np.prod(low) / voxel_mm3
      largest = organ.blobs * 4 / 3 * np.pi * np.prod(high) / voxel_mm3
      # At least what placement guarantees; at most the blobs whole (plus voxelisation).
      assert op.MIN_VISIBLE * op.MIN_KEPT * smallest <= counts[organ.label] <= 1.1 * largest
    body_fraction = inside(SIZE, params["body"]).mean()
    assert 0.3 < body_fraction < 0.8
    assert 0.03 < (label > 0).mean() < 0.3
  # The liver is the largest class, on average.
  mean_counts = np.mean([np.bincount(l.ravel(), minlength=5) for _, l, _ in phantoms], 0)
  assert mean_counts[1] == mean_counts[1:].max()


def test_intensities_follow_the_design(phantoms):
  # The design: adjacent region means 1.5-2 noise sigmas apart, the air far below.
  ladder = sorted([op.TISSUE_MEAN, *op.CLASS_MEANS])
  assert all(1.5 <= b - a <= 2.0 for a, b in zip(ladder, ladder[1:]))
  order = np.argsort([op.TISSUE_MEAN, *op.CLASS_MEANS])   # regions by design mean (0: tissue)
  assert list(order) == [3, 0, 2, 1, 4]   # spleen < tissue < kidney < liver < vessel
  pooled = {k: [] for k in range(op.NUM_ORGANS + 1)}
  for image, label, params in phantoms:
    # nnU-Net's MR normalisation: a z-score over the whole volume.
    assert abs(float(image.mean())) < 1e-4 and float(image.std()) == pytest.approx(1, abs=1e-4)
    raw = to_noise_sigmas(image, params)
    body = inside(SIZE, params["body"])
    for k in range(1, op.NUM_ORGANS + 1):
      voxels = raw[label == k]
      assert voxels.mean() == pytest.approx(params["means"]["classes"][k - 1],
                                            abs=4 * op.TEXTURE_SIGMA)
      # White noise of sigma 1 plus a little smooth texture.
      assert op.NOISE_SIGMA * 0.9 < voxels.std() < op.NOISE_SIGMA * 1.25
      pooled[k].append(voxels)
    pooled[0].append(raw[body & (label == 0)])
    assert raw[~body].mean() < min(params["means"]["classes"]) - 2
  means = np.array([np.concatenate(pooled[k]).mean() for k in range(op.NUM_ORGANS + 1)])
  steps = np.diff(means[order])
  assert np.all(steps > 1.0) and np.all(steps < 2.5), means


def test_intensity_alone_does_not_segment_the_organs(phantoms):
  # Even knowing each volume's exact region means, labelling a voxel by the nearest mean
  # misses much: the classes overlap voxel by voxel, so context and shape must decide.
  scores = []
  for image, label, params in phantoms:
    raw = to_noise_sigmas(image, params)
    means = params["means"]
    levels = np.array([means["background"], means["tissue"], *means["classes"]])
    prediction = np.array([0, 0, 1, 2, 3, 4])[np.abs(raw[..., None] - levels).argmin(-1)]
    scores.append(np.mean([dice(prediction, label, k) for k in range(1, op.NUM_ORGANS + 1)]))
  assert np.mean(scores) < 0.7


def test_other_sizes_scale_the_anatomy():
  for size in (op.MIN_SIZE, (24, 48, 40)):
    image, label, params = op.make_phantom(np.random.default_rng(0), size)
    assert image.shape == label.shape == tuple(size)
    assert set(np.unique(label)) == set(range(op.NUM_ORGANS + 1))
    np.testing.assert_array_equal(label > 0, np.logical_or.reduce(
        [inside(size, o) for o in params["organs"]]) & inside(size, params["body"]))


# --- names and errors --------------------------------------------------------------------

def test_names_encode_and_decode_the_layout():
  assert op.dataset_name() == "organ_phantoms/32x64x64"
  assert op.parse_dataset_name("organ_phantoms/32x64x64") == {"size": (32, 64, 64)}
  assert op.parse_dataset_name("organ_phantoms/32x64x64:1.0.0") == {"size": (32, 64, 64)}
  for layout in ({"size": (16, 32, 32), "num_train": 3, "num_test": 2, "seed": 5},
                 {"size": (48, 96, 80), "num_train": 24, "num_test": 6, "seed": 1},
                 {"size": (32, 64, 64), "num_train": 100, "num_test": 6, "seed": 0}):
    name = op.dataset_name(**layout)
    assert op.parse_dataset_name(name) == layout
  assert op.dataset_name((16, 32, 32), 3, 2, 5) == "organ_phantoms/16x32x32_train3_test2_seed5"
  assert op.is_organ_phantoms("organ_phantoms/32x64x64:1.0.0")
  assert op.is_organ_phantoms("organ_phantoms")
  assert not op.is_organ_phantoms("digit_scenes/128px")
  assert not op.is_organ_phantoms("organ_phantoms_v2/32x64x64")


@pytest.mark.parametrize("name", [
    "organ_phantoms/32x64", "organ_phantoms/32x64x64x2", "organ_phantoms/32px",
    "organ_phantoms/8x64x64", "organ_phantoms/32x64x64_train0_test6_seed0",
    "organ_phantoms/32x64x64_train5", "digit_scenes/128px", "organ_phantoms"])
def test_bad_names_raise_a_clear_value_error(name):
  with pytest.raises(ValueError, match="organ phantom"):
    op.parse_dataset_name(name)


@pytest.mark.parametrize("size", [(32, 64), (32, 64, 64, 1), (8, 64, 64), (32, 16, 64),
                                  (32, 64, 64.5), "32x64x64", None])
def test_bad_sizes_raise_a_clear_value_error(size, tmp_path):
  with pytest.raises(ValueError, match=r"size must be 3 ints \(D, H, W\), each at least"):
    op.make_phantom(np.random.default_rng(0), size)
  with pytest.raises(ValueError, match="size must be 3 ints"):
    op.ensure_organ_phantoms(str(tmp_path), size=size)
  assert os.listdir(tmp_path) == []   # nothing written


def test_bad_counts_and_splits_raise():
  with pytest.raises(ValueError, match="num_test must be a positive int"):
    op.dataset_name(num_test=0)
  with pytest.raises(ValueError, match="seed must be an int"):
    op.dataset_name(seed=-1)
  with pytest.raises(ValueError, match="split must be one of"):
    op.phantom_rng(0, "validation", 0)


# --- the TFDS build ----------------------------------------------------------------------

def test_tfds_build_round_trips_the_generated_volumes(built):
  data_dir, name = built
  assert name == op.dataset_name(**BUILD)
  builder = tfds.builder(name, data_dir=data_dir)
  assert builder.info.file_format.value == "array_record"
  features = builder.info.features
  assert features["image"].shape == (None, None, None, 1)
  assert features["image"].dtype == np.float32
  assert features["label"].shape == (None, None, None) and features["label"].dtype == np.uint8
  assert features["spacing"].shape == (3,) and features["spacing"].dtype == np.float32
  assert isinstance(features["case_id"], tfds.features.Text)
  for split, count in (("train", BUILD["num_train"]), ("test", BUILD["num_test"])):
    source = builder.as_data_source(split=split)
    assert len(source) == count
    for index in range(count):
      example, expected = source[index], op.make_example(
          split, index, size=BUILD["size"], seed=BUILD["seed"])
      assert example["case_id"] in (expected["case_id"], expected["case_id"].encode())
      for key in ("image", "label", "spacing"):
        assert example[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(example[key], expected[key])


def test_a_second_ensure_reuses_the_build(built):
  data_dir, name = built
  info = os.path.join(data_dir, name, op.VERSION, "dataset_info.json")
  stamp = os.stat(info).st_mtime_ns
  assert op.ensure_organ_phantoms(data_dir, **BUILD) == name
  op.ensure_for_name(name + ":" + op.VERSION, data_dir)
  assert os.stat(info).st_mtime_ns == stamp
  assert not [f for f in os.listdir(data_dir) if f.startswith(".")]   # no staging left


def test_sources_build_phantoms_on_first_use(tmp_path):
  name = op.dataset_name((16, 32, 32), num_train=1, num_test=1, seed=2)
  config = ml_collections.ConfigDict({"name": name, "data_dir": str(tmp_path)})
  assert sources.num_examples(config, "test") == 1
  example = sources.open_source(config, "test")[0]
  np.testing.assert_array_equal(
      example["label"], op.make_example("test", 0, size=(16, 32, 32), seed=2)["label"])
