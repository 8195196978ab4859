"""The ImageNet-22K TFDS builder, on a tiny fake class-folder tree."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from swin_jax.data import imagenet22k
from swin_jax.data import sources
from swin_jax.train.config import base_config

SYNSETS = imagenet22k.synsets()
FIRST, LATER = SYNSETS[0], SYNSETS[5]  # two real classes; the other 21,839 have no folder


def save(path, kind: str, seed: int) -> np.ndarray:
  """Writes a small image file; returns the pixels it decodes to (RGB)."""
  base = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
  rgb = np.asarray(Image.fromarray(base).resize((20, 15), Image.BILINEAR))
  image = {"jpeg": Image.fromarray(rgb), "png": Image.fromarray(rgb),
           "grey_jpeg": Image.fromarray(rgb).convert("L"),
           "cmyk_jpeg": Image.fromarray(rgb).convert("CMYK")}[kind]
  image.save(path, format="PNG" if kind == "png" else "JPEG", quality=95)
  with Image.open(path) as stored:
    return np.asarray(stored.convert("RGB"))


@pytest.fixture()
def tree(tmp_path):
  """FIRST: 3 files (one PNG, one grey JPEG); LATER: 2 files (one CMYK JPEG)."""
  manual = tmp_path / "fall11"
  pixels = {}
  for wnid, files in ((FIRST, [("a.JPEG", "jpeg"), ("b.JPEG", "png"), ("c.JPEG", "grey_jpeg")]),
                      (LATER, [("x.JPEG", "cmyk_jpeg"), ("y.JPEG", "jpeg")])):
    (manual / wnid).mkdir(parents=True)
    for i, (name, kind) in enumerate(files):
      pixels[f"{wnid}/{name}"] = save(manual / wnid / name, kind, seed=len(pixels) + i)
  return manual, pixels


def test_builds_splits_labels_and_images(tree, tmp_path, capsys):
  manual, pixels = tree
  data_dir = str(tmp_path / "tfds")
  imagenet22k.main(["--manual_dir", str(manual), "--data_dir", data_dir,
                    "--holdout_per_class", "1"])
  assert "'imagenet22k/holdout1'" in capsys.readouterr().out
  validation = tfds.data_source("imagenet22k/holdout1", split="validation", data_dir=data_dir,
                                download=False)
  train = tfds.data_source("imagenet22k/holdout1", split="train", data_dir=data_dir,
                           download=False)
  # The first file (by name) of each class is held out, the rest is train.
  held_out = sorted(validation[i]["file_name"].decode() for i in range(len(validation)))
  assert held_out == [f"{FIRST}/a.JPEG", f"{LATER}/x.JPEG"]
  assert len(train) == 3
  for source in (train, validation):
    for i in range(len(source)):
      example = source[i]
      name = example["file_name"].decode()
      assert example["label"] == SYNSETS.index(name.split("/")[0])
      assert example["image"].shape == pixels[name].shape  # (15, 20, 3), also grey/CMYK/PNG
      if name == f"{FIRST}/a.JPEG":  # RGB JPEGs are stored as they are
        np.testing.assert_array_equal(example["image"], pixels[name])
      else:  # the others are re-encoded as RGB JPEG (quality 95)
        assert np.abs(example["image"].astype(int) - pixels[name]).mean() < 4
  builder = tfds.builder("imagenet22k/holdout1", data_dir=data_dir)
  assert builder.info.features["label"].num_classes == 21841
  # And the training system reads it by name.
  config = base_config().dataset
  config.name, config.data_dir = "imagenet22k/holdout1", data_dir
  assert len(sources.open_source(config, "train")) == 3


def test_default_config_holds_out_ten_per_class():
  builder = imagenet22k.Imagenet22k(data_dir="/nonexistent")
  assert builder.builder_config.name == "holdout10"
  assert builder.builder_config.holdout_per_class == 10


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_reported_with_its_path(tree, tmp_path, damage):
  manual, _ = tree
  bad = manual / LATER / "y.JPEG"
  data = bad.read_bytes()
  bad.write_bytes(b"not an image at all" if damage == "garbage" else data[:len(data) // 2])
  with pytest.raises(ValueError, match=f"corrupt image .*{LATER}/y.JPEG"):
    imagenet22k.build(str(manual), str(tmp_path / "tfds"), holdout_per_class=1)


def test_unknown_class_folder_is_an_error_naming_it(tree, tmp_path):
  manual, _ = tree
  os.mkdir(manual / "cats")
  with pytest.raises(ValueError, match="not ImageNet-22K .*synsets: cats"):
    imagenet22k.build(str(manual), str(tmp_path / "tfds"), holdout_per_class=1)


def test_checked_image_bytes_keeps_rgb_jpeg_bytes(tmp_path):
  path = tmp_path / "a.JPEG"
  save(path, "jpeg", 0)
  assert imagenet22k.checked_image_bytes(str(path)) == path.read_bytes()
  png = tmp_path / "b.JPEG"
  save(png, "png", 1)
  with Image.open(io.BytesIO(imagenet22k.checked_image_bytes(str(png)))) as image:
    assert (image.format, image.mode) == ("JPEG", "RGB")
