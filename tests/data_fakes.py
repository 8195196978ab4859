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
import tempfile
from typing import Iterator

from swin_jax.data.fake_data import build_fake_imagenet, build_fake_imagenet22k

__all__ = ["build_fake_imagenet", "build_fake_imagenet22k", "fake_imagenet"]


@contextlib.contextmanager
def fake_imagenet(num_examples: int = 24, num_classes: int = 4, *, eval_examples: int = 10,
                  sizes: tuple[int, int] = (12, 40)) -> Iterator[str]:
  """A temporary data dir holding a fake ``imagenet2012``; yields the data dir."""
  with tempfile.TemporaryDirectory(prefix="fake_tfds_") as data_dir:
    build_fake_imagenet(data_dir, num_examples=num_examples, eval_examples=eval_examples,
                        num_classes=num_classes, sizes=sizes)
    yield data_dir
