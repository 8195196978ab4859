"""The Synapse TFDS builder (TransUNet layout), on tiny fake slices and volumes."""

from __future__ import annotations

import os

import numpy as np
import pytest

import data_fakes
from swin_jax.data import sources
from swin_jax.data import synapse
from swin_jax.train.config import base_config


def open_split(data_dir: str, split: str):
  config = base_config().dataset
  config.name, config.data_dir = "synapse", data_dir
  return sources.open_source(config, split)


def test_builds_both_splits_exactly(tmp_path, capsys):
  manual = tmp_path / "Synapse"
  written = data_fakes.write_fake_synapse(manual, train_slices=3, test_depths=(3, 2), size=32)
  data_dir = str(tmp_path / "tfds")
  synapse.main(["--manual_dir", str(manual), "--data_dir", data_dir])
  out = capsys.readouterr()
  assert "'synapse'" in out.out and "3 train slices, 2 test volumes" in out.err

  train = open_split(data_dir, "train")
  assert len(train) == 3
  for i, (name, image, label) in enumerate(written["train"]):
    example = train[i]
    assert example["case"].decode() == name
    assert example["image"].dtype == np.float32 and example["label"].dtype == np.uint8
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["label"], label)
    assert example["volume_id"] == -1 and example["slice_index"] == -1

  test = open_split(data_dir, "test")
  assert len(test) == 3 + 2
  i = 0
  for volume_id, (name, image, label) in enumerate(written["test"]):
    for k in range(image.shape[0]):
      example = test[i]
      assert example["case"].decode() == name
      assert int(example["volume_id"]) == volume_id and int(example["slice_index"]) == k
      assert example["image"].shape == (32, 32) and example["label"].dtype == np.uint8
      np.testing.assert_array_equal(example["image"], image[k])
      np.testing.assert_array_equal(example["label"], label[k])   # float labels -> uint8
      i += 1


def test_list_files_choose_and_order_the_cases(tmp_path):
  manual = tmp_path / "Synapse"
  written = data_fakes.write_fake_synapse(manual, train_slices=4, test_depths=(2, 1, 3),
                                          lists=True, seed=3)
  lists = manual / "lists" / "lists_Synapse"
  # Keep two slices in reverse order (one named with its suffix), and volumes 3 and 1.
  names = [w[0] for w in written["train"]]
  (lists / "train.txt").write_text(f"{names[3]}\r\n\n{names[0]}.npz  \n")
  (lists / "test_vol.txt").write_text("case0003\ncase0001\n")
  found = synapse.find_files(str(manual))
  assert [n for n, _ in found.train] == [names[3], names[0]]
  assert [n for n, _ in found.test] == ["case0003", "case0001"]

  data_dir = str(tmp_path / "tfds")
  synapse.build(str(manual), data_dir)
  train = open_split(data_dir, "train")
  assert [train[i]["case"].decode() for i in range(len(train))] == [names[3], names[0]]
  np.testing.assert_array_equal(train[0]["image"], written["train"][3][1])
  test = open_split(data_dir, "test")
  got = [(test[i]["case"].decode(), int(test[i]["volume_id"]), int(test[i]["slice_index"]))
         for i in range(len(test))]
  assert got == [("case0003", 0, 0), ("case0003", 0, 1), ("case0003", 0, 2),
                 ("case0001", 1, 0), ("case0001", 1, 1)]
  np.testing.assert_array_equal(test[4]["label"], written["test"][0][2][1])


def test_missing_and_malformed_inputs_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
    synapse.build(str(tmp_path / "nowhere"), str(tmp_path / "tfds"))
  manual = tmp_path / "Synapse"
  (manual / "train_npz").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="test_vol_h5 is missing"):
    synapse.find_files(str(manual))
  (manual / "test_vol_h5").mkdir()
  with pytest.raises(FileNotFoundError, match=r"no \*\.npz files in .*train_npz"):
    synapse.find_files(str(manual))

  data_fakes.write_fake_synapse(manual, train_slices=1, test_depths=(1,))
  lists = manual / "lists" / "lists_Synapse"
  lists.mkdir(parents=True)
  (lists / "train.txt").write_text("case0040_slice000\ncase0099_slice007\n")
  with pytest.raises(FileNotFoundError, match="case0099_slice007.npz"):
    synapse.find_files(str(manual))
  os.remove(lists / "train.txt")

  bad = manual / "train_npz" / "case0040_slice000.npz"
  np.savez(bad, image=np.zeros((4, 4), np.float32), label=np.zeros((4, 5), np.uint8))
  with pytest.raises(ValueError, match="malformed file .*case0040_slice000.npz"):
    synapse.read_slice(str(bad))
  np.savez(bad, image=np.zeros((4, 4), np.float32), label=np.full((4, 4), 1.5))
  with pytest.raises(ValueError, match="integer class ids"):
    synapse.read_slice(str(bad))
  bad.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="cannot read .*case0040_slice000.npz"):
    synapse.read_slice(str(bad))
  with pytest.raises(ValueError, match="case0040_slice000.npz"):
    synapse.build(str(manual), str(tmp_path / "tfds"))
  # The official loader's fallback keys.
  np.savez(bad, data=np.ones((4, 4), np.float32), seg=np.ones((4, 4), np.float32))
  image, label = synapse.read_slice(str(bad))
  assert image.dtype == np.float32 and label.dtype == np.uint8 and label.sum() == 16
  bad_volume = manual / "test_vol_h5" / "case0001.npy.h5"
  import h5py
  with h5py.File(bad_volume, "w") as f:
    f.create_dataset("image", data=np.zeros((2, 4, 4), np.float32))
  with pytest.raises(ValueError, match=r"malformed file .*case0001.npy.h5: datasets \['image'\]"):
    synapse.read_volume(str(bad_volume))
  bad_volume.write_bytes(b"not hdf5")
  with pytest.raises(ValueError, match="cannot read .*case0001.npy.h5"):
    synapse.read_volume(str(bad_volume))


def test_build_fake_synapse_helper(tmp_path):
  written = data_fakes.build_fake_synapse(str(tmp_path), train_slices=2, test_depths=(2,),
                                          size=16, seed=1)
  test = open_split(str(tmp_path), "test")
  assert len(test) == 2 and len(open_split(str(tmp_path), "train")) == 2
  np.testing.assert_array_equal(test[1]["image"], written["test"][0][1][1])
  assert written["test"][0][2].max() > 0   # the fake volumes hold organs
