"""mmdet 2.11's detection pipelines (the Swin Mask R-CNN recipes) as host-side numpy, onto
a static canvas.

    train = DetectionTrainTransform(canvas=(1344, 1344), scales=MSTRAIN_SCALES, ...)
    example = train(canonical_example, np.random.Generator)
    # {'image': float32 (Hc, Wc, 3), 'image_hw': int32 (2,), 'gt_boxes': float32 (G, 4),
    #  'gt_labels': int32 (G,), 'gt_valid': bool (G,), 'gt_masks': bool (G, Hc, Wc)}

A *canonical example* (what ``read_*`` functions make of a dataset's example) is
``{'image': uint8 (H, W, 3) RGB, 'boxes': float32 (N, 4) x1 y1 x2 y2 pixels, 'labels':
int32 (N,) 0-based, 'crowd': bool (N,), 'area': float32 (N,), 'image_id': int, 'masks':
bool (N, H, W)}`` (``masks`` optional).

Train, in the order of the Swin config (``RandomFlip(0.5)``, ``AutoAugment``, ``Normalize``,
``Pad(size_divisor=32)``), every draw from the generator passed in:
1. crowd boxes leave (mmdet keeps them as ``gt_bboxes_ignore``, which Mask R-CNN never reads);
2. horizontal flip with ``flip_prob``: ``x1' = W - x2``, ``x2' = W - x1``, masks mirrored;
3. with probability ``crop_prob`` (``AutoAugment``'s second policy; 0.5 in the recipe, which
   picks one of two policies uniformly): a keep-ratio resize to one of ``crop_scales``, a
   ``RandomCrop(crop_type='absolute_range', crop_size, allow_negative_crop=True)`` (height
   and width each uniform in ``[min(side, lo), min(side, hi)]``, a uniform offset; boxes
   shifted and clipped, boxes left empty dropped with their masks), then the resize below;
4. ``Resize(img_scale=scales, multiscale_mode='value', keep_ratio=True)``: one of ``scales``
   (``(long, short)`` pairs), mmcv's ``rescale_size`` (``int(x f + 0.5)``), the image by
   OpenCV's bilinear resize (bit-exact, ``mmseg_transforms.resize_bilinear``), masks by
   nearest, boxes times ``(new_w / w, new_h / h)`` (float32) and clipped to the new size;
5. ImageNet mean/std on 0..255 (RGB), then zero padding to the canvas (bottom and right).

Every draw depends on the source size alone: ``train.plan((H, W), rng)`` returns them as a
``TrainGeometry`` (its ``out_hw`` is the size step 4 gives) and ``train.place(train.read(
example), geometry, canvas)`` carries them out, so ``train(example, rng)`` is
``place(read(example), plan(size, rng))``. Canvas buckets (``detection_buckets``) use the
plan to choose each example's canvas before reading its pixels.

``image_hw`` is the resized size (mmdet's ``img_shape``): proposals and detections clip to it,
and anchors and mask targets use its multiple of 32 (``pad_shape``). Static shapes: the ground
truth is padded to ``G = max_instances`` with ``gt_valid``; an image with more instances keeps
its first ``G`` (so ``G`` must be at least the dataset's maximum: 100 for COCO). A resized
image larger than the canvas is shrunk to fit (keeping its ratio), which a canvas that holds
every scale (``canvas_for_scales``) never needs.

Eval (``DetectionEvalTransform``): one keep-ratio resize to ``scale`` ((1333, 800) in the
recipe), normalise, pad; the outputs also carry what maps detections back to the source image
(``scale_factor`` ``(h_scale, w_scale)``, ``orig_hw``, ``image_id``) and the source ground truth
(``gt_*``, source pixels, crowd boxes flagged, for COCO ground truth built from the eval set).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from swin_jax.data import mmseg_transforms as mt

# mmdet 2.11's Swin recipes (configs/swin/mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800
# _adamw_{1x,3x}_coco.py): Resize targets as (long, short) pairs.
MSTRAIN_SCALES = tuple((1333, s) for s in range(480, 801, 32))
CROP_SCALES = ((1333, 400), (1333, 500), (1333, 600))
CROP_SIZE = (384, 600)
TEST_SCALE = (1333, 800)
SIZE_DIVISOR = 32

Reader = Callable[[dict[str, Any]], dict[str, Any]]


def canvas_for_scales(scales: Sequence[Sequence[int]], divisor: int = SIZE_DIVISOR
                      ) -> tuple[int, int]:
  """The square canvas that holds every keep-ratio resize to ``scales`` in either
  orientation: the largest long side rounded up to ``divisor`` (1344 for 1333)."""
  side = max(max(s) for s in scales)
  side = -(-side // divisor) * divisor
  return side, side


def pad_hw(image_hw: np.ndarray, divisor: int = SIZE_DIVISOR) -> np.ndarray:
  """mmdet's ``pad_shape``: each size rounded up to ``divisor``."""
  return -(-np.asarray(image_hw) // divisor) * divisor


# ----------------------------------------------------------------------------- geometry


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """mmdet ``bbox_flip`` (horizontal): ``x1' = W - x2``, ``x2' = W - x1``."""
  out = boxes.copy()
  out[:, 0] = width - boxes[:, 2]
  out[:, 2] = width - boxes[:, 0]
  return out


def hflip(example: dict[str, Any]) -> dict[str, Any]:
  """Image, boxes and masks mirrored left-right."""
  out = dict(example)
  out["image"] = example["image"][:, ::-1]
  out["boxes"] = flip_boxes(example["boxes"], example["image"].shape[1])
  if "masks" in example:
    out["masks"] = example["masks"][:, :, ::-1]
  return out


def resize_to(example: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
  """Image (bilinear, OpenCV), masks (nearest) and boxes resized to ``size = (h, w)``; boxes
  times ``(w_scale, h_scale)`` in float32 and clipped to the new size (mmdet ``Resize``).
  Adds ``scale_factor`` ``(h_scale, w_scale)`` (float32)."""
  h, w = example["image"].shape[:2]
  nh, nw = size
  out = dict(example)
  out["image"] = mt.resize_bilinear(np.ascontiguousarray(example["image"]), (nh, nw))
  w_scale, h_scale = np.float32(nw / w), np.float32(nh / h)
  boxes = example["boxes"].astype(np.float32) * np.array([w_scale, h_scale, w_scale, h_scale],
                                                         np.float32)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, nw)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, nh)
  out["boxes"] = boxes
  if "masks" in example:
    masks = example["masks"]
    out["masks"] = (mt.resize_nearest(np.moveaxis(masks, 0, -1), (nh, nw)).transpose(2, 0, 1)
                    if len(masks) else np.zeros((0, nh, nw), bool))
  out["scale_factor"] = np.array([h_scale, w_scale], np.float32)
  return out


