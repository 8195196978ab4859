"""Small fake ImageNet-1K / ImageNet-22K TFDS builds, for smoke runs of the real configs.

Random-colour JPEGs, written through the same TFDS/ArrayRecord path as the real datasets:

  python -m swin_jax.data.fake_data --data_dir /tmp/fake_tfds    # imagenet2012 + imagenet22k
  python -m swin_jax.main --config=configs/swin_b_22k.py --workdir=/tmp/smoke \
      --config.dataset.data_dir=/tmp/fake_tfds --config.batch_size=8 --config.total_steps=1
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from swin_jax.data import imagenet22k


def _random_image(rng: np.random.Generator, sizes: tuple[int, int]) -> Image.Image:
  h, w = rng.integers(sizes[0], sizes[1] + 1, size=2)
  # Smooth random colour fields survive JPEG well and are distinct per example.
  base = rng.integers(0, 256, size=(3, 3, 3)).astype(np.uint8)
  return Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR)


def _jpeg(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def build_fake_imagenet(data_dir: str, *, num_examples: int = 24, eval_examples: int = 10,
                        num_classes: int = 4, sizes: tuple[int, int] = (12, 40),
                        name: str = "imagenet2012", seed: int = 0) -> None:
  """Builds ``name`` with splits 'train' / 'validation' under ``data_dir``.

  Like TFDS ``imagenet2012``: ``image`` JPEG of random height/width in ``sizes`` (every
  image distinct), ``label = i % num_classes``, ``file_name``. For a name TFDS knows
  (imagenet2012) the version is the registered one, so the real builder reads it.
  """
  rng = np.random.default_rng(seed)

  def examples(split: str, count: int):
    return [(f"{split}_{i}", {"image": _jpeg(_random_image(rng, sizes)),
                              "label": int(i % num_classes), "file_name": f"{split}_{i}.JPEG"})
            for i in range(count)]

  try:
    version = str(tfds.builder_cls(name).VERSION)
  except tfds.core.DatasetNotFoundError:
    version = "1.0.0"
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
      "file_name": tfds.features.Text(),
  })
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=version, features=features, data_dir=data_dir,
      split_datasets={"train": examples("train", num_examples),
                      "validation": examples("validation", eval_examples)},
      file_format="array_record")


def build_fake_imagenet22k(data_dir: str, *, num_classes: int = 3, train_per_class: int = 4,
                           sizes: tuple[int, int] = (12, 40), seed: int = 0) -> None:
  """Builds ``imagenet22k`` (21,841-class labels) from fake class folders of the first
  ``num_classes`` synsets, through the real builder (10 files per class held out)."""
  rng = np.random.default_rng(seed)
  holdout = imagenet22k.HOLDOUT_CHOICES[0]
  with tempfile.TemporaryDirectory(prefix="fake_fall11_") as manual_dir:
    for wnid in imagenet22k.synsets()[:num_classes]:
      os.makedirs(os.path.join(manual_dir, wnid))
      for i in range(holdout + train_per_class):
        _random_image(rng, sizes).save(os.path.join(manual_dir, wnid, f"{wnid}_{i}.JPEG"))
    imagenet22k.build(manual_dir, data_dir)


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def build_fake_scene_parse150(data_dir: str, *, num_examples: int = 8, eval_examples: int = 4,
                              sizes: tuple[int, int] = (24, 64), seed: int = 0) -> None:
  """Builds ``scene_parse150`` with splits 'train' / 'test' under ``data_dir``, with the
  registered builder's features and version: ``image`` JPEG of random size in ``sizes``,
  ``annotation`` a 3-channel PNG of the same size whose first channel holds labels 0..150
  in rectangles (0 = 'other', as in ADE20K)."""
  rng = np.random.default_rng(seed)

  def example(i: int, split: str):
    image = _random_image(rng, sizes)
    w, h = image.size
    label = np.zeros((h, w), np.uint8)
    for _ in range(3):
      y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
      label[y0:y0 + h // 2, x0:x0 + w // 2] = rng.integers(1, 151)
    annotation = np.stack([label, np.zeros_like(label), np.zeros_like(label)], axis=-1)
    return f"{split}_{i}", {"image": _jpeg(image), "annotation": _png(annotation)}

  builder_cls = tfds.builder_cls("scene_parse150")
  tfds.dataset_builders.store_as_tfds_dataset(
      name="scene_parse150", version=str(builder_cls.VERSION),
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "annotation": tfds.features.Image(encoding_format="png"),
      }),
      data_dir=data_dir,
      split_datasets={"train": [example(i, "train") for i in range(num_examples)],
                      "test": [example(i, "test") for i in range(eval_examples)]},
      file_format="array_record")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m swin_jax.data.fake_data",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", required=True, help="TFDS data dir to write into")
  parser.add_argument("--examples", type=int, default=32, help="train examples (1K)")
  args = parser.parse_args(argv)
  build_fake_imagenet(args.data_dir, num_examples=args.examples, eval_examples=16,
                      num_classes=1000)
  build_fake_imagenet22k(args.data_dir, num_classes=max(1, args.examples // 4))
  print(f"fake imagenet2012 and imagenet22k under {args.data_dir}")


if __name__ == "__main__":
  main()
