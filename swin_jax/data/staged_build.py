"""Building an embedded TFDS dataset once, safely when several processes race.

Each process builds into its own temporary folder inside ``data_dir`` and renames the
finished version folder into place (an atomic rename); a process that loses the race drops
its copy. The demo digits, the digit scenes and the organ phantoms build this way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable


def version_dir(data_dir: str, name: str, version: str) -> str:
  """``<data_dir>/<name without ':version'>/<version>``: where TFDS keeps a build."""
  return os.path.join(data_dir, name.split(":")[0], version)


def is_built(path: str) -> bool:
  """Whether the version folder ``path`` holds a finished build."""
  return os.path.exists(os.path.join(path, "dataset_info.json"))


def build_and_rename(data_dir: str, dataset: str, target: str, build: Callable[[str], str],
                     is_prepared: Callable[[], bool] | None = None) -> None:
  """Runs ``build(staging)`` (a fresh folder inside ``data_dir``; it returns the version
  folder it built there) and renames that folder to ``target``. Losing the race to another
  process is fine (``is_prepared()``, default ``is_built(target)``, says the winner's build
  is there); any other failure raises."""
  os.makedirs(data_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{dataset}-build-", dir=data_dir)
  try:
    built = build(staging)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
      os.rename(built, target)
    except OSError:
      if not (is_prepared() if is_prepared else is_built(target)):  # a real failure
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
