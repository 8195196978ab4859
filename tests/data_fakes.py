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
import os
import tempfile
from typing import Iterator

import numpy as np

from swin_jax.data.fake_data import (build_fake_imagenet, build_fake_imagenet22k,
                                     build_fake_scene_parse150)

__all__ = ["build_fake_imagenet", "build_fake_imagenet22k", "build_fake_scene_parse150",
           "build_fake_synapse",
           "fake_imagenet", "write_fake_synapse"]


@contextlib.contextmanager
def fake_imagenet(num_examples: int = 24, num_classes: int = 4, *, eval_examples: int = 10,
                  sizes: tuple[int, int] = (12, 40)) -> Iterator[str]:
  """A temporary data dir holding a fake ``imagenet2012``; yields the data dir."""
  with tempfile.TemporaryDirectory(prefix="fake_tfds_") as data_dir:
    build_fake_imagenet(data_dir, num_examples=num_examples, eval_examples=eval_examples,
                        num_classes=num_classes, sizes=sizes)
    yield data_dir


def _fake_ct_slice(rng: np.random.Generator, size: int,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """A smooth random image in [0, 1] and a label of a few rectangles ("organs")."""
  image = rng.random((size, size)).astype(np.float32)
  label = np.zeros((size, size), np.uint8)
  for k in rng.choice(np.arange(1, num_classes), size=min(3, num_classes - 1), replace=False):
    y, x = rng.integers(0, size - 4, size=2)
    h, w = rng.integers(2, size // 3 + 3, size=2)
    label[y:y + h, x:x + w] = k
    image[y:y + h, x:x + w] = np.float32(k / num_classes)   # organs are visible in the image
  return image, label


def write_fake_synapse(manual_dir, *, train_slices: int = 3, test_depths=(3, 2), size: int = 32,
                       num_classes: int = 9, lists: bool = False, seed: int = 0) -> dict:
  """Writes TransUNet's Synapse layout (``train_npz/``, ``test_vol_h5/``) into ``manual_dir``.

  Train labels are uint8, test labels float32 (as in TransUNet's files). With ``lists``, also
  writes ``lists/lists_Synapse/{train.txt,test_vol.txt}`` naming every file. Returns
  ``{'train': [(name, image, label)], 'test': [(name, image (D, H, W), label (D, H, W))]}``,
  in the order the builder stores them (sorted by name).
  """
  import h5py  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  manual_dir = os.fspath(manual_dir)
  os.makedirs(os.path.join(manual_dir, "train_npz"), exist_ok=True)
  os.makedirs(os.path.join(manual_dir, "test_vol_h5"), exist_ok=True)
  written = {"train": [], "test": []}
  for i in range(train_slices):
    name = f"case{40 + i // 2:04d}_slice{i % 2:03d}"
    image, label = _fake_ct_slice(rng, size, num_classes)
    np.savez(os.path.join(manual_dir, "train_npz", name + ".npz"), image=image, label=label)
    written["train"].append((name, image, label))
  for v, depth in enumerate(test_depths):
    name = f"case{v + 1:04d}"
    pairs = [_fake_ct_slice(rng, size, num_classes) for _ in range(depth)]
    image = np.stack([p[0] for p in pairs])
    label = np.stack([p[1] for p in pairs])
    with h5py.File(os.path.join(manual_dir, "test_vol_h5", name + ".npy.h5"), "w") as f:
      f.create_dataset("image", data=image)
      f.create_dataset("label", data=label.astype(np.float32))
    written["test"].append((name, image, label))
  if lists:
    list_dir = os.path.join(manual_dir, "lists", "lists_Synapse")
    os.makedirs(list_dir, exist_ok=True)
    for file_name, split in (("train.txt", "train"), ("test_vol.txt", "test")):
      with open(os.path.join(list_dir, file_name), "w") as f:
        f.write("".join(name + "\n" for name, _, _ in written[split]))
  return written


def build_fake_synapse(data_dir: str, **kwargs) -> dict:
  """Builds a tiny ``synapse`` TFDS dataset under ``data_dir`` through the real builder.

  ``kwargs`` go to ``write_fake_synapse`` (sizes, counts, seed); returns what it wrote.
  """
  from swin_jax.data import synapse  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="fake_synapse_") as manual_dir:
    written = write_fake_synapse(manual_dir, **kwargs)
    synapse.build(manual_dir, data_dir)
  return written
