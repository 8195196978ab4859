"""COCO for the detection task: TFDS ``coco/2017`` examples, category ids, instance masks.

TFDS ``coco/2017`` (read like any dataset, through ``sources.open_source``) has per example
``image`` uint8 ``(H, W, 3)``, ``image/id``, ``image/filename`` and ``objects/{bbox, label,
is_crowd, area, id}``: boxes normalised ``(ymin, xmin, ymax, xmax)``, labels ``0..79`` (the
80 categories in COCO id order), ``objects/id`` the annotation id. It has **no instance
masks**: Mask R-CNN on TFDS coco reads them from the official annotation JSON
(``instances_train2017.json``) by annotation id (``AnnotationMasks``); evaluation reads the
ground truth of ``instances_val2017.json``. Both files are not downloaded by swin_jax.

``read_coco_example`` turns a TFDS example into the detection task's canonical example
(``detection_transforms``) with mmdet 2.11's ``CocoDataset._parse_ann_info`` rules: boxes
``x1 y1 x2 y2`` in pixels, boxes narrower or lower than 1 px or with area <= 0 left out,
crowd boxes kept but flagged (training leaves them out of the valid ground truth; COCOeval
reads them as ``iscrowd``).

``build_fake_coco`` writes a tiny ``coco/2017`` ArrayRecord build and matching annotation
JSONs (with RLE masks) for tests and smoke runs.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import numpy as np

# COCO's 80 category ids in order: TFDS label k (and the model's class k) is category
# COCO_CATEGORY_IDS[k].
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90)
# Their names, in the same order (instances_val2017.json 'categories').
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush")
TFDS_NAME = "coco/2017"
# Where the configs look for the official annotation JSONs (``{data_dir}`` is the dataset's
# data dir): put instances_{train,val}2017.json from annotations_trainval2017.zip there.
ANNOTATIONS_DIR = "{data_dir}/coco_annotations"
TRAIN_ANNOTATIONS = ANNOTATIONS_DIR + "/instances_train2017.json"
VAL_ANNOTATIONS = ANNOTATIONS_DIR + "/instances_val2017.json"


def is_coco(name: str) -> bool:
  return name.split(":")[0].split("/")[0] == "coco"


def _objects(example: dict[str, Any]) -> dict[str, np.ndarray]:
  """The ``objects`` sequence, flat or nested keys, every field cut to the shortest (real
  builds agree; TFDS mock data draws each field's length on its own)."""
  if "objects" in example:
    objects = {k: np.asarray(v) for k, v in example["objects"].items()}
  else:
    objects = {k.split("/", 1)[1]: np.asarray(v) for k, v in example.items()
               if k.startswith("objects/")}
  n = min(len(v) for v in objects.values()) if objects else 0
  return {k: v[:n] for k, v in objects.items()}


def read_coco_example(example: dict[str, Any],
                      masks: Optional["AnnotationMasks"] = None) -> dict[str, Any]:
  """A TFDS ``coco`` example -> the canonical detection example (``detection_transforms``).

  ``masks``: where instance masks come from (None: no masks, ``'masks'`` absent).
  """
  image = np.asarray(example["image"])
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  h, w = image.shape[:2]
  objects = _objects(example)
  bbox = objects.get("bbox", np.zeros((0, 4), np.float32)).astype(np.float64).reshape(-1, 4)
  # Normalised (ymin, xmin, ymax, xmax) -> pixels (x1, y1, x2, y2).
  boxes = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=-1)
  n = len(boxes)
  area = objects.get("area", np.ones(n)).astype(np.float64)
  # CocoDataset._parse_ann_info: w < 1 or h < 1 or area <= 0 is no annotation at all.
  keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1) & (area > 0)
  image_id = int(np.asarray(example.get("image/id", -1)))
  out = {
      "image": image.astype(np.uint8),
      "boxes": boxes[keep].astype(np.float32),
      "labels": objects.get("label", np.zeros(n, np.int64))[keep].astype(np.int32),
      "crowd": objects.get("is_crowd", np.zeros(n, bool))[keep].astype(bool),
      "area": area[keep].astype(np.float32),
      "image_id": image_id,
  }
  if masks is not None:
    ids = objects.get("id", np.full(n, -1, np.int64))[keep]
    out["masks"] = masks.masks(ids, (h, w))
  return out


