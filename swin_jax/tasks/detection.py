"""Object detection and instance segmentation (Mask R-CNN / Faster R-CNN on Swin + FPN).

Train batches, on a static canvas ``(Hc, Wc)`` (multiples of 32): ``task.canvas``, or with
``task.train_buckets`` each batch on one of those canvases, the smallest that holds its
images (``swin_jax.data.detection_buckets``: the same images and draws as the one-canvas
stream, grouped by output size; the step compiles once per canvas, ``train compiles: N``):

    image      float32 (B, Hc, Wc, 3)   ImageNet-normalised, zero-padded bottom/right
    image_hw   int32   (B, 2)           the resized image's size inside the canvas
    gt_boxes   float32 (B, G, 4)        x1 y1 x2 y2, canvas pixels; G = task.max_instances
    gt_labels  int32   (B, G)           0..K-1
    gt_valid   bool    (B, G)           real, non-crowd instances
    gt_masks   bool    (B, G, Hc, Wc)   Mask R-CNN only

``loss_fn`` is mmdet's two-stage loss (``TwoStageDetector.forward_train``, all loss weights
1): backbone + FPN -> RPN objectness and deltas -> per-image RPN targets (MaxIoU 0.7 / 0.3,
256 samples at half positive; anchors of cells outside the image's 32-padded size are
invalid) -> ``loss_rpn_cls`` (BCE) + ``loss_rpn_bbox`` (L1); proposals (train: 2000 per
level, NMS 0.7, 1000), detached -> per-image RCNN targets (gt added as proposals, MaxIoU
0.5, 512 samples at a quarter positive) -> RoIAlign 7x7 -> ``loss_cls`` (CE) + ``loss_bbox``
(L1 on the class's deltas); the mask head on the positive slots (RoIAlign 14x14) ->
``loss_mask`` (per-class BCE on 28x28 targets cropped from the gt masks at the image's padded
size, mmdet 2.11). Each image draws its samples from its own key. Metrics: every loss term
and ``rcnn_acc`` (the RoI classifier's accuracy on the sampled RoIs, mmdet's ``acc``).

Evaluation: the model's test path (100 padded detections, 28x28 masks) on the eval canvas;
on the host the detections are divided by the resize scale (mmdet's ``rescale=True``),
masks pasted at the source size (``postprocess.paste_masks``) and RLE-encoded, and
pycocotools' COCOeval scores the whole eval set: ``eval/box_ap``, ``box_ap50``, ``box_ap75``,
``box_ap_s/m/l`` and the same for ``mask_``. The ground truth is a COCO JSON
(``task.eval_annotations``; the digit scenes' own with ``'auto'``) or, without one, built
from the eval examples' boxes (box AP only: ``'{data_dir}'`` in a path is the dataset's
data dir).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax.data import coco as coco_lib
from swin_jax.data import detection_buckets
from swin_jax.data import detection_transforms as dt
from swin_jax.data import digit_scenes
from swin_jax.models.detection import anchors as anchors_lib
from swin_jax.models.detection import assigner as assigner_lib
from swin_jax.models.detection import losses as losses_lib
from swin_jax.models.detection import postprocess
from swin_jax.models.detection import proposals as proposals_lib
from swin_jax.models.detection import targets as targets_lib
from swin_jax.models.detection.sampler import RCNN_SAMPLER, RPN_SAMPLER, SamplerConfig
from swin_jax.tasks import base

ConfigDict = ml_collections.ConfigDict

READERS = ("auto", "digit_scenes", "coco")
LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")
COCO_STATS = ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l")


def split_keys(rng: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(dropout key, RPN sampler keys (B,), RCNN sampler keys (B,))`` of a step's key."""
  dropout, rpn, rcnn = jax.random.split(rng, 3)
  return dropout, jax.random.split(rpn, batch_size), jax.random.split(rcnn, batch_size)


def padded_hw(image_hw: jnp.ndarray) -> jnp.ndarray:
  """mmdet's ``pad_shape``: ``(B, 2)`` sizes rounded up to 32 (anchor and mask validity)."""
  d = dt.SIZE_DIVISOR
  return (jnp.asarray(image_hw, jnp.int32) + d - 1) // d * d


