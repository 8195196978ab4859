"""Soft Teacher's two passes over the unlabelled images, as methods of a bound detector.

    pseudo, teacher_feats = model.apply({'params': teacher}, weak_images, weak_hw, key,
                                        method=teacher_pseudo_labels)
    terms, cls_score, cls_targets = model.apply(
        {'params': student}, strong_images, strong_hw, pseudo_boxes, pseudo_labels,
        rpn_valid, cls_valid, reg_valid, keys, method=student_unsup_losses, rngs=...)

``teacher_pseudo_labels`` is ``extract_teacher_info``: the teacher (in eval mode) proposes
with the train cfg (``rpn_proposal``: 2000 per level, NMS 0.7, 1000), detects with the test
cfg (score 0.05, NMS 0.5, 100 per image), keeps ``score > 0.5`` boxes as pseudo boxes
(``confident``) and measures each box's jitter uncertainty. ``student_unsup_losses`` is
``compute_pseudo_label_loss`` up to the classification loss, which needs the teacher's
background scores on the student's sampled RoIs (``SoftTeacherTask.loss_fn`` finishes it):
the RPN loss against the ``rpn_valid`` pseudo boxes, the student's own proposals (train
cfg), one R-CNN sampling against the ``cls_valid`` boxes (classification) and another against
the ``reg_valid`` boxes whose ``loss_bbox`` is the regression loss (the official
``unsup_rcnn_reg_loss`` runs the RoI head's ``forward_train`` a second time and keeps only
``loss_bbox``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from swin_jax.models.detection import box_coder
from swin_jax.models.detection import losses as losses_lib
from swin_jax.models.detection import postprocess
from swin_jax.models.detection import pseudo_labels as pl
from swin_jax.models.detection.sampler import RCNN_SAMPLER, RPN_SAMPLER, SamplerConfig
from swin_jax.tasks.detection import rpn_losses, sampled_roi_outputs, train_proposals


def refine_jitters(module, feats, jitters: jnp.ndarray, classes: jnp.ndarray,
                   image_hw: jnp.ndarray) -> jnp.ndarray:
  """The R-CNN head's boxes for ``jitters (B, T, D, 4)``: each copy's deltas of its box's
  class (``classes (B, D)``) decoded on the copy and clipped to ``image_hw`` -> ``(B, T, D,
  4)``."""
  b, t, d = jitters.shape[:3]
  rois = jitters.reshape(b, t * d, 4)
  _, bbox_pred = module.roi_outputs(feats, rois)
  boxes = box_coder.decode(rois, bbox_pred, box_coder.RCNN_STDS,
                           max_shape=jnp.asarray(image_hw, jnp.float32))
  per_class = boxes.reshape(b, t, d, -1, 4)
  own = jnp.clip(classes, 0, per_class.shape[3] - 1)[:, None, :, None, None]
  return jnp.take_along_axis(per_class, own, axis=3)[:, :, :, 0]


def teacher_pseudo_labels(module, images, image_hw, jitter_key, *,
                          initial_threshold: float = pl.INITIAL_SCORE_THRESHOLD,
                          jitter_times: int = pl.JITTER_TIMES,
                          jitter_scale: float = pl.JITTER_SCALE):
  """Weak views ``images (B, H, W, 3)``, ``image_hw (B, 2)`` -> (pseudo labels, FPN levels).

  Pseudo labels, all in the teacher's view: ``boxes (B, D, 4)``, ``scores (B, D)``,
  ``classes (B, D)`` int32, ``valid (B, D)`` (the initial filter) and ``uncertainty (B,
  D)``; ``D`` = the detector's ``max_detections``. Everything is gradient-stopped."""
  feats = module.features(images, False)
  rois, _, rois_valid = module.proposals(feats, image_hw, True)   # train cfg rpn_proposal
  cls_score, bbox_pred = module.roi_outputs(feats, rois)
  hw = jnp.asarray(image_hw, jnp.float32)
  dets = postprocess.detect(rois, rois_valid, cls_score, bbox_pred, hw,
                            module.score_threshold, module.nms_iou_threshold,
                            module.max_detections, module.pre_nms_top_k)
  jitters = pl.jitter_boxes(jitter_key, dets["boxes"], jitter_times, jitter_scale)
  refined = refine_jitters(module, feats, jitters, dets["classes"], hw)
  pseudo = {"boxes": dets["boxes"], "scores": dets["scores"], "classes": dets["classes"],
            "valid": pl.confident(dets, initial_threshold),
            "uncertainty": pl.box_uncertainty(refined)}
  return jax.lax.stop_gradient((pseudo, feats))


def student_unsup_losses(module, images, image_hw, boxes, labels, rpn_valid, cls_valid,
                         reg_valid, rpn_keys, cls_keys, reg_keys, *,
                         rpn_sampler: SamplerConfig = RPN_SAMPLER,
                         rcnn_sampler: SamplerConfig = RCNN_SAMPLER, train: bool = True):
  """Strong views ``images (B, H, W, 3)``, ``image_hw (B, 2)`` and the pseudo boxes in the
  student's view ``boxes (B, D, 4)``, ``labels (B, D)`` with the three target masks ``(B,
  D)`` -> ``(terms, cls_score (B, S, K + 1), cls_targets)``: ``terms`` holds
  ``loss_rpn_cls``, ``loss_rpn_bbox`` and ``loss_bbox``; ``cls_targets`` the
  classification sampling (``targets.RCNNTargets``)."""
  labels = jnp.maximum(labels, 0)   # padding (-1) is never valid: any class will do
  feats = module.features(images, train)
  (loss_rpn_cls, loss_rpn_bbox), cls_logits, deltas = rpn_losses(
      module, feats, image_hw, boxes, rpn_valid, rpn_keys, sampler=rpn_sampler)
  rois, rois_valid = train_proposals(module, feats, cls_logits, deltas, image_hw)
  cls_targets, cls_score, _ = sampled_roi_outputs(
      module, feats, cls_keys, rois, rois_valid, boxes, cls_valid, labels, sampler=rcnn_sampler)
  reg_targets, reg_score, reg_pred = sampled_roi_outputs(
      module, feats, reg_keys, rois, rois_valid, boxes, reg_valid, labels, sampler=rcnn_sampler)
  _, loss_bbox = losses_lib.rcnn_loss(reg_score, reg_pred, reg_targets)
  terms = {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox,
           "loss_bbox": loss_bbox}
  return terms, cls_score, cls_targets