class AnnotationMasks:
  """Instance masks of a COCO annotation JSON, looked up by annotation id (TFDS
  ``objects/id``). The JSON is read on first use (once per process; the train file takes
  seconds and a few GB)."""

  def __init__(self, path: str):
    self.path = path

  @functools.cached_property
  def _coco(self):
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
    if not os.path.exists(self.path):
      raise FileNotFoundError(
          f"COCO annotation file {self.path} not found; TFDS coco/2017 has no instance "
          "masks, so Mask R-CNN reads them from the official instances_*.json "
          "(annotations_trainval2017.zip); put it there or set task.train_annotations")
    import contextlib, io  # pylint: disable=import-outside-toplevel,multiple-imports
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
      return COCO(self.path)

  def masks(self, ann_ids: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bool ``(N, H, W)``: each annotation's mask (an id the JSON lacks: an empty mask)."""
    coco = self._coco
    out = np.zeros((len(ann_ids), *hw), bool)
    for k, ann_id in enumerate(np.asarray(ann_ids).tolist()):
      ann = coco.anns.get(int(ann_id))
      if ann is None:
        continue
      mask = coco.annToMask(ann)
      if mask.shape == tuple(hw):
        out[k] = mask > 0
    return out


def resolve_path(template: str, data_dir: str) -> str:
  """``template`` with ``{data_dir}`` replaced (``sources.resolve_data_dir``)."""
  from swin_jax.data import sources  # pylint: disable=import-outside-toplevel
  return template.replace("{data_dir}", sources.resolve_data_dir(data_dir))


# ------------------------------------------------------------------------------ fake build


def _fake_examples(rng: np.random.Generator, count: int, id_offset: int, sizes=(40, 72)):
  """Random images with 1-3 rectangles each: TFDS examples and their COCO JSON entries."""
  from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel
  examples, images, annotations = [], [], []
  for i in range(count):
    h, w = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image_id = id_offset + i
    objects = {"bbox": [], "label": [], "is_crowd": [], "area": [], "id": []}
    for _ in range(int(rng.integers(1, 4))):
      bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
      x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
      mask = np.zeros((h, w), np.uint8)
      mask[y0:y0 + bh, x0:x0 + bw] = 1
      image[mask > 0] = rng.integers(0, 256, 3, dtype=np.uint8)
      label = int(rng.integers(0, 80))
      ann_id = 1000 * image_id + len(objects["id"]) + 1
      crowd = bool(rng.random() < 0.1)
      rle = mask_utils.encode(np.asfortranarray(mask))
      annotations.append({"id": ann_id, "image_id": image_id,
                          "category_id": COCO_CATEGORY_IDS[label],
                          "bbox": [x0, y0, bw, bh], "area": float(bw * bh),
                          "iscrowd": int(crowd),
                          "segmentation": {"size": [h, w],
                                           "counts": rle["counts"].decode("ascii")}})
      objects["bbox"].append([y0 / h, x0 / w, (y0 + bh) / h, (x0 + bw) / w])
      objects["label"].append(label)
      objects["is_crowd"].append(crowd)
      objects["area"].append(bw * bh)
      objects["id"].append(ann_id)
    images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
    examples.append((str(image_id), {
        "image": image, "image/filename": f"{image_id}.jpg", "image/id": image_id,
        "objects": {"bbox": np.asarray(objects["bbox"], np.float32),
                    "label": np.asarray(objects["label"], np.int64),
                    "is_crowd": np.asarray(objects["is_crowd"], bool),
                    "area": np.asarray(objects["area"], np.int64),
                    "id": np.asarray(objects["id"], np.int64)}}))
  return examples, images, annotations


def build_fake_coco(data_dir: str, *, num_train: int = 8, num_val: int = 4,
                    seed: int = 0) -> str:
  """Writes a fake ``coco/2017`` (ArrayRecord; the registered builder's features and
  version; splits 'train' and 'validation') and its annotation JSONs under
  ``ANNOTATIONS_DIR``. Random images with 1-3 filled rectangles (RLE masks, ~10% crowd).
  Returns the annotations folder."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  splits, jsons = {}, {}
  for split, count, offset, stem in (("train", num_train, 1, "train2017"),
                                     ("validation", num_val, 10_001, "val2017")):
    examples, images, annotations = _fake_examples(rng, count, offset)
    splits[split] = examples
    jsons[stem] = {"images": images, "annotations": annotations,
                   "categories": [{"id": c, "name": str(c), "supercategory": "fake"}
                                  for c in COCO_CATEGORY_IDS]}
  builder = tfds.builder(TFDS_NAME, data_dir=data_dir)   # metadata only
  tfds.dataset_builders.store_as_tfds_dataset(
      name="coco", config="2017", version=str(builder.info.version),
      features=builder.info.features, data_dir=data_dir, split_datasets=splits,
      file_format="array_record")
  folder = resolve_path(ANNOTATIONS_DIR, data_dir)
  os.makedirs(folder, exist_ok=True)
  for stem, content in jsons.items():
    with open(os.path.join(folder, f"instances_{stem}.json"), "w", encoding="utf-8") as f:
      json.dump(content, f)
  return folder