def keep_ratio_resize(example: dict[str, Any], scale: Sequence[int],
                      canvas: Optional[tuple[int, int]] = None) -> dict[str, Any]:
  """mmdet ``Resize(img_scale=scale, keep_ratio=True)``; with ``canvas``, an image that would
  not fit is resized to the largest keep-ratio size that does."""
  h, w = example["image"].shape[:2]
  nh, nw = mt.keep_ratio_rescale_size((h, w), scale)
  if canvas is not None and (nh > canvas[0] or nw > canvas[1]):
    factor = min(canvas[0] / h, canvas[1] / w)
    nh, nw = min(int(h * factor + 0.5), canvas[0]), min(int(w * factor + 0.5), canvas[1])
  return resize_to(example, (nh, nw))


def crop_size(rng: np.random.Generator, hw: tuple[int, int],
              size_range: Sequence[int]) -> tuple[int, int]:
  """mmdet ``RandomCrop._get_crop_size('absolute_range')``: each side uniform in
  ``[min(side, lo), min(side, hi)]``."""
  lo, hi = size_range
  h, w = hw
  return (int(rng.integers(min(h, lo), min(h, hi) + 1)),
          int(rng.integers(min(w, lo), min(w, hi) + 1)))


def crop(example: dict[str, Any], box: tuple[int, int, int, int]) -> dict[str, Any]:
  """mmdet ``RandomCrop._crop_data`` at ``box = (y0, x0, y1, x1)``: boxes shifted, clipped to
  the crop; those left without area dropped, with their labels, flags and masks."""
  y0, x0, y1, x1 = box
  out = dict(example)
  out["image"] = example["image"][y0:y1, x0:x1]
  ch, cw = out["image"].shape[:2]
  boxes = example["boxes"] - np.array([x0, y0, x0, y0], np.float32)
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, cw)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, ch)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  out["boxes"] = boxes[keep]
  for key in ("labels", "crowd", "area"):
    if key in example:
      out[key] = np.asarray(example[key])[keep]
  if "masks" in example:
    out["masks"] = example["masks"][keep][:, y0:y1, x0:x1]
  return out


