"""Synapse multi-organ CT (BTCV, as preprocessed by TransUNet) as a TFDS dataset.

The data is not redistributable, so this builder reads the folder the user obtained
(TransUNet's layout, also used by Swin-Unet) as a TFDS manual dir:

    <manual_dir>/train_npz/<case>_slice<k>.npz    2-D slices: image float32 (H, W) in [0, 1],
                                                   label (H, W) class ids 0..8
    <manual_dir>/test_vol_h5/<case>.npy.h5        3-D volumes: datasets image (D, H, W),
                                                   label (D, H, W)
    <manual_dir>/lists/lists_Synapse/train.txt    optional: the slice names to use (one a line)
    <manual_dir>/lists/lists_Synapse/test_vol.txt optional: the volume names to use

Without the list files every ``train_npz/*.npz`` / ``test_vol_h5/*.npy.h5`` is used, sorted
by name. (A ``.npz`` holding ``data``/``seg`` instead of ``image``/``label`` is read too, as
the official loader does.)

Splits (examples in list order; ``disable_shuffling`` so the test slices come in volume and
slice order):

    train  one example per 2-D slice:   image float32 (H, W), label uint8 (H, W), case str
           (the slice name), volume_id = slice_index = -1
    test   one example per slice of every test volume: image float32 (H, W),
           label uint8 (H, W), volume_id int32 (index in the volume list), slice_index int32,
           case str (the volume name)

Streaming the test volumes slice by slice lets the ordinary batched eval pipeline run
them; ``swin_jax.tasks.medical_metrics.VolumeEvaluator`` stacks the slices back into
volumes by ``volume_id`` / ``slice_index``.

Build (ArrayRecord, which grain needs for random access):

    python -m swin_jax.data.synapse --manual_dir /data/Synapse --data_dir ~/tfds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

NAME = "synapse"
TRAIN_DIR, TEST_DIR = "train_npz", "test_vol_h5"
LIST_DIR = os.path.join("lists", "lists_Synapse")
TRAIN_LIST, TEST_LIST = "train.txt", "test_vol.txt"
TRAIN_SUFFIX, TEST_SUFFIX = ".npz", ".npy.h5"
NUM_CLASSES = 9   # background + aorta, gallbladder, kidney L/R, liver, pancreas, spleen, stomach


@dataclasses.dataclass(frozen=True)
class SynapseFiles:
  """The files of one manual dir: ``(name, path)`` per train slice / test volume, in order."""
  train: tuple[tuple[str, str], ...]
  test: tuple[tuple[str, str], ...]


def _read_list(path: str) -> list[str]:
  with open(path) as f:
    # The official lists may end lines with spaces or '\r'; names never contain either.
    return [line.strip() for line in f if line.strip()]


def _files(manual_dir: str, folder: str, suffix: str, list_name: str) -> list[tuple[str, str]]:
  """``(name, path)`` of the ``suffix`` files in ``folder``: as listed, else all sorted."""
  directory = os.path.join(manual_dir, folder)
  list_path = os.path.join(manual_dir, LIST_DIR, list_name)
  if os.path.isfile(list_path):
    # A listed name may carry the suffix already (the official loader accepts both).
    names = [n[:-len(suffix)] if n.endswith(suffix) else n for n in _read_list(list_path)]
    files = [(n, os.path.join(directory, n + suffix)) for n in names]
    missing = [p for _, p in files if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f"Synapse: {len(missing)} file(s) named in {list_path} do not "
                              f"exist, e.g. {missing[0]}")
    if not files:
      raise ValueError(f"Synapse: {list_path} names no files")
    return files
  names = sorted(e.name[:-len(suffix)] for e in os.scandir(directory)
                 if e.is_file() and e.name.endswith(suffix) and not e.name.startswith("."))
  if not names:
    raise FileNotFoundError(f"Synapse: no *{suffix} files in {directory}")
  return [(n, os.path.join(directory, n + suffix)) for n in names]


def find_files(manual_dir: str) -> SynapseFiles:
  """The train slices and test volumes of ``manual_dir``; raises naming what is missing."""
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"Synapse: manual dir {manual_dir} does not exist; it must hold "
                            f"{TRAIN_DIR}/ and {TEST_DIR}/ (TransUNet's Synapse layout)")
  for folder in (TRAIN_DIR, TEST_DIR):   # both folders before either's files
    if not os.path.isdir(os.path.join(manual_dir, folder)):
      raise FileNotFoundError(f"Synapse: {os.path.join(manual_dir, folder)} is missing; "
                              f"expected the TransUNet layout {TRAIN_DIR}/*{TRAIN_SUFFIX} and "
                              f"{TEST_DIR}/*{TEST_SUFFIX} under {manual_dir}")
  return SynapseFiles(
      train=tuple(_files(manual_dir, TRAIN_DIR, TRAIN_SUFFIX, TRAIN_LIST)),
      test=tuple(_files(manual_dir, TEST_DIR, TEST_SUFFIX, TEST_LIST)))


def _label_uint8(label: np.ndarray, path: str) -> np.ndarray:
  """Class ids (stored as float or int) as uint8; raises if they are not small integers."""
  label = np.asarray(label)
  if label.size and (not np.all(np.isfinite(label)) or np.any(label != np.round(label))
                     or label.min() < 0 or label.max() > 255):
    raise ValueError(f"Synapse: malformed file {path}: 'label' must hold integer class ids "
                     f"in 0..255 (values {label.min()}..{label.max()})")
  return label.astype(np.uint8)


def _checked(image: np.ndarray, label: np.ndarray, ndim: int,
             path: str) -> tuple[np.ndarray, np.ndarray]:
  image, label = np.asarray(image), np.asarray(label)
  if image.ndim != ndim or image.shape != label.shape:
    raise ValueError(f"Synapse: malformed file {path}: expected 'image' and 'label' of one "
                     f"{ndim}-D shape, got {image.shape} and {label.shape}")
  if not np.issubdtype(image.dtype, np.number):
    raise ValueError(f"Synapse: malformed file {path}: 'image' has dtype {image.dtype}")
  return image.astype(np.float32), _label_uint8(label, path)


def read_slice(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A train ``.npz``: ``(image float32 (H, W), label uint8 (H, W))``."""
  try:
    with np.load(path) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # numpy/zip errors of a truncated or foreign file
    raise ValueError(f"Synapse: cannot read {path}: {e}") from e
  keys = ("image", "label") if "image" in arrays else ("data", "seg")
  if not all(k in arrays for k in keys):
    raise ValueError(f"Synapse: malformed file {path}: keys {sorted(arrays)}, expected "
                     f"'image' and 'label'")
  return _checked(arrays[keys[0]], arrays[keys[1]], 2, path)


