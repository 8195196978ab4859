"""Tiny real TFDS datasets for tests (ArrayRecord builds in a temporary data dir).

``tfds.testing.mock_data`` does patch ``builder.as_data_source``, but it points every
builder at a data dir that does not exist (so ``sources.open_source``'s fail-fast check
reports the dataset as missing, as it should) and its MagicMock source only lives in the
test process (no grain workers). A real build of a few images takes well under a second
once TensorFlow is imported, and exercises exactly the production reader.

    with fake_imagenet(num_examples=24, num_classes=4) as data_dir:
      config.dataset.name, config.dataset.data_dir = "imagenet2012", data_dir
      ...
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def build_fake_imagenet(data_dir: str, *, num_examples: int = 24, eval_examples: int = 10,
                        num_classes: int = 4, sizes: tuple[int, int] = (12, 40),
                        name: str = "imagenet2012", seed: int = 0) -> None:
  """Builds ``name`` with splits 'train' / 'validation' under ``data_dir``.

  Like TFDS ``imagenet2012``: ``image`` JPEG of random height/width in ``sizes`` (every
  image distinct), ``label`` in ``[0, num_classes)``, ``file_name``. For a name TFDS
  knows (imagenet2012) the version is the registered one, so the real builder reads it.
  """
  rng = np.random.default_rng(seed)

  def examples(split: str, count: int):
    out = []
    for i in range(count):
      h, w = rng.integers(sizes[0], sizes[1] + 1, size=2)
      # Smooth random colour fields survive JPEG well and are distinct per example.
      base = rng.integers(0, 256, size=(3, 3, 3)).astype(np.uint8)
      image = np.asarray(Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR))
      out.append((f"{split}_{i}", {"image": _jpeg(image), "label": int(i % num_classes),
                                   "file_name": f"{split}_{i}.JPEG"}))
    return out

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


@contextlib.contextmanager
def fake_imagenet(num_examples: int = 24, num_classes: int = 4, *, eval_examples: int = 10,
                  sizes: tuple[int, int] = (12, 40)) -> Iterator[str]:
  """A temporary data dir holding a fake ``imagenet2012``; yields the data dir."""
  with tempfile.TemporaryDirectory(prefix="fake_tfds_") as data_dir:
    build_fake_imagenet(data_dir, num_examples=num_examples, eval_examples=eval_examples,
                        num_classes=num_classes, sizes=sizes)
    yield data_dir