def rpn_losses(module, feats, image_hw, gt_boxes, gt_valid, rpn_keys, *,
               sampler: SamplerConfig = RPN_SAMPLER):
  """The RPN's outputs and losses on FPN levels ``feats``: ``((loss_rpn_cls, loss_rpn_bbox),
  cls_logits, deltas)`` (per-level lists, as ``rpn_outputs``). Anchors of cells outside an
  image's 32-padded size are invalid. Call inside a bound ``MaskRCNN``."""
  cls_logits, deltas = module.rpn_outputs(feats)
  all_anchors = jnp.asarray(np.concatenate(module.anchors(feats)))
  pad = padded_hw(image_hw)
  sizes = [tuple(f.shape[1:3]) for f in feats]
  anchor_valid = jax.vmap(lambda p: assigner_lib.anchor_valid_flags(
      sizes, p, anchors_lib.STRIDES, anchors_lib.num_base_anchors()))(pad)
  rpn = jax.vmap(functools.partial(targets_lib.rpn_targets, sampler=sampler),
                 in_axes=(0, None, 0, 0, 0))(rpn_keys, all_anchors, anchor_valid, gt_boxes,
                                             gt_valid)
  return losses_lib.rpn_loss(cls_logits, deltas, rpn), cls_logits, deltas


def train_proposals(module, feats, cls_logits, deltas, image_hw):
  """``(rois (B, P, 4), rois_valid (B, P))`` of the train cfg (``rpn_proposal``) from
  detached scores and deltas, as mmdet 2.11 proposes (``AnchorHead.get_bboxes``)."""
  rois, _, rois_valid = proposals_lib.propose(
      jax.lax.stop_gradient(cls_logits), jax.lax.stop_gradient(deltas), module.anchors(feats),
      jnp.asarray(image_hw, jnp.float32), module.rpn_train_nms_pre, module.rpn_max_per_img,
      module.rpn_iou_threshold, module.rpn_min_bbox_size)
  return rois, rois_valid


def sampled_roi_outputs(module, feats, rcnn_keys, rois, rois_valid, gt_boxes, gt_valid,
                        gt_labels, *, sampler: SamplerConfig = RCNN_SAMPLER):
  """Per-image R-CNN targets (``targets.rcnn_targets``, one key per image) and the bbox
  head on their RoIs: ``(targets, cls_score (B, S, K + 1), bbox_pred (B, S, 4K))``."""
  rcnn = jax.vmap(functools.partial(targets_lib.rcnn_targets, num_classes=module.num_classes,
                                    sampler=sampler))(
                                        rcnn_keys, rois, rois_valid, gt_boxes, gt_valid,
                                        gt_labels)
  cls_score, bbox_pred = module.roi_outputs(feats, rcnn.rois)
  return rcnn, cls_score, bbox_pred


def detector_losses(module, images, image_hw, gt_boxes, gt_labels, gt_valid, gt_masks,
                    rpn_keys, rcnn_keys, *, rpn_sampler: SamplerConfig = RPN_SAMPLER,
                    rcnn_sampler: SamplerConfig = RCNN_SAMPLER, train: bool = True
                    ) -> dict[str, jnp.ndarray]:
  """The loss terms of a batch; call through ``model.apply(..., method=detector_losses)``
  (``module`` is the bound ``MaskRCNN``). Shapes as the module docstring's batch;
  ``gt_masks`` is ignored (may be None) for a detector without a mask head."""
  feats = module.features(images, train)
  (loss_rpn_cls, loss_rpn_bbox), cls_logits, deltas = rpn_losses(
      module, feats, image_hw, gt_boxes, gt_valid, rpn_keys, sampler=rpn_sampler)
  rois, rois_valid = train_proposals(module, feats, cls_logits, deltas, image_hw)
  rcnn, cls_score, bbox_pred = sampled_roi_outputs(
      module, feats, rcnn_keys, rois, rois_valid, gt_boxes, gt_valid, gt_labels,
      sampler=rcnn_sampler)
  loss_cls, loss_bbox = losses_lib.rcnn_loss(cls_score, bbox_pred, rcnn)
  sampled = rcnn.label_weights > 0
  hits = (jnp.argmax(cls_score, axis=-1) == rcnn.labels) & sampled
  out = {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox, "loss_cls": loss_cls,
         "loss_bbox": loss_bbox,
         "rcnn_acc": jnp.sum(hits) / jnp.maximum(jnp.sum(sampled), 1)}
  if module.with_mask:
    p = rcnn_sampler.max_pos   # positives sit in slots [0, p)
    pos_rois, pos_labels = rcnn.rois[:, :p], rcnn.labels[:, :p]
    is_pos = rcnn.is_pos[:, :p]
    mask_logits = module.mask_outputs(feats, pos_rois, pos_labels)
    mask_t = jax.vmap(lambda r, i, v, m, hw: targets_lib.mask_targets(r, i, v, m, mask_hw=hw))(
        pos_rois, rcnn.pos_gt_inds[:, :p], is_pos, gt_masks, padded_hw(image_hw))
    out["loss_mask"] = losses_lib.mask_loss(mask_logits, mask_t, pos_labels, is_pos)
  return out