def random_crop(example: dict[str, Any], rng: np.random.Generator,
                size_range: Sequence[int] = CROP_SIZE) -> dict[str, Any]:
  """``RandomCrop(crop_type='absolute_range', allow_negative_crop=True)``: size, then offset."""
  h, w = example["image"].shape[:2]
  ch, cw = crop_size(rng, (h, w), size_range)
  oy = int(rng.integers(0, max(h - ch, 0) + 1))
  ox = int(rng.integers(0, max(w - cw, 0) + 1))
  return crop(example, (oy, ox, oy + ch, ox + cw))


def to_canvas(example: dict[str, Any], canvas: tuple[int, int], max_instances: int,
              with_masks: bool) -> dict[str, np.ndarray]:
  """Normalise and pad onto ``canvas``; ground truth padded (or cut) to ``max_instances``.
  ``gt_valid`` is False for padding and for crowd boxes."""
  image = example["image"]
  h, w = image.shape[:2]
  if h > canvas[0] or w > canvas[1]:
    raise ValueError(f"image {h}x{w} does not fit the canvas {canvas}")
  out_image = np.zeros((*canvas, 3), np.float32)
  out_image[:h, :w] = mt.normalize(image)
  g = max_instances
  n = min(len(example["boxes"]), g)
  boxes = np.zeros((g, 4), np.float32)
  labels = np.zeros((g,), np.int32)
  valid = np.zeros((g,), bool)
  boxes[:n] = example["boxes"][:n]
  labels[:n] = example["labels"][:n]
  valid[:n] = ~np.asarray(example.get("crowd", np.zeros(n, bool)), bool)[:n]
  out = {"image": out_image, "image_hw": np.array([h, w], np.int32), "gt_boxes": boxes,
         "gt_labels": labels, "gt_valid": valid}
  if with_masks:
    masks = np.zeros((g, *canvas), bool)
    masks[:n, :h, :w] = example["masks"][:n]
    out["gt_masks"] = masks
  return out


def drop_crowd(example: dict[str, Any]) -> dict[str, Any]:
  """The example without its crowd instances (boxes, labels, areas and masks)."""
  crowd = np.asarray(example.get("crowd", np.zeros(len(example["boxes"]), bool)), bool)
  if not crowd.any():
    return example
  return {**example, **{k: np.asarray(example[k])[~crowd]
                        for k in ("boxes", "labels", "crowd", "area", "masks") if k in example}}


