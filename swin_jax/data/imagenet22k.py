"""ImageNet-22K (fall11, 21,841 classes) as a TFDS dataset built from a manual directory.

TFDS has no public ImageNet-21k/22k builder, so this one reads the extracted release:
``<manual_dir>/<wnid>/*.JPEG``, one folder per synset. Labels follow the sorted fall11 list
``swin_jax/data/imagenet22k_synsets.txt`` (note: the official Swin 22K heads deviate from
this order past about index 9211, see that file's README). A class folder may be missing
(0 images); a folder that is not a fall11 synset is an error.

Splits: ``'validation'`` holds the first ``holdout_per_class`` files (sorted by name) of
every class, ``'train'`` the rest. The config ``imagenet22k/holdout<K>`` picks K; the default
``imagenet22k`` is ``holdout10`` (218,410 held-out images).

Every file is decoded with PIL while building, so a corrupt image stops the build with its
path. RGB JPEGs are stored as they are; anything else (CMYK or grey JPEG, PNG...) is
converted to an RGB JPEG (quality 95, 4:4:4) so that every stored image decodes to (H, W, 3).

Build (ArrayRecord, which grain needs for random access):

    python -m swin_jax.data.imagenet22k --manual_dir /data/fall11 --data_dir ~/tfds
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
from typing import Iterator

import importlib_resources
import tensorflow_datasets as tfds
from PIL import Image

HOLDOUT_CHOICES = (10, 1, 2, 5, 25, 50)   # the first one is the default config
JPEG_QUALITY = 95                         # only for the rare re-encoded (non RGB-JPEG) files


def synsets() -> list[str]:
  """The 21,841 fall11 synsets in label order."""
  files = importlib_resources.files("swin_jax.data")
  text = files.joinpath("imagenet22k_synsets.txt").read_text()
  return [line for line in text.split("\n") if line]


@dataclasses.dataclass(eq=False)
class Imagenet22kConfig(tfds.core.BuilderConfig):
  """``holdout_per_class``: how many files of each class go to 'validation'."""
  holdout_per_class: int = 10


def checked_image_bytes(path: str) -> bytes:
  """The bytes to store for ``path``: the file itself if it is an RGB JPEG, else an RGB JPEG.

  Raises ValueError naming the file if PIL cannot decode it completely.
  """
  with open(path, "rb") as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format == "JPEG" and image.mode == "RGB":
        # A reduced-scale decode still reads every entropy-coded byte (so it catches
        # truncated files) at a fraction of the cost of a full decode.
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return data
      buffer = io.BytesIO()
      # 4:4:4 chroma: these files are few, so fidelity beats size.
      image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
      return buffer.getvalue()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"corrupt image {path}: {e}") from e


def class_folders(manual_dir: str, known: list[str]) -> list[tuple[int, str]]:
  """``[(label, folder path)]`` for the synset folders present in ``manual_dir``, by label.

  Raises ValueError naming any folder that is not a fall11 synset.
  """
  label_of = {wnid: i for i, wnid in enumerate(known)}
  names = sorted(e.name for e in os.scandir(manual_dir)
                 if e.is_dir() and not e.name.startswith("."))
  unknown = [n for n in names if n not in label_of]
  if unknown:
    shown = ", ".join(unknown[:10]) + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10
                                       else "")
    raise ValueError(f"{manual_dir} has folders that are not ImageNet-22K (fall11) synsets: "
                     f"{shown}; expected only <wnid>/ folders such as {known[0]}/")
  if not names:
    raise ValueError(f"{manual_dir} has no class folders; expected <wnid>/*.JPEG")
  return sorted((label_of[n], os.path.join(manual_dir, n)) for n in names)


class Imagenet22k(tfds.core.GeneratorBasedBuilder):
  """ImageNet-22K (fall11) from ``<manual_dir>/<wnid>/*`` with a per-class held-out split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "fall11 class folders; first K files per class held out."}
  BUILDER_CONFIGS = [
      Imagenet22kConfig(name=f"holdout{k}", holdout_per_class=k,
                        description=f"first {k} files (by name) of each class -> validation")
      for k in HOLDOUT_CHOICES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Extract the ImageNet fall11 release (fall11_whole.tar, one tar per synset) so that
  manual_dir holds one folder per synset: manual_dir/n00004475/n00004475_15899.JPEG ...
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=synsets()),
            "file_name": tfds.features.Text(),  # '<wnid>/<file>'
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.image-net.org/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    # Check the folder names before writing anything.
    folders = class_folders(os.fspath(dl_manager.manual_dir), synsets())
    return {"train": self._generate_examples(folders, "train"),
            "validation": self._generate_examples(folders, "validation")}

  def _generate_examples(self, folders: list[tuple[int, str]],
                         split: str) -> Iterator[tuple[str, dict]]:
    k = self.builder_config.holdout_per_class
    for label, folder in folders:
      files = sorted(e.name for e in os.scandir(folder)
                     if e.is_file() and not e.name.startswith("."))
      for name in (files[:k] if split == "validation" else files[k:]):
        file_name = f"{os.path.basename(folder)}/{name}"
        yield file_name, {"image": checked_image_bytes(os.path.join(folder, name)),
                          "label": label, "file_name": file_name}


def build(manual_dir: str, data_dir: str, holdout_per_class: int = HOLDOUT_CHOICES[0]) -> str:
  """Builds ``imagenet22k/holdout<K>`` as ArrayRecord under ``data_dir``; returns its folder."""
  builder = Imagenet22k(config=f"holdout{holdout_per_class}", data_dir=data_dir,
                        file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return os.fspath(builder.data_dir)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m swin_jax.data.imagenet22k",
      description="Build the ImageNet-22K TFDS dataset (ArrayRecord) from class folders.")
  parser.add_argument("--manual_dir", required=True, help="folder of <wnid>/ class folders")
  parser.add_argument("--data_dir", default="",
                      help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--holdout_per_class", type=int, default=HOLDOUT_CHOICES[0],
                      choices=HOLDOUT_CHOICES,
                      help="files per class held out as 'validation' (config holdout<K>)")
  args = parser.parse_args(argv)
  # Imported here: sources imports this module.
  from swin_jax.data import sources  # pylint: disable=import-outside-toplevel
  data_dir = sources.resolve_data_dir(args.data_dir)
  path = build(args.manual_dir, data_dir, args.holdout_per_class)
  name = "imagenet22k" if args.holdout_per_class == HOLDOUT_CHOICES[0] else \
      f"imagenet22k/holdout{args.holdout_per_class}"
  print(f"built {path}; use config.dataset.name = {name!r}")


if __name__ == "__main__":
  main()
