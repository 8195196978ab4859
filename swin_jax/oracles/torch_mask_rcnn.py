"""The PyTorch Mask R-CNN reference: mmdet 3.3.0's ``MaskRCNN`` with mmdet's
``SwinTransformer``, FPN, RPN and RoI heads, built from the official config
(``mask_rcnn_swin_fpn.py``) shaped like a swin_jax ``MaskRCNN``; for ``python -m
swin_jax.bench``.

    detector = build_like(model)                      # random init, float32, CPU, eval mode
    samples = data_samples(image_hw, canvas, gt)      # DetDataSample list (gt for training)
    with mm_stubs.torchvision_ops():                  # mmcv's compiled ops via torchvision
      dets = predict(detector, images, samples)       # boxes, scores, labels, 28x28 masks
      loss = official_loss(detector, images, samples) # mmdet's summed loss terms

Where it departs from the official config, it mirrors the swin_jax model so both do the same
work: RoIAlign samples ``model.roi_sampling_ratio`` points per bin (official: 0, adaptive,
which has no static shape) through torchvision (mmcv-lite has no RoIAlign kernel);
``min_bbox_size`` 0 is given as -1, mmdet 3's spelling of mmdet 2.11's keep-everything 0.
``predict`` stops at the 28x28 mask probabilities of the detected classes, as the swin_jax
model does (pasting them into the image is host-side post-processing on both sides).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from swin_jax.oracles import import_oracle_modules
from swin_jax.oracles import mm_stubs

ANCHOR_GENERATOR = dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                        strides=[4, 8, 16, 32, 64])
FEATMAP_STRIDES = [4, 8, 16, 32]
# train_cfg samplers of mask_rcnn_swin_fpn.py: (num, pos_fraction).
RPN_SAMPLES, RCNN_SAMPLES = (256, 0.5), (512, 0.25)


def _mm() -> tuple[Any, Any]:
  """``(torch, mmdet.registry)`` with mmdet's models registered, the stub installed."""
  mm_stubs.install()
  torch, registry, _ = import_oracle_modules("swin_jax.oracles.torch_mask_rcnn", "torch",
                                             "mmdet.registry", "mmdet.models")
  return torch, registry


def _min_bbox_size(size: float) -> float:
  return size if size > 0 else -1


def _assigner(pos: float, neg: float, min_pos: float) -> dict:
  return dict(type="MaxIoUAssigner", pos_iou_thr=pos, neg_iou_thr=neg, min_pos_iou=min_pos,
              match_low_quality=True, ignore_iof_thr=-1)


def _sampler(samples: tuple[int, float], add_gt: bool) -> dict:
  return dict(type="RandomSampler", num=samples[0], pos_fraction=samples[1], neg_pos_ub=-1,
              add_gt_as_proposals=add_gt)


def official_config(model: Any, rpn_samples: tuple[int, float] = RPN_SAMPLES,
                    rcnn_samples: tuple[int, float] = RCNN_SAMPLES) -> dict:
  """mmdet's ``MaskRCNN`` config (model, train_cfg, test_cfg) from a swin_jax ``MaskRCNN``
  (or ``FasterRCNN``): its widths, classes, proposal and detection settings and drop path
  rate; the samplers' ``(num, pos_fraction)`` as the detection task's."""
  swin = model.backbone
  c, k = model.neck_channels, model.num_classes
  widths = [swin.embed_dim * 2**i for i in range(len(swin.depths))]

  def roi_extractor(size: int) -> dict:
    return dict(type="SingleRoIExtractor", out_channels=c, featmap_strides=FEATMAP_STRIDES,
                roi_layer=dict(type="RoIAlign", output_size=size,
                               sampling_ratio=model.roi_sampling_ratio, use_torchvision=True))

  def rpn_cfg(nms_pre: int) -> dict:
    return dict(nms_pre=nms_pre, max_per_img=model.rpn_max_per_img,
                nms=dict(type="nms", iou_threshold=model.rpn_iou_threshold),
                min_bbox_size=_min_bbox_size(model.rpn_min_bbox_size))

  roi_head = dict(
      type="StandardRoIHead", bbox_roi_extractor=roi_extractor(7),
      bbox_head=dict(type="Shared2FCBBoxHead", in_channels=c, fc_out_channels=model.fc_channels,
                     roi_feat_size=7, num_classes=k, reg_class_agnostic=False,
                     bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                     target_stds=[0.1, 0.1, 0.2, 0.2]),
                     loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                     loss_bbox=dict(type="L1Loss", loss_weight=1.0)))
  rcnn_train = dict(assigner=_assigner(0.5, 0.5, 0.5), sampler=_sampler(rcnn_samples, True),
                    pos_weight=-1, debug=False)
  if model.with_mask:
    roi_head.update(mask_roi_extractor=roi_extractor(14), mask_head=dict(
        type="FCNMaskHead", num_convs=4, in_channels=c, conv_out_channels=model.mask_channels,
        num_classes=k, loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0)))
    rcnn_train["mask_size"] = 28
  return dict(
      type="MaskRCNN" if model.with_mask else "FasterRCNN",
      backbone=dict(type="SwinTransformer", embed_dims=swin.embed_dim, depths=swin.depths,
                    num_heads=swin.num_heads, window_size=swin.window_size,
                    mlp_ratio=int(swin.mlp_ratio), qkv_bias=swin.qkv_bias,
                    drop_path_rate=swin.drop_path_rate, patch_norm=swin.patch_norm,
                    use_abs_pos_embed=False, out_indices=tuple(range(len(swin.depths)))),
      neck=dict(type="FPN", in_channels=widths, out_channels=c, num_outs=5),
      rpn_head=dict(type="RPNHead", in_channels=c, feat_channels=model.rpn_channels,
                    anchor_generator=ANCHOR_GENERATOR,
                    bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                    target_stds=[1.0] * 4),
                    loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                    loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
      roi_head=roi_head,
      train_cfg=dict(
          rpn=dict(assigner=_assigner(0.7, 0.3, 0.3), sampler=_sampler(rpn_samples, False),
                   allowed_border=-1, pos_weight=-1, debug=False),
          rpn_proposal=rpn_cfg(model.rpn_train_nms_pre), rcnn=rcnn_train),
      test_cfg=dict(
          rpn=rpn_cfg(model.rpn_test_nms_pre),
          rcnn=dict(score_thr=model.score_threshold,
                    nms=dict(type="nms", iou_threshold=model.nms_iou_threshold),
                    max_per_img=model.max_detections, mask_thr_binary=0.5)))