# --------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class TrainGeometry:
  """One example's train draws, which depend on its source size alone (``plan``):
  ``flip``; the crop branch's first resize ``crop_hw`` and its crop ``crop_box = (y0, x0,
  y1, x1)`` (both None off the branch); the Resize target ``scale`` and the size it gives,
  ``out_hw`` (before any shrink to a canvas)."""
  flip: bool
  crop_hw: Optional[tuple[int, int]]
  crop_box: Optional[tuple[int, int, int, int]]
  scale: tuple[int, int]
  out_hw: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class DetectionTrainTransform:
  """``(example, rng) -> train example`` (the module docstring's steps). ``reader`` maps a
  dataset example to the canonical one; ``with_masks`` adds ``gt_masks``.

  The call is ``apply(example, plan(size, rng))``: every draw depends only on the source
  size, so a planner that knows the sizes can see each example's output size (and choose
  its canvas, ``detection_buckets``) before reading any pixels."""
  canvas: tuple[int, int]
  reader: Reader
  scales: tuple[tuple[int, int], ...] = MSTRAIN_SCALES
  flip_prob: float = 0.5
  crop_prob: float = 0.0
  crop_scales: tuple[tuple[int, int], ...] = CROP_SCALES
  crop_size: tuple[int, int] = CROP_SIZE
  max_instances: int = 100
  with_masks: bool = True

  def __post_init__(self):
    if any(s % SIZE_DIVISOR for s in self.canvas):
      raise ValueError(f"canvas {self.canvas} must be multiples of {SIZE_DIVISOR}")
    if not self.scales:
      raise ValueError("scales must name at least one (long, short) resize target")

  def plan(self, size: tuple[int, int], rng: np.random.Generator) -> TrainGeometry:
    """The draws for a source image of ``size = (H, W)``, in the order ``__call__`` has
    always made them (flip, crop branch, crop scale, crop size, crop offset, scale)."""
    flip = bool(rng.random() < self.flip_prob)
    hw = tuple(int(s) for s in size)
    crop_hw = crop_box = None
    if self.crop_prob > 0 and rng.random() < self.crop_prob:
      crop_hw = mt.keep_ratio_rescale_size(hw, self.crop_scales[
          int(rng.integers(len(self.crop_scales)))])
      ch, cw = crop_size(rng, crop_hw, self.crop_size)
      oy = int(rng.integers(0, max(crop_hw[0] - ch, 0) + 1))
      ox = int(rng.integers(0, max(crop_hw[1] - cw, 0) + 1))
      crop_box = (oy, ox, oy + ch, ox + cw)
      hw = (ch, cw)
    scale = tuple(self.scales[int(rng.integers(len(self.scales)))])
    return TrainGeometry(flip, crop_hw, crop_box, scale, mt.keep_ratio_rescale_size(hw, scale))

  def read(self, example: dict[str, Any]) -> dict[str, Any]:
    """A dataset example -> canonical, crowd instances dropped."""
    example = drop_crowd(self.reader(example))
    if self.with_masks and "masks" not in example:
      raise ValueError("this detector trains masks but the example has none (TFDS coco has "
                       "no instance masks: set task.train_annotations to the COCO JSON)")
    return example

  def place(self, example: dict[str, Any], geometry: TrainGeometry,
            canvas: Optional[tuple[int, int]] = None) -> dict[str, np.ndarray]:
    """``geometry`` on a canonical example (``read``), padded onto ``canvas`` (default
    ``self.canvas``; an output larger than it is shrunk to fit)."""
    canvas = tuple(canvas or self.canvas)
    if geometry.flip:
      example = hflip(example)
    if geometry.crop_box is not None:
      example = crop(resize_to(example, geometry.crop_hw), geometry.crop_box)
    example = keep_ratio_resize(example, geometry.scale, canvas)
    return to_canvas(example, canvas, self.max_instances, self.with_masks)

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    example = self.read(example)
    return self.place(example, self.plan(example["image"].shape[:2], rng))


@dataclasses.dataclass(frozen=True)
class DetectionEvalTransform:
  """``example -> eval example``: ``image``, ``image_hw``, ``scale_factor`` float32 ``(2,)``
  ``(h_scale, w_scale)``, ``orig_hw`` int32 ``(2,)``, ``image_id`` int32, and the source
  ground truth ``gt_boxes (G, 4)`` (source pixels), ``gt_labels``, ``gt_valid`` (every real
  instance), ``gt_crowd``, ``gt_area``."""
  canvas: tuple[int, int]
  reader: Reader
  scale: tuple[int, int] = TEST_SCALE
  max_instances: int = 100

  def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
    source = self.reader(example)
    source.pop("masks", None)   # scored from the annotation JSON, never batched
    h, w = source["image"].shape[:2]
    resized = keep_ratio_resize(source, self.scale, self.canvas)
    out = to_canvas(resized, self.canvas, self.max_instances, with_masks=False)
    g, n = self.max_instances, min(len(source["boxes"]), self.max_instances)
    crowd = np.zeros((g,), bool)
    area = np.zeros((g,), np.float32)
    crowd[:n] = np.asarray(source.get("crowd", np.zeros(n, bool)), bool)[:n]
    area[:n] = np.asarray(source["area"], np.float32)[:n]
    out["gt_boxes"][:] = 0
    out["gt_boxes"][:n] = source["boxes"][:n]
    out["gt_valid"][:] = np.arange(g) < n
    out.update(scale_factor=resized["scale_factor"], orig_hw=np.array([h, w], np.int32),
               image_id=np.int32(source["image_id"]), gt_crowd=crowd, gt_area=area)
    return out


# ------------------------------------------------------------------------------ readers


def read_digit_scene(example: dict[str, Any]) -> dict[str, Any]:
  """A ``digit_scenes`` example -> canonical: classes are the labels, mask areas the areas
  (as in its COCO JSON)."""
  masks = np.asarray(example["instance_masks"], bool)
  return {"image": np.asarray(example["image"], np.uint8),
          "boxes": np.asarray(example["boxes"], np.float32).reshape(-1, 4),
          "labels": np.asarray(example["classes"]).astype(np.int32),
          "crowd": np.zeros(len(masks), bool),
          "area": masks.reshape(len(masks), -1).sum(-1).astype(np.float32),
          "image_id": int(np.asarray(example["image_id"])),
          "masks": masks}
