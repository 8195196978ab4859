"""The RoI heads' test outputs with static shapes, and the host-side mask paste.

    dets = detect(rois, rois_valid, cls_score, bbox_pred, image_hw)
    # {'boxes': (B, 100, 4), 'scores': (B, 100), 'classes': (B, 100), 'num_detections': (B,)}
    masks = select_masks(mask_logits, dets['classes'], valid)        # (B, 100, 28, 28) probs
    full = paste_masks(masks[0, :n], dets['boxes'][0, :n], (h, w))   # numpy (n, h, w) bool

Official test cfg (``rcnn``): ``score_thr=0.05``, ``nms=dict(iou_threshold=0.5)``,
``max_per_img=100``, ``mask_thr_binary=0.5``. ``detect`` is mmdet's
``BBoxHead.predict_by_feat`` + ``multiclass_nms``: softmax over the 81 logits (background
last, dropped), each RoI's class-``k`` deltas decoded on the RoI with the RCNN stds (0.1, 0.1,
0.2, 0.2) and clipped to the image, every (RoI, class) pair with score ``> 0.05`` a candidate,
NMS at 0.5 within each class, the 100 best kept. mmdet 2.11 and 3.3.0 agree here.

Static shapes: the ``R * K`` candidates (80,000 for 1,000 RoIs) are first cut to the
``pre_nms_top_k`` best above the threshold, then ``nms.batched_nms`` runs on those with the
class as the category. Greedy NMS visits boxes by score, so the kept boxes among the top-k
are exactly the kept boxes of the whole set down to the k-th score: the 100 detections equal
mmdet's whenever at most ``pre_nms_top_k`` candidates pass the threshold, or the top-k
alone holds 100 kept boxes. (mmcv's NMS shifts the boxes of class ``c`` by ``c * (max
coordinate + 1)``, the maximum over all candidates; here it is over the top-k, which can move
a shifted coordinate by its float32 rounding. Above 10,000 candidates mmcv runs NMS class by
class, unshifted. Both touch only IoUs within rounding of 0.5.)

Padding: detections past ``num_detections`` have zero boxes and scores and class ``-1``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models.detection import box_coder
from swin_jax.models.detection import nms as nms_lib

SCORE_THRESHOLD = 0.05
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 100
PRE_NMS_TOP_K = 4096
MASK_THRESHOLD = 0.5


def detect(rois: jnp.ndarray, rois_valid: jnp.ndarray, cls_score: jnp.ndarray,
           bbox_pred: jnp.ndarray, image_hw: Any, score_threshold: float = SCORE_THRESHOLD,
           iou_threshold: float = IOU_THRESHOLD, max_detections: int = MAX_DETECTIONS,
           pre_nms_top_k: int = PRE_NMS_TOP_K) -> dict[str, jnp.ndarray]:
  """Final detections from the bbox head's outputs on the proposals.

  Args:
    rois: ``(B, R, 4)`` the proposals the head ran on; ``rois_valid (B, R)`` marks real ones.
    cls_score: ``(B, R, K + 1)`` logits, background last.
    bbox_pred: ``(B, R, 4K)`` class-specific deltas (or ``(B, R, 4)`` class-agnostic).
    image_hw: static ``(H, W)`` or ``(B, 2)`` per-image sizes to clip to.
    score_threshold, iou_threshold, max_detections: the test cfg (Python numbers).
    pre_nms_top_k: candidates kept before NMS (see the module docstring).

  Returns:
    ``boxes (B, D, 4)``, ``scores (B, D)``, ``classes (B, D)`` int32 in ``[0, K)`` (``-1``
    for padding), ``num_detections (B,)`` int32, ``D = max_detections``, by score.
  """
  bsz, r, k1 = cls_score.shape
  k = k1 - 1
  scores = jax.nn.softmax(cls_score.astype(jnp.float32), axis=-1)[..., :k]      # (B, R, K)
  boxes = box_coder.decode(rois, bbox_pred, box_coder.RCNN_STDS, max_shape=image_hw)
  boxes = jnp.broadcast_to(boxes.reshape(bsz, r, -1, 4), (bsz, r, k, 4))
  # Candidates in mmdet's order: RoI-major, class-minor (index r * K + k).
  boxes = boxes.reshape(bsz, r * k, 4)
  scores = scores.reshape(bsz, r * k)
  labels = jnp.asarray(np.tile(np.arange(k, dtype=np.int32), r))
  valid = (scores > score_threshold) & jnp.repeat(jnp.asarray(rois_valid, bool), k, axis=1)
  top_k = min(pre_nms_top_k, r * k)
  # Invalid candidates rank last; lax.top_k keeps equal scores in index order.
  _, pick = jax.lax.top_k(jnp.where(valid, scores, -1.0), top_k)
  take = lambda x: jnp.take_along_axis(x, pick, axis=1)  # noqa: E731
  boxes = jnp.take_along_axis(boxes, pick[..., None], axis=1)
  scores, valid, labels = take(scores), take(valid), labels[pick]

  def one_image(b, s, c, v):
    return nms_lib.batched_nms(b, s, c, iou_threshold, max_detections, v)

  index, keep = jax.vmap(one_image)(boxes, scores, labels, valid)
  gather = lambda x: jnp.take_along_axis(x, index, axis=1)  # noqa: E731
  return {
      "boxes": jnp.where(keep[..., None],
                         jnp.take_along_axis(boxes, index[..., None], axis=1), 0.0),
      "scores": jnp.where(keep, gather(scores), 0.0),
      "classes": jnp.where(keep, gather(labels), -1).astype(jnp.int32),
      "num_detections": keep.sum(axis=1).astype(jnp.int32),
  }


def select_masks(mask_logits: jnp.ndarray, classes: jnp.ndarray,
                 valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """``(B, D, M, M, K)`` mask logits -> ``(B, D, M, M)`` probabilities of each detection's own
  class (mmdet's ``mask_preds[range(N), labels]`` after the sigmoid); zeros where ``valid``
  (default: ``classes >= 0``) is False."""
  if valid is None:
    valid = classes >= 0
  channel = jnp.clip(classes, 0, mask_logits.shape[-1] - 1)[:, :, None, None, None]
  logits = jnp.take_along_axis(mask_logits, channel, axis=-1)[..., 0]
  return jnp.where(valid[:, :, None, None], jax.nn.sigmoid(logits.astype(jnp.float32)), 0.0)


# ----------------------------------------------------------------------------------------
# Host side: masks pasted into the image (numpy).


def _grid_sample_bilinear(mask: np.ndarray, grid_x: np.ndarray, grid_y: np.ndarray
                          ) -> np.ndarray:
  """PyTorch's ``grid_sample(mode='bilinear', padding_mode='zeros', align_corners=False)``
  of one ``(M, M)`` map at the separable grid ``grid_x (w,)`` x ``grid_y (h,)`` in [-1, 1]
  -> ``(h, w)`` float32, with PyTorch's CPU float32 arithmetic."""
  mh, mw = mask.shape
  # Unnormalise as the CPU kernel does: (g + 1) * (size / 2) - 0.5.
  x = (grid_x + np.float32(1)) * np.float32(mw / 2) - np.float32(0.5)
  y = (grid_y + np.float32(1)) * np.float32(mh / 2) - np.float32(0.5)
  x0 = np.floor(x)
  y0 = np.floor(y)
  wx1 = (x - x0).astype(np.float32)   # weight of the east neighbour
  wy1 = (y - y0).astype(np.float32)   # weight of the south neighbour
  wx0 = np.float32(1) - wx1
  wy0 = np.float32(1) - wy1
  x0 = x0.astype(np.int64)
  y0 = y0.astype(np.int64)

  def corner(yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
    inside_y = (yi >= 0) & (yi < mh)
    inside_x = (xi >= 0) & (xi < mw)
    v = mask[np.clip(yi, 0, mh - 1)[:, None], np.clip(xi, 0, mw - 1)[None, :]]
    return np.where(inside_y[:, None] & inside_x[None, :], v, np.float32(0))

  # nw * v_nw + ne * v_ne + sw * v_sw + se * v_se, left to right.
  out = (wy0[:, None] * wx0[None, :]) * corner(y0, x0)
  out = out + (wy0[:, None] * wx1[None, :]) * corner(y0, x0 + 1)
  out = out + (wy1[:, None] * wx0[None, :]) * corner(y0 + 1, x0)
  out = out + (wy1[:, None] * wx1[None, :]) * corner(y0 + 1, x0 + 1)
  return out.astype(np.float32)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int],
                threshold: float | None = MASK_THRESHOLD) -> np.ndarray:
  """Pastes ``(N, M, M)`` mask probabilities into an image: ``(N, H, W)`` bool (or float32
  probabilities with ``threshold=None``).

  mmdet's ``FCNMaskHead._predict_by_feat_single`` on CPU (``_do_paste_mask`` one mask at a
  time with ``skip_empty``): each image pixel's centre ``(x + 0.5, y + 0.5)`` inside the box's
  region (the box widened by a pixel, floor / ceil, clipped to the image) is mapped to
  ``[-1, 1]`` across the box and sampled bilinearly from the mask (zero outside it); the
  rest of the image is 0; then ``>= threshold``. mmdet's GPU path samples the whole image;
  outside the region its values stay below 0.5, so the thresholded masks are the same.

  ``boxes (N, 4)`` x1y1x2y2 in the coordinates of the ``image_hw`` canvas; to paste into the
  original image, divide the boxes by the resize scale and give the original size (mmdet's
  ``rescale=True``).
  """
  masks = np.asarray(masks, np.float32)
  boxes = np.asarray(boxes, np.float32)
  height, width = (int(v) for v in image_hw)
  out = np.zeros((len(masks), height, width), np.float32)
  with np.errstate(divide="ignore", invalid="ignore"):
    for i, (mask, box) in enumerate(zip(masks, boxes)):
      x0_int = max(int(np.floor(box[0])) - 1, 0)
      y0_int = max(int(np.floor(box[1])) - 1, 0)
      x1_int = min(int(np.ceil(box[2])) + 1, width)
      y1_int = min(int(np.ceil(box[3])) + 1, height)
      if x1_int <= x0_int or y1_int <= y0_int:
        continue
      img_x = np.arange(x0_int, x1_int, dtype=np.float32) + np.float32(0.5)
      img_y = np.arange(y0_int, y1_int, dtype=np.float32) + np.float32(0.5)
      img_x = (img_x - box[0]) / (box[2] - box[0]) * np.float32(2) - np.float32(1)
      img_y = (img_y - box[1]) / (box[3] - box[1]) * np.float32(2) - np.float32(1)
      # mmdet sets infinite grid coordinates (an empty box) to 0; a NaN (0 / 0) stays and
      # samples to 0.
      img_x[np.isinf(img_x)] = 0
      img_y[np.isinf(img_y)] = 0
      sampled = _grid_sample_bilinear(mask, img_x, img_y)
      out[i, y0_int:y1_int, x0_int:x1_int] = np.nan_to_num(sampled, nan=0.0)
  if threshold is None:
    return out
  return out >= np.float32(threshold)