def read_volume(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A test ``.npy.h5``: ``(image float32 (D, H, W), label uint8 (D, H, W))``."""
  import h5py  # pylint: disable=import-outside-toplevel  (only needed while building)
  try:
    with h5py.File(path, "r") as data:
      names = sorted(data.keys())
      arrays = {k: data[k][()] for k in ("image", "label") if k in data}
  except Exception as e:  # HDF5 errors of a truncated or foreign file
    raise ValueError(f"Synapse: cannot read {path}: {e}") from e
  if len(arrays) != 2:
    raise ValueError(f"Synapse: malformed file {path}: datasets {names}, expected 'image' "
                     f"and 'label'")
  return _checked(arrays["image"], arrays["label"], 3, path)


class Synapse(tfds.core.GeneratorBasedBuilder):
  """Synapse multi-organ CT (TransUNet preprocessing) from a manual dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "TransUNet layout: train_npz slices, test_vol_h5 volumes as slices."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Get TransUNet's preprocessed Synapse data (see the TransUNet / Swin-Unet READMEs) so that
  manual_dir holds train_npz/*.npz and test_vol_h5/*.npy.h5 (and optionally
  lists/lists_Synapse/{train.txt,test_vol.txt}).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    # One FeaturesDict serves both splits, so train examples carry volume_id = slice_index
    # = -1 (their slices are not grouped into volumes).
    tensor = tfds.features.Tensor
    # (None, None) tensors need an encoding. Labels are mostly background: zlib shrinks them
    # many times. Images stay raw float32 bytes (cheap to decode; they compress poorly).
    encoding = tfds.features.Encoding
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tensor(shape=(None, None), dtype=np.float32, encoding=encoding.BYTES),
            "label": tensor(shape=(None, None), dtype=np.uint8, encoding=encoding.ZLIB),
            "case": tfds.features.Text(),
            "volume_id": tfds.features.Scalar(dtype=np.int32),
            "slice_index": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    # Find (and check the presence of) every file before writing anything.
    files = find_files(os.fspath(dl_manager.manual_dir))
    return {"train": self._generate_examples(files.train, "train"),
            "test": self._generate_examples(files.test, "test")}

  def _generate_examples(self, files, split: str) -> Iterator[tuple[str, dict]]:
    return self._generate_train(files) if split == "train" else self._generate_test(files)

  def _generate_train(self, files) -> Iterator[tuple[str, dict]]:
    for name, path in files:
      image, label = read_slice(path)
      yield name, {"image": image, "label": label, "case": name, "volume_id": -1,
                   "slice_index": -1}

  def _generate_test(self, files) -> Iterator[tuple[str, dict]]:
    for volume_id, (name, path) in enumerate(files):
      image, label = read_volume(path)
      for k in range(image.shape[0]):
        yield f"{name}_{k:04d}", {"image": image[k], "label": label[k], "case": name,
                                  "volume_id": volume_id, "slice_index": k}


def build(manual_dir: str, data_dir: str) -> str:
  """Builds ``synapse`` as ArrayRecord under ``data_dir``; returns its folder."""
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  find_files(manual_dir)   # a clear error before TFDS's own manual-dir checks
  builder = Synapse(data_dir=os.path.expanduser(os.fspath(data_dir)),
                    file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return os.fspath(builder.data_dir)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m swin_jax.data.synapse",
      description="Build the Synapse TFDS dataset (ArrayRecord) from TransUNet's layout.")
  parser.add_argument("--manual_dir", required=True,
                      help="folder with train_npz/, test_vol_h5/ (and lists/lists_Synapse/)")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  args = parser.parse_args(argv)
  # Imported here: sources imports this module.
  from swin_jax.data import sources  # pylint: disable=import-outside-toplevel
  data_dir = sources.resolve_data_dir(args.data_dir)
  files = find_files(args.manual_dir)
  lists = os.path.isdir(os.path.join(os.path.expanduser(args.manual_dir), LIST_DIR))
  print(f"Synapse: {len(files.train)} train slices, {len(files.test)} test volumes"
        f"{' (from the list files)' if lists else ''}; writing ArrayRecord under "
        f"{data_dir} (TFDS shows the progress)", file=sys.stderr,
        flush=True)
  path = build(args.manual_dir, data_dir)
  print(f"built {path}; use config.dataset.name = {NAME!r}")


if __name__ == "__main__":
  main()