def create_heads(module, images):
  """Runs every head once on ``images`` (one dummy RoI per image), so ``init`` creates all
  params without tracing the proposals, NMS and post-processing of the test path."""
  feats = module.features(images, False)
  module.rpn_outputs(feats)
  rois = jnp.tile(jnp.asarray([[[0.0, 0.0, 32.0, 32.0]]], jnp.float32), (images.shape[0], 1, 1))
  module.roi_outputs(feats, rois)
  if module.with_mask:
    module.mask_outputs(feats, rois)


class DetectionTask(base.Task):
  """Two-stage detection (Mask R-CNN, Faster R-CNN) on COCO-style datasets."""
  name = "detection"

  @classmethod
  def section_defaults(cls) -> ConfigDict:
    return ConfigDict(dict(
        reader="auto",                 # 'auto' (by dataset name) | 'digit_scenes' | 'coco'
        max_instances=100,             # G: ground truth padded (or cut) to this many
        canvas=(0, 0),                 # static (H, W) of every batch; (0, 0): a square that
                                       # holds every train and test scale
        train_buckets=(),              # train canvases ((h, w), ...): each batch on one, one
                                       # compile each (detection_buckets); (): task.canvas
        train_scales=(dt.TEST_SCALE,),   # Resize targets (long, short), one drawn per image
        flip_prob=0.5,                 # RandomFlip, horizontal
        crop_prob=0.0,                 # AutoAugment's resize-crop-resize policy (recipe: 0.5)
        crop_scales=dt.CROP_SCALES,    # its first resize
        crop_size=dt.CROP_SIZE,        # RandomCrop absolute_range (lo, hi)
        test_scale=dt.TEST_SCALE,      # eval Resize target (long, short)
        rpn_samples=RPN_SAMPLER.num,   # RandomSampler sizes and positive fractions
        rpn_pos_fraction=RPN_SAMPLER.pos_fraction,
        rcnn_samples=RCNN_SAMPLER.num,
        rcnn_pos_fraction=RCNN_SAMPLER.pos_fraction,
        category_ids=(),               # COCO category id of each class; (): COCO's 80 ids
                                       # for the coco reader, 1 + class otherwise
        train_annotations="",          # COCO JSON with the masks TFDS coco lacks
        eval_annotations="auto",       # COCO JSON of the eval split; 'auto': the digit
                                       # scenes' own, else '' (built from the eval boxes)
    ))

  # --- configuration ---

  def _reader_kind(self) -> str:
    kind = self.config.task.reader
    if kind not in READERS:
      raise ValueError(f"task.reader {kind!r} is not one of {READERS}")
    if kind != "auto":
      return kind
    name = self.config.dataset.name
    if digit_scenes.is_digit_scenes(name):
      return "digit_scenes"
    if coco_lib.is_coco(name):
      return "coco"
    raise ValueError(f"task.reader='auto' knows digit_scenes and coco datasets, not {name!r}; "
                     f"set task.reader to one of {READERS[1:]}")

  def _data_dir(self) -> str:
    from swin_jax.data import sources  # pylint: disable=import-outside-toplevel  (TFDS)
    return sources.resolve_data_dir(self.config.dataset.get("data_dir", ""))

  def _reader(self, train: bool):
    if self._reader_kind() == "digit_scenes":
      return dt.read_digit_scene
    path = self.config.task.train_annotations
    masks = None
    if train and self.with_masks and path:
      masks = coco_lib.AnnotationMasks(coco_lib.resolve_path(path, self._data_dir()))
    return functools.partial(coco_lib.read_coco_example, masks=masks)

  @functools.cached_property
  def with_masks(self) -> bool:
    return bool(self.build_model().with_mask)

  def canvas(self) -> tuple[int, int]:
    task = self.config.task
    canvas = tuple(int(s) for s in task.canvas)
    if canvas == (0, 0):
      canvas = dt.canvas_for_scales(tuple(task.train_scales) + (tuple(task.test_scale),))
    if len(canvas) != 2 or any(s <= 0 or s % dt.SIZE_DIVISOR for s in canvas):
      raise ValueError(f"task.canvas {tuple(task.canvas)} must be two positive multiples of "
                       f"{dt.SIZE_DIVISOR} (or (0, 0))")
    return canvas

  def train_buckets(self) -> tuple[tuple[int, int], ...]:
    """``task.train_buckets`` validated against the train scales (``()``: one canvas)."""
    task = self.config.task
    return detection_buckets.parse_buckets(task.train_buckets, tuple(task.train_scales))

  def category_ids(self) -> tuple[int, ...]:
    ids = tuple(int(c) for c in self.config.task.category_ids)
    k = int(self.config.dataset.num_classes)
    if not ids:
      ids = coco_lib.COCO_CATEGORY_IDS if self._reader_kind() == "coco" else \
          tuple(range(1, k + 1))
    if len(ids) != k:
      raise ValueError(f"{len(ids)} category ids for dataset.num_classes={k}; set "
                       "task.category_ids")
    return ids

  def samplers(self) -> tuple[SamplerConfig, SamplerConfig]:
    task = self.config.task
    return (SamplerConfig(int(task.rpn_samples), float(task.rpn_pos_fraction)),
            SamplerConfig(int(task.rcnn_samples), float(task.rcnn_pos_fraction),
                          add_gt_as_proposals=True))

  # --- model and data ---

  def build_model(self):
    return base.create_model_for_classes(self.config, int(self.config.dataset.num_classes))

  def init_variables(self, model, rng):
    """``model.init`` through ``create_heads``: the same params as the test path creates,
    at a fraction of its compile time."""
    image = self.batch_spec(1)["image"]
    return model.init(rng, jnp.zeros(image.shape, image.dtype), method=create_heads)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes on ``canvas()`` (with ``task.train_buckets`` a train batch is on one of those
    canvases instead; only the spatial sizes differ)."""
    if (self.config.task.train_buckets and
        type(self).train_iterator is not DetectionTask.train_iterator):
      raise ValueError(f"task.train_buckets is not supported by the {self.name} task (it "
                       "builds its own train stream on task.canvas); set it to ()")
    h, w = self.canvas()
    g = int(self.config.task.max_instances)
    spec = {"image": jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.float32),
            "image_hw": jax.ShapeDtypeStruct((batch_size, 2), jnp.int32),
            "gt_boxes": jax.ShapeDtypeStruct((batch_size, g, 4), jnp.float32),
            "gt_labels": jax.ShapeDtypeStruct((batch_size, g), jnp.int32),
            "gt_valid": jax.ShapeDtypeStruct((batch_size, g), jnp.bool_)}
    if self.with_masks:
      spec["gt_masks"] = jax.ShapeDtypeStruct((batch_size, g, h, w), jnp.bool_)
    return spec

  def eval_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of an eval batch (``DetectionEvalTransform``'s keys; plus ``mask``)."""
    spec = {k: v for k, v in self.batch_spec(batch_size).items() if k != "gt_masks"}
    g = int(self.config.task.max_instances)
    spec.update(scale_factor=jax.ShapeDtypeStruct((batch_size, 2), jnp.float32),
                orig_hw=jax.ShapeDtypeStruct((batch_size, 2), jnp.int32),
                image_id=jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                gt_crowd=jax.ShapeDtypeStruct((batch_size, g), jnp.bool_),
                gt_area=jax.ShapeDtypeStruct((batch_size, g), jnp.float32))
    return spec

  def train_transform(self):
    task = self.config.task
    return dt.DetectionTrainTransform(
        canvas=self.canvas(), reader=self._reader(train=True),
        scales=tuple(tuple(s) for s in task.train_scales), flip_prob=float(task.flip_prob),
        crop_prob=float(task.crop_prob), crop_scales=tuple(tuple(s) for s in task.crop_scales),
        crop_size=tuple(task.crop_size), max_instances=int(task.max_instances),
        with_masks=self.with_masks)

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    """With ``task.train_buckets``, batches grouped onto those canvases
    (``detection_buckets.BucketedTrainIterator``: the one-canvas stream of images and draws,
    regrouped); otherwise the one train pipeline on ``task.canvas``."""
    buckets = self.train_buckets()
    if not buckets:
      return super().train_iterator(process_index, process_count)
    from swin_jax.data import sources  # pylint: disable=import-outside-toplevel  (TFDS)
    config = self.config
    split = config.dataset.train_split
    transform = self.train_transform()
    sizes = detection_buckets.train_image_sizes(config.dataset, split, self._data_dir())
    if config.dataset.num_workers > 0:
      logging.warning("task.train_buckets reads with %d threads; dataset.num_workers=%d "
                      "worker processes are not used", config.dataset.read_threads,
                      config.dataset.num_workers)
    shares = detection_buckets.bucket_counts(sizes, transform, buckets, config.seed,
                                             min(1000, 10 * len(sizes)))
    shares = shares / shares.sum()
    print("train buckets (share of the first images): " + ", ".join(
        f"{h}x{w} {p:.0%}" for (h, w), p in zip(buckets, shares)), flush=True)
    return detection_buckets.BucketedTrainIterator(
        sources.open_source(config.dataset, split), sizes, transform, buckets,
        config.batch_size, config.seed, process_index, process_count,
        threads=config.dataset.read_threads)

  def eval_transform(self):
    task = self.config.task
    return dt.DetectionEvalTransform(canvas=self.canvas(), reader=self._reader(train=False),
                                     scale=tuple(task.test_scale),
                                     max_instances=int(task.max_instances))

  def eval_padding(self) -> dict[str, np.ndarray]:
    one = {k: np.zeros(x.shape[1:], x.dtype) for k, x in self.eval_spec(1).items()}
    one["scale_factor"][:] = 1.0
    one["image_id"] = np.int32(-1)
    return {**one, "mask": np.float32(0.0)}

  # --- compiled steps ---

  def loss_fn(self, model, params, model_state, batch, rng):
    dropout, rpn_keys, rcnn_keys = split_keys(rng, batch["image"].shape[0])
    rpn_sampler, rcnn_sampler = self.samplers()
    terms = model.apply(
        {"params": params, **model_state}, batch["image"], batch["image_hw"],
        batch["gt_boxes"], batch["gt_labels"], batch["gt_valid"], batch.get("gt_masks"),
        rpn_keys, rcnn_keys, rpn_sampler=rpn_sampler, rcnn_sampler=rcnn_sampler,
        method=detector_losses, rngs={"dropout": dropout})
    loss = sum(terms[name] for name in LOSS_NAMES if name in terms)
    return loss, (terms, model_state)

  def eval_step(self, model, params, model_state, batch):
    dets = model.apply({"params": params, **model_state}, batch["image"], batch["image_hw"])
    passed = ("mask", "image_id", "scale_factor", "orig_hw", "gt_boxes", "gt_labels",
              "gt_valid", "gt_crowd", "gt_area")
    return {**dets, **{k: batch[k] for k in passed}}

  def evaluator(self) -> base.Evaluator:
    return CocoEvaluator(self.category_ids(), self._eval_annotations(), self.with_masks)

  def _eval_annotations(self) -> Optional[str]:
    path = self.config.task.eval_annotations
    if path == "auto":
      name = self.config.dataset.name
      if not digit_scenes.is_digit_scenes(name):
        return None
      split = self.config.dataset.eval_split.split("[")[0]
      path = digit_scenes.coco_annotations_path(self._data_dir(), name, split)
      return path if os.path.exists(path) else None
    if not path:
      return None
    path = coco_lib.resolve_path(path, self._data_dir())
    if not os.path.exists(path):
      raise FileNotFoundError(f"task.eval_annotations {path} not found (the COCO JSON of "
                              "the eval split, e.g. instances_val2017.json); set it to '' to "
                              "score boxes against the eval examples' own ground truth")
    return path


