"""Mask R-CNN and Faster R-CNN on a Swin backbone (Swin-Transformer-Object-Detection's
``mask_rcnn_swin_fpn.py``), inference with static shapes.

    model = swin_jax.create_model("mask_rcnn_swin_tiny_patch4_window7_fpn")
    variables = model.init(rng, images)          # images (B, H, W, 3), H, W multiples of 32
    dets = model.apply(variables, images)        # boxes (B, 100, 4), scores (B, 100),
                                                 # classes (B, 100), num_detections (B,),
                                                 # masks (B, 100, 28, 28) (Mask R-CNN)
    dets = model.apply(variables, images, image_hw)   # (B, 2) unpadded sizes to clip to

Params, named as the official checkpoint's keys (``swin_jax.convert.detection``):
``backbone/...`` (the dense-mode Swin with the stage norms ``norm0..3``), ``neck/...``
(``FPN``, P2..P6), ``rpn_head/...``, ``roi_head/bbox_head/...`` (``Shared2FCBBoxHead``) and,
for Mask R-CNN, ``roi_head/mask_head/...`` (``FCNMaskHead``). ``init`` runs the test path,
which uses every head, so it creates them all.

The test path: backbone -> FPN -> RPN -> ``proposals.propose`` (1000 per image) ->
RoIAlign 7x7 of each proposal from its level -> bbox head -> ``postprocess.detect`` (100
per image) -> RoIAlign 14x14 of the detections -> mask head -> the mask of the detected
class, sigmoid. Masks stay 28x28; ``postprocess.paste_masks`` pastes them into the image on
the host.

For training code (losses and targets live elsewhere), the pieces are methods that take
what the previous one returned, so one loss function can chain them under one ``apply``
each (or call them from a method of its own):

    feats = model.apply(v, images, train=True, method="features", rngs=...)   # P2..P6
    cls, reg = model.apply(v, feats, method="rpn_outputs")    # per level (B,H,W,A), (B,H,W,4A)
    anchors = model.anchors(feats)                            # per level (H*W*A, 4) numpy
    boxes, scores, valid = model.apply(v, feats, image_hw, True, method="proposals")
    cls_score, bbox_pred = model.apply(v, feats, rois, method="roi_outputs")  # rois (B,R,4)
    mask_logits = model.apply(v, feats, rois, classes, method="mask_outputs") # (B,R,28,28)

Images enter padded to a multiple of 32 (mmdet's ``pad_size_divisor=32``); ``image_hw``
gives the size each image had before padding (mmdet's ``img_shape``), which proposals and
detections are clipped to; without it, the padded size.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from swin_jax.models.detection import anchors as anchors_lib
from swin_jax.models.detection import postprocess
from swin_jax.models.detection import proposals as proposals_lib
from swin_jax.models.detection import roi_align
from swin_jax.models.detection.bbox_head import Shared2FCBBoxHead
from swin_jax.models.detection.fpn import FPN
from swin_jax.models.detection.mask_head import FCNMaskHead
from swin_jax.models.detection.rpn_head import RPNHead
from swin_jax.models.swin import SwinTransformer

Dtype = Any

SIZE_DIVISOR = 32
BBOX_ROI_SIZE = 7
MASK_ROI_SIZE = 14


class RoIHead(nn.Module):
  """mmdet's ``StandardRoIHead`` params: ``bbox_head`` and (optionally) ``mask_head``."""
  num_classes: int = 80
  fc_channels: int = 1024
  mask_channels: int = 256
  with_mask: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    self.bbox_head = Shared2FCBBoxHead(self.num_classes, self.fc_channels, dtype=self.dtype)
    if self.with_mask:
      self.mask_head = FCNMaskHead(self.num_classes, conv_out_channels=self.mask_channels,
                                   dtype=self.dtype)

  def bbox(self, roi_feats: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(R, 7, 7, C) -> ((R, K + 1), (R, 4K))``."""
    return self.bbox_head(roi_feats)

  def mask(self, roi_feats: jnp.ndarray) -> jnp.ndarray:
    """``(R, 14, 14, C) -> (R, 28, 28, K)`` logits."""
    return self.mask_head(roi_feats)


class MaskRCNN(nn.Module):
  """Swin + FPN + RPN + RoI heads (see the module docstring).

  ``backbone``: a ``SwinTransformer`` with ``feature_norm=True`` (and, for official
  checkpoints, ``dense_mode=True``). Widths: ``neck_channels`` (FPN, 256),
  ``rpn_channels`` (the RPN conv, 256), ``fc_channels`` (the two shared fcs, 1024),
  ``mask_channels`` (the mask convs, 256). The rest is the official train / test cfg.
  """
  backbone: SwinTransformer
  num_classes: int = 80
  with_mask: bool = True
  neck_channels: int = 256
  rpn_channels: int = 256
  fc_channels: int = 1024
  mask_channels: int = 256
  # RoIAlign's samples per bin: fixed, where mmdet's 0 ("adaptive") has no static shape.
  roi_sampling_ratio: int = roi_align.SAMPLING_RATIO
  # RPN proposals: train cfg ``rpn_proposal`` and test cfg ``rpn``.
  rpn_train_nms_pre: int = proposals_lib.TRAIN_NMS_PRE
  rpn_test_nms_pre: int = proposals_lib.TEST_NMS_PRE
  rpn_max_per_img: int = proposals_lib.MAX_PER_IMG
  rpn_iou_threshold: float = proposals_lib.IOU_THRESHOLD
  rpn_min_bbox_size: float = proposals_lib.MIN_BBOX_SIZE
  # Test cfg ``rcnn``; ``pre_nms_top_k`` bounds the NMS input (postprocess.py).
  score_threshold: float = postprocess.SCORE_THRESHOLD
  nms_iou_threshold: float = postprocess.IOU_THRESHOLD
  max_detections: int = postprocess.MAX_DETECTIONS
  pre_nms_top_k: int = postprocess.PRE_NMS_TOP_K
  dtype: Dtype = jnp.float32

  def setup(self):
    self.neck = FPN(self.neck_channels, len(anchors_lib.STRIDES), self.dtype)
    self.rpn_head = RPNHead(self.rpn_channels, anchors_lib.num_base_anchors(), self.dtype)
    self.roi_head = RoIHead(self.num_classes, self.fc_channels, self.mask_channels,
                            self.with_mask, self.dtype)

  # -- pieces ------------------------------------------------------------------------------

  def features(self, images: jnp.ndarray, train: bool = False) -> list[jnp.ndarray]:
    """``(B, H, W, 3)`` -> the FPN levels P2..P6 ``[(B, H/4, W/4, C), ..., (B, H/64, W/64,
    C)]`` (strides 4..64)."""
    h, w = images.shape[1:3]
    if h % SIZE_DIVISOR or w % SIZE_DIVISOR:
      raise ValueError(f"image size {h}x{w} is not a multiple of {SIZE_DIVISOR}; pad the "
                       f"batch to a multiple of {SIZE_DIVISOR} (mmdet's pad_size_divisor) and "
                       "pass the unpadded sizes as image_hw")
    return self.neck(self.backbone.features(images, train))

  def rpn_outputs(self, feats: Sequence[jnp.ndarray]
                  ) -> tuple[list[jnp.ndarray], list[jnp.ndarray]]:
    """Per level ``(B, H_l, W_l, A)`` objectness logits and ``(B, H_l, W_l, 4A)`` deltas."""
    return self.rpn_head(feats)

  @staticmethod
  def anchors(feats: Sequence[Any]) -> list[np.ndarray]:
    """Per level ``(H_l * W_l * A, 4)`` anchors (numpy constants) of the FPN levels."""
    return anchors_lib.multilevel_anchors([tuple(f.shape[1:3]) for f in feats])

  def proposals(self, feats: Sequence[jnp.ndarray], image_hw: Optional[jnp.ndarray] = None,
                train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``(boxes (B, P, 4), scores (B, P), valid (B, P))``, ``P = rpn_max_per_img``; train
    keeps ``rpn_train_nms_pre`` boxes per level before NMS, test ``rpn_test_nms_pre``."""
    cls_logits, deltas = self.rpn_outputs(feats)
    return proposals_lib.propose(
        cls_logits, deltas, self.anchors(feats), self._clip_size(feats, image_hw),
        self.rpn_train_nms_pre if train else self.rpn_test_nms_pre, self.rpn_max_per_img,
        self.rpn_iou_threshold, self.rpn_min_bbox_size)

  def roi_features(self, feats: Sequence[jnp.ndarray], rois: jnp.ndarray,
                   size: int) -> jnp.ndarray:
    """``rois (B, R, 4)`` -> ``(B * R, size, size, C)`` from P2..P5 (mmdet's
    ``SingleRoIExtractor``, finest_scale 56)."""
    bsz, r = rois.shape[:2]
    batch_idx = jnp.repeat(jnp.arange(bsz, dtype=jnp.int32), r)
    levels = list(feats[:len(roi_align.FEATMAP_STRIDES)])
    return roi_align.multilevel_roi_align(levels, rois.reshape(bsz * r, 4), batch_idx, size,
                                          roi_align.FEATMAP_STRIDES, self.roi_sampling_ratio)

  def roi_outputs(self, feats: Sequence[jnp.ndarray], rois: jnp.ndarray
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``rois (B, R, 4)`` -> ``cls_score (B, R, K + 1)`` (background last), ``bbox_pred (B,
    R, 4K)``."""
    bsz, r = rois.shape[:2]
    cls_score, bbox_pred = self.roi_head.bbox(self.roi_features(feats, rois, BBOX_ROI_SIZE))
    return cls_score.reshape(bsz, r, -1), bbox_pred.reshape(bsz, r, -1)

  def mask_outputs(self, feats: Sequence[jnp.ndarray], rois: jnp.ndarray,
                   classes: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """``rois (B, R, 4)`` -> mask logits ``(B, R, 28, 28, K)``, or with ``classes (B, R)``
    the logits of each RoI's class, ``(B, R, 28, 28)`` (classes < 0 read class 0)."""
    if not self.with_mask:
      raise ValueError("this detector has no mask head (with_mask=False)")
    bsz, r = rois.shape[:2]
    logits = self.roi_head.mask(self.roi_features(feats, rois, MASK_ROI_SIZE))
    logits = logits.reshape(bsz, r, *logits.shape[1:])
    if classes is None:
      return logits
    channel = jnp.clip(classes, 0, self.num_classes - 1)[:, :, None, None, None]
    return jnp.take_along_axis(logits, channel, axis=-1)[..., 0]

  # -- the test path -----------------------------------------------------------------------

  def __call__(self, images: jnp.ndarray, image_hw: Optional[jnp.ndarray] = None,
               train: bool = False) -> dict[str, jnp.ndarray]:
    """``images (B, H, W, 3)`` -> detections (see the module docstring); ``image_hw (B, 2)``
    the unpadded sizes (default: ``(H, W)``)."""
    feats = self.features(images, train)
    rois, _, rois_valid = self.proposals(feats, image_hw, train)
    cls_score, bbox_pred = self.roi_outputs(feats, rois)
    dets = postprocess.detect(rois, rois_valid, cls_score, bbox_pred,
                              self._clip_size(feats, image_hw), self.score_threshold,
                              self.nms_iou_threshold, self.max_detections, self.pre_nms_top_k)
    if self.with_mask:
      dets["masks"] = postprocess.select_masks(self.mask_outputs(feats, dets["boxes"]),
                                               dets["classes"])
    return dets

  @staticmethod
  def _clip_size(feats: Sequence[Any], image_hw: Optional[jnp.ndarray]) -> Any:
    """What boxes are clipped to: ``image_hw (B, 2)`` or the padded canvas ``(H, W)``."""
    if image_hw is not None:
      return jnp.asarray(image_hw, jnp.float32)
    h, w = feats[0].shape[1:3]
    stride = anchors_lib.STRIDES[0]
    return (h * stride, w * stride)


class FasterRCNN(MaskRCNN):
  """``MaskRCNN`` without the mask head: detections without ``masks``."""
  with_mask: bool = False
