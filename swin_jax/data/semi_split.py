"""Soft Teacher's partially labelled COCO splits (``tools/dataset/semi_coco.py``).

The official script seeds NumPy's global generator with the fold (``np.random.seed(seed +
seed_offset)``, offset 0 in the released splits), keeps ``int(percent / 100.0 * N)`` of the
JSON's ``N`` images, chosen by ``np.random.choice(range(N), size, replace=False)``, as the
labelled set (``instances_train2017.{fold}@{percent}``), and the rest as unlabelled. Here the
same draw comes from a ``np.random.RandomState(fold)`` (the legacy generator that
``np.random.seed`` seeds, so the same stream) without touching the global state.

    positions = labelled_positions(num_images, fold=1, percent=10)   # sorted int64 (K,)
    labelled_ids, unlabelled_ids = coco_partial_split("instances_train2017.json", 1, 10)
"""

from __future__ import annotations

import json
import os

import numpy as np


def _check_percent(percent: float) -> float:
  percent = float(percent)
  if not 0.0 < percent <= 100.0:
    raise ValueError(f"percent must be in (0, 100] (the labelled share of the images, in "
                     f"percent), got {percent}")
  return percent


def labelled_positions(num_images: int, fold: int, percent: float) -> np.ndarray:
  """Positions (0-based, in the JSON's image order) of the labelled images, sorted: the
  official draw, ``int(percent / 100.0 * num_images)`` of them without replacement from a
  generator seeded with ``fold``."""
  percent = _check_percent(percent)
  if int(num_images) != num_images or num_images < 0:
    raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
  num_images = int(num_images)
  size = int(percent / 100.0 * num_images)
  chosen = np.random.RandomState(fold).choice(range(num_images), size=size, replace=False)
  return np.sort(np.asarray(chosen, np.int64))


def coco_partial_split(annotation_json_path: str, fold: int, percent: float
                       ) -> tuple[np.ndarray, np.ndarray]:
  """``(labelled_image_ids, unlabelled_image_ids)`` (int64 arrays, each in the JSON's
  ``images`` order) of a COCO annotation file split as the official script splits it."""
  percent = _check_percent(percent)
  if not os.path.isfile(annotation_json_path):
    raise FileNotFoundError(f"COCO annotation file {annotation_json_path!r} does not exist "
                            f"(e.g. annotations/instances_train2017.json)")
  with open(annotation_json_path) as f:
    anno = json.load(f)
  if not isinstance(anno, dict) or "images" not in anno:
    raise ValueError(f"{annotation_json_path!r} has no 'images' list: not a COCO "
                     f"annotation file")
  ids = np.asarray([int(image["id"]) for image in anno["images"]], np.int64)
  labelled = np.zeros(len(ids), bool)
  labelled[labelled_positions(len(ids), fold, percent)] = True
  return ids[labelled], ids[~labelled]
