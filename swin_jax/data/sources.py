"""Random-access TFDS sources (ArrayRecord builds), found without ever downloading.

``open_source(config.dataset, split)`` returns a sequence of examples
``{'image': uint8 (H, W, C), 'label': int, ...}`` for grain. A dataset that is not prepared
under the data dir fails at once with ``DatasetNotFoundError``; one prepared as TFRecord
fails with ``DatasetFormatError`` (grain needs random access, i.e. ArrayRecord).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from swin_jax.data import demo_dataset
from swin_jax.data import digit_scenes
from swin_jax.data import imagenet22k  # noqa: F401  (registers the 'imagenet22k' builder)
from swin_jax.data import organ_phantoms
from swin_jax.data import synapse  # noqa: F401  (registers the 'synapse' builder)

README_SECTION = 'README "Preparing ImageNet-1K and ImageNet-22K"'


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not prepared under the data dir (swin_jax never downloads data)."""


class DatasetFormatError(ValueError):
  """The dataset is prepared, but not as ArrayRecord (no random access for grain)."""


def resolve_data_dir(data_dir: str | None = None) -> str:
  """``data_dir`` or TFDS's default: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  if data_dir:
    return os.path.expanduser(os.fspath(data_dir))
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def prepared_builder(dataset_config) -> tfds.core.DatasetBuilder:
  """The TFDS builder of ``dataset_config.name`` if it is prepared as ArrayRecord.

  Builds the embedded datasets (the demo digits, the digit scenes, the organ phantoms) on
  first use; raises DatasetNotFoundError / DatasetFormatError (with what to do) otherwise.
  Never downloads or prepares anything else.
  """
  name = dataset_config.name
  data_dir = resolve_data_dir(dataset_config.get("data_dir", ""))
  if name.split(":")[0].split("/")[0] == demo_dataset.DEMO_DATASET:
    demo_dataset.ensure_demo_dataset(data_dir)
  if digit_scenes.is_digit_scenes(name):
    digit_scenes.ensure_for_name(name, data_dir)
  if organ_phantoms.is_organ_phantoms(name):
    organ_phantoms.ensure_for_name(name, data_dir)
  try:
    # Constructing a builder only reads metadata; download_and_prepare is never called.
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    raise _not_found(name, data_dir) from None
  if not builder.is_prepared():
    raise _not_found(name, data_dir)
  formats = builder.info.available_file_formats() or {builder.info.file_format}
  if file_adapters.FileFormat.ARRAY_RECORD not in formats:
    found = ", ".join(sorted(str(getattr(f, "value", f)) for f in formats if f))
    raise DatasetFormatError(
        f"dataset {name} under {data_dir} is stored as {found or 'an unknown format'}, but "
        f"swin_jax reads ArrayRecord (random access for grain); rebuild it with "
        f"--file_format=array_record (e.g. `tfds build {name.split(':')[0]} --data_dir "
        f"{data_dir} --file_format=array_record`); see {README_SECTION}")
  return builder


def num_examples(dataset_config, split: str) -> int:
  """Number of examples in ``split`` (any TFDS split spec, e.g. ``'train[:10%]'``)."""
  builder = prepared_builder(dataset_config)
  return _split_info(builder, dataset_config.name, split).num_examples


def open_source(dataset_config, split: str) -> Sequence[dict[str, Any]]:
  """A random-access source of ``{'image': uint8 (H, W, C), 'label': int, ...}`` dicts."""
  builder = prepared_builder(dataset_config)
  _split_info(builder, dataset_config.name, split)
  return builder.as_data_source(split=split)


def _split_info(builder, name: str, split: str):
  try:
    return builder.info.splits[split]
  except (KeyError, ValueError) as e:
    known = ", ".join(sorted(builder.info.splits.keys()))
    raise ValueError(f"dataset {name} has no split {split!r} (splits: {known}): {e}") from None


def _not_found(name: str, data_dir: str) -> DatasetNotFoundError:
  base = os.path.join(data_dir, name.split(":")[0].split("/")[0])
  versions = []
  if os.path.isdir(base):
    for root, dirs, files in os.walk(base):
      if "dataset_info.json" in files:
        versions.append(os.path.relpath(root, base))
      dirs[:] = [d for d in dirs if not d.startswith(("incomplete", "."))]
  found = f" (found other versions/configs there: {', '.join(sorted(versions))})" \
      if versions else ""
  return DatasetNotFoundError(f"dataset {name} not found under {data_dir}{found}; "
                              f"see {README_SECTION}")