class CocoEvaluator(base.Evaluator):
  """COCO box (and mask) AP over a whole eval set, with pycocotools.

  ``category_ids[k]`` is class ``k``'s COCO id; ``annotations`` a COCO JSON path (None:
  ground truth from the batches' ``gt_*``, box AP only).
  """

  def __init__(self, category_ids: tuple[int, ...], annotations: Optional[str],
               with_masks: bool):
    self.category_ids = np.asarray(category_ids, np.int64)
    self.annotations = annotations
    self.with_masks = with_masks
    self.images: dict[int, tuple[int, int]] = {}
    self.boxes: list[dict[str, Any]] = []
    self.segms: list[dict[str, Any]] = []
    self.gt: list[dict[str, Any]] = []

  def update(self, outputs: dict[str, np.ndarray]) -> None:
    from pycocotools import mask as mask_utils  # pylint: disable=import-outside-toplevel
    for b in np.flatnonzero(np.asarray(outputs["mask"]) > 0):
      image_id = int(outputs["image_id"][b])
      h, w = (int(v) for v in outputs["orig_hw"][b])
      self.images[image_id] = (h, w)
      n = int(outputs["num_detections"][b])
      sy, sx = (float(v) for v in outputs["scale_factor"][b])
      # mmdet rescale=True: detections back to the source image's pixels.
      boxes = np.asarray(outputs["boxes"][b, :n], np.float32) / np.float32(
          [sx, sy, sx, sy])
      scores = np.asarray(outputs["scores"][b, :n], np.float64)
      cats = self.category_ids[np.asarray(outputs["classes"][b, :n])]
      for box, score, cat in zip(boxes.tolist(), scores.tolist(), cats.tolist()):
        self.boxes.append({"image_id": image_id, "category_id": int(cat), "score": score,
                           "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
      if self.with_masks and n:
        masks = postprocess.paste_masks(outputs["masks"][b, :n], boxes, (h, w))
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for rle, score, cat in zip(rles, scores.tolist(), cats.tolist()):
          rle["counts"] = rle["counts"].decode("ascii")
          self.segms.append({"image_id": image_id, "category_id": int(cat), "score": score,
                             "segmentation": rle})
      if self.annotations is None:
        valid = np.asarray(outputs["gt_valid"][b], bool)
        for box, label, crowd, area in zip(outputs["gt_boxes"][b][valid].tolist(),
                                           outputs["gt_labels"][b][valid].tolist(),
                                           outputs["gt_crowd"][b][valid].tolist(),
                                           outputs["gt_area"][b][valid].tolist()):
          self.gt.append({"id": len(self.gt) + 1, "image_id": image_id,
                          "category_id": int(self.category_ids[label]),
                          "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                          "area": float(area), "iscrowd": int(crowd)})

  def _ground_truth(self):
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
    with contextlib.redirect_stdout(io.StringIO()):
      if self.annotations is not None:
        return COCO(self.annotations)
      gt = COCO()
      gt.dataset = {
          "images": [{"id": i, "height": h, "width": w} for i, (h, w) in self.images.items()],
          "annotations": self.gt,
          "categories": [{"id": int(c)} for c in self.category_ids]}
      gt.createIndex()
      return gt

  def result(self) -> dict[str, float]:
    from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
    gt = self._ground_truth()
    kinds = [("box", "bbox", self.boxes)]
    if self.with_masks:
      if self.annotations is None:
        logging.warning("no COCO annotation JSON for the eval split: mask AP not computed")
      else:
        kinds.append(("mask", "segm", self.segms))
    out = {}
    for prefix, iou_type, results in kinds:
      stats = np.zeros(len(COCO_STATS))
      if results and self.images:
        with contextlib.redirect_stdout(io.StringIO()):
          dets = gt.loadRes(results)
          coco_eval = COCOeval(gt, dets, iou_type)
          coco_eval.params.imgIds = sorted(self.images)
          coco_eval.evaluate()
          coco_eval.accumulate()
          coco_eval.summarize()
        stats = coco_eval.stats[:len(COCO_STATS)]
      for name, value in zip(COCO_STATS, stats):
        if value >= 0:   # -1: no ground truth in that area range
          out[f"eval/{prefix}_{name}"] = float(value)
    return out