def build_like(model: Any, **samplers: tuple[int, float]) -> Any:
  """The mmdet detector of ``official_config(model, **samplers)``, float32, eval mode."""
  torch, registry = _mm()
  from mmengine.config import ConfigDict  # pylint: disable=import-outside-toplevel
  from mmengine.registry import DefaultScope  # pylint: disable=import-outside-toplevel
  with DefaultScope.overwrite_default_scope("mmdet"):
    detector = registry.MODELS.build(ConfigDict(official_config(model, **samplers)))
  detector = detector.to(torch.float32)
  detector.eval()
  return detector


def data_samples(image_hw: np.ndarray, canvas: tuple[int, int],
                 gt: Optional[dict[str, np.ndarray]] = None) -> list:
  """One ``DetDataSample`` per image: ``image_hw (B, 2)`` the unpadded sizes on the padded
  ``canvas (H, W)``; ``gt`` (training): ``boxes (B, G, 4)`` x1y1x2y2, ``labels (B, G)``,
  ``valid (B, G)`` and, for Mask R-CNN, ``masks (B, G, H, W)`` bool."""
  torch, _ = _mm()
  # pylint: disable=import-outside-toplevel
  from mmdet.structures import DetDataSample
  from mmdet.structures.mask import BitmapMasks
  from mmengine.structures import InstanceData
  samples = []
  for i, hw in enumerate(np.asarray(image_hw)):
    shape = tuple(int(v) for v in hw)
    sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape,
                                         scale_factor=(1.0, 1.0), pad_shape=tuple(canvas),
                                         batch_input_shape=tuple(canvas)))
    if gt is not None:
      keep = np.asarray(gt["valid"][i], bool)
      instances = InstanceData(bboxes=torch.from_numpy(np.asarray(gt["boxes"][i][keep],
                                                                  np.float32)),
                               labels=torch.from_numpy(np.asarray(gt["labels"][i][keep],
                                                                  np.int64)))
      if "masks" in gt:
        instances.masks = BitmapMasks(np.asarray(gt["masks"][i][keep], np.uint8), *canvas)
      sample.gt_instances = instances
    samples.append(sample)
  return samples


def predict(detector: Any, images: Any, samples: list) -> list[dict[str, Any]]:
  """The test path on NCHW ``images``: per image ``{'boxes' (N, 4), 'scores' (N,), 'labels'
  (N,)}`` and for Mask R-CNN ``'masks' (N, 28, 28)``, the sigmoid of each detection's class
  (swin_jax's outputs; no paste). Run under ``mm_stubs.torchvision_ops()``."""
  torch, _ = _mm()
  from mmdet.structures.bbox import bbox2roi  # pylint: disable=import-outside-toplevel
  feats = detector.extract_feat(images)
  proposals = detector.rpn_head.predict(feats, samples, rescale=False)
  roi_head = detector.roi_head
  results = roi_head.predict_bbox(feats, [s.metainfo for s in samples], proposals,
                                  rcnn_test_cfg=roi_head.test_cfg, rescale=False)
  out = [dict(boxes=r.bboxes, scores=r.scores, labels=r.labels) for r in results]
  if roi_head.with_mask:
    boxes = [r.bboxes for r in results]
    # StandardRoIHead.predict_mask without its paste: the mask head on the detections.
    mask_forward = roi_head._mask_forward  # pylint: disable=protected-access
    logits = mask_forward(feats, bbox2roi(boxes))["mask_preds"]
    labels = torch.cat([r.labels for r in results])
    probs = logits[torch.arange(len(labels)), labels].sigmoid()
    for dets, masks in zip(out, probs.split([len(b) for b in boxes])):
      dets["masks"] = masks
  return out


def official_loss(detector: Any, images: Any, samples: list) -> Any:
  """mmdet's training loss on NCHW ``images``: ``detector.loss`` (RPN, R-CNN and mask terms,
  targets drawn by mmdet's assigners and samplers) summed by ``parse_losses``. Run under
  ``mm_stubs.torchvision_ops()``."""
  loss, _ = detector.parse_losses(detector.loss(images, samples))
  return loss
