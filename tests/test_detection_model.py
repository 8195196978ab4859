"""Mask R-CNN / Faster R-CNN on Swin: registry, exact parameter counts, static shapes under
``jit``, conversion both ways, and the inference path against mmdet 3.3.0.

The references are mmdet's own code: ``RPNHead.predict_by_feat`` (proposals),
``BBoxHead.predict_by_feat`` (per-class NMS, 100 detections), ``FCNMaskHead``'s paste
(``_do_paste_mask``) and, end to end, mmdet's ``MaskRCNN`` detector built from its registry
with a tiny Swin. mmcv-lite has no compiled ops: its RoIAlign runs through torchvision
(``use_torchvision=True``, sampling ratio 2, this model's fixed ratio) and its ``nms`` is
replaced by ``torchvision.ops.nms`` (the same greedy rule). mmdet's test cfg sets
``min_bbox_size=-1``: mmdet 2.11's behaviour with the official 0 (see ``proposals.py``).
"""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import swin_jax
from swin_jax import convert
from swin_jax.convert import detection as det_convert
from swin_jax.models import registry
from swin_jax.models.detection import FasterRCNN, MaskRCNN
from swin_jax.models.detection import anchors as anchors_lib
from swin_jax.models.detection import postprocess
from swin_jax.models.detection import proposals as proposals_lib

from random_variables import random_variables

MASK_T = "mask_rcnn_swin_tiny_patch4_window7_fpn"
FASTER_T = "faster_rcnn_swin_tiny_patch4_window7_fpn"
# Every code path of the official model at a fraction of the cost: a Swin of width 16, heads
# of 16 / 32 channels, 3 classes.
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), num_classes=3,
            neck_channels=16, rpn_channels=16, fc_channels=32, mask_channels=16,
            drop_path_rate=0.0, img_size=(64, 96))
CANVAS = (64, 96)
# The second image was 60x75 before padding: its boxes clip to that.
IMAGE_HW = np.array([[64, 96], [60, 75]], np.int32)
ANCHOR_GENERATOR = dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                        strides=[4, 8, 16, 32, 64])
RPN_TEST_CFG = dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                    min_bbox_size=-1)
RCNN_TEST_CFG = dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                     mask_thr_binary=0.5)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_variables(model, size=CANVAS, batch=1):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32))


def tiny_variables(model, seed=0):
  return random_variables(model, jax.ShapeDtypeStruct((1, *CANVAS, 3), jnp.float32), seed)


# ---------------------------------------------------------------------------------------
# Registry and parameter counts (shapes only).

# T and S are the official counts (issue 13, spec section 8). B and all Faster R-CNN counts
# are derived; mmdet 3.3.0's MaskRCNN / FasterRCNN built from the same configs count the
# same numbers.
PARAM_COUNTS = [
    (MASK_T, 47_794_602, dict(backbone=27_520_698, neck=2_729_984, rpn_head=593_935),
     dict(bbox_head=14_306_705, mask_head=2_643_280)),
    ("mask_rcnn_swin_small_patch4_window7_fpn", 69_112_506, dict(backbone=48_838_602), {}),
    ("mask_rcnn_swin_base_patch4_window7_fpn", 107_141_800,
     dict(backbone=86_745_016, neck=2_852_864), {}),
    (FASTER_T, 45_151_322, {}, dict(bbox_head=14_306_705)),
    ("faster_rcnn_swin_small_patch4_window7_fpn", 66_469_226, {}, {}),
    ("faster_rcnn_swin_base_patch4_window7_fpn", 104_498_520, {}, {}),
]


@pytest.mark.parametrize("name,total,parts,roi_parts", PARAM_COUNTS,
                         ids=[p[0] for p in PARAM_COUNTS])
def test_param_counts_are_exact(name, total, parts, roi_parts):
  variables = abstract_variables(swin_jax.create_model(name))
  params = variables["params"]
  assert set(variables) == {"params"}  # no BatchNorm anywhere
  assert count(params) == total
  for part, n in parts.items():
    assert count(params[part]) == n, part
  # init creates the RoI heads too: the mask head exactly when it is a Mask R-CNN.
  assert set(params["roi_head"]) == ({"bbox_head", "mask_head"} if name.startswith("mask")
                                     else {"bbox_head"})
  for part, n in roi_parts.items():
    assert count(params["roi_head"][part]) == n, part


def test_registry_builds_the_official_detectors():
  for size in ("tiny", "small", "base"):
    for kind, cls in (("mask_rcnn", MaskRCNN), ("faster_rcnn", FasterRCNN)):
      name = f"{kind}_swin_{size}_patch4_window7_fpn"
      assert name in swin_jax.list_models()
      model = swin_jax.create_model(name)
      assert type(model) is cls and registry.model_class(name) is cls
      assert model.num_classes == 80 and model.with_mask == (kind == "mask_rcnn")
      swin = model.backbone
      assert swin.dense_mode and swin.feature_norm and swin.patch_norm and not swin.ape
      assert swin.num_classes == 0 and swin.window_size == 7
      assert swin.drop_path_rate == {"tiny": 0.2, "small": 0.2, "base": 0.3}[size]
  model = swin_jax.create_model(MASK_T)
  assert (model.neck_channels, model.rpn_channels, model.fc_channels,
          model.mask_channels) == (256, 256, 1024, 256)
  assert (model.rpn_test_nms_pre, model.rpn_train_nms_pre, model.rpn_max_per_img) == (
      1000, 2000, 1000)
  assert (model.score_threshold, model.nms_iou_threshold, model.max_detections) == (
      0.05, 0.5, 100)
  # One flat namespace: head fields to the detector, the rest (and dtype) to the backbone.
  small = swin_jax.create_model(MASK_T, **TINY, dtype="bfloat16")
  assert (small.num_classes, small.neck_channels, small.fc_channels) == (3, 16, 32)
  assert small.backbone.embed_dim == 16 and small.backbone.drop_path_rate == 0.0
  assert small.dtype == jnp.bfloat16 and small.backbone.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="neck_channel"):
    swin_jax.create_model(MASK_T, neck_channel=3)


# ---------------------------------------------------------------------------------------
# Static shapes.


@pytest.fixture(scope="module")
def tiny_run():
  """The tiny Mask R-CNN, random variables, two random images and its jitted detections."""
  model = swin_jax.create_model(MASK_T, **TINY)
  variables = tiny_variables(model, seed=1)
  images = np.random.default_rng(2).standard_normal((2, *CANVAS, 3)).astype(np.float32)
  dets = jax.jit(model.apply)(variables, images, IMAGE_HW)
  return model, variables, images, jax.tree.map(np.asarray, dets)


# The tests that share ``tiny_run`` (one compile of the detector) stay on one xdist worker.
SHARES_TINY_RUN = pytest.mark.xdist_group("detection_tiny_run")


@SHARES_TINY_RUN
def test_tiny_mask_rcnn_runs_under_jit_to_static_shapes(tiny_run):
  _, _, _, dets = tiny_run
  assert {k: v.shape for k, v in dets.items()} == {
      "boxes": (2, 100, 4), "scores": (2, 100), "classes": (2, 100), "num_detections": (2,),
      "masks": (2, 100, 28, 28)}
  assert dets["classes"].dtype == np.int32 and dets["num_detections"].dtype == np.int32
  for i, (h, w) in enumerate(IMAGE_HW):
    n = dets["num_detections"][i]
    assert 0 < n <= 100
    real = slice(0, n)
    assert np.all(np.diff(dets["scores"][i, real]) <= 0)          # by score
    assert np.all(dets["scores"][i, real] > 0.05)
    assert np.all((dets["classes"][i, real] >= 0) & (dets["classes"][i, real] < 3))
    boxes = dets["boxes"][i, real]
    assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= w) and np.all(boxes[:, [1, 3]] <= h)
    masks = dets["masks"][i, real]
    assert np.all((masks >= 0) & (masks <= 1))
    # Padding: zeros, class -1.
    assert np.all(dets["classes"][i, n:] == -1) and np.all(dets["scores"][i, n:] == 0)
    assert np.all(dets["boxes"][i, n:] == 0) and np.all(dets["masks"][i, n:] == 0)


def test_the_pieces_for_training_have_static_shapes():
  """``features`` / ``rpn_outputs`` / ``proposals`` / ``roi_outputs`` / ``mask_outputs``
  trace with shapes alone; Faster R-CNN's detections have no masks."""
  model = swin_jax.create_model(MASK_T, **TINY)
  variables = abstract_variables(model)
  images = jax.ShapeDtypeStruct((2, *CANVAS, 3), jnp.float32)
  hw = jax.ShapeDtypeStruct((2, 2), jnp.int32)
  rois = jax.ShapeDtypeStruct((2, 512, 4), jnp.float32)
  classes = jax.ShapeDtypeStruct((2, 512), jnp.int32)

  def pieces(v, x, image_hw, r, c):
    feats = model.apply(v, x, True, method="features", rngs={"dropout": jax.random.PRNGKey(0)})
    cls, reg = model.apply(v, feats, method="rpn_outputs")
    props = model.apply(v, feats, image_hw, True, method="proposals")
    roi = model.apply(v, feats, r, method="roi_outputs")
    masks = model.apply(v, feats, r, method="mask_outputs")
    own = model.apply(v, feats, r, c, method="mask_outputs")
    return feats, cls, reg, props, roi, masks, own

  feats, cls, reg, props, roi, masks, own = jax.eval_shape(pieces, variables, images, hw,
                                                           rois, classes)
  sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
  assert [f.shape for f in feats] == [(2, h, w, 16) for h, w in sizes]
  assert [c.shape for c in cls] == [(2, h, w, 3) for h, w in sizes]
  assert [r.shape for r in reg] == [(2, h, w, 12) for h, w in sizes]
  assert [a.shape for a in model.anchors(feats)] == [(h * w * 3, 4) for h, w in sizes]
  assert [p.shape for p in props] == [(2, 1000, 4), (2, 1000), (2, 1000)]
  assert [r.shape for r in roi] == [(2, 512, 4), (2, 512, 12)]
  assert masks.shape == (2, 512, 28, 28, 3) and own.shape == (2, 512, 28, 28)
  faster = swin_jax.create_model(FASTER_T, **TINY)
  dets = jax.eval_shape(faster.apply, abstract_variables(faster), images)
  assert set(dets) == {"boxes", "scores", "classes", "num_detections"}


def test_images_must_be_padded_to_a_multiple_of_32():
  model = swin_jax.create_model(MASK_T, **TINY)
  with pytest.raises(ValueError, match="multiple of 32"):
    abstract_variables(model, (64, 84))


# ---------------------------------------------------------------------------------------
# Conversion.


def test_conversion_round_trip_with_official_keys_and_layouts():
  torch = pytest.importorskip("torch")
  model = swin_jax.create_model(MASK_T, **TINY)
  variables = tiny_variables(model, seed=3)
  sd = convert.export_torch_state_dict(variables, model, include_buffers=True)
  params = variables["params"]
  for key in ("backbone.patch_embed.proj.weight", "backbone.norm3.weight",
              "backbone.layers.1.blocks.1.attn.relative_position_index",
              "neck.lateral_convs.3.conv.weight", "neck.fpn_convs.0.conv.bias",
              "rpn_head.rpn_conv.weight", "rpn_head.rpn_cls.bias", "rpn_head.rpn_reg.weight",
              "roi_head.bbox_head.shared_fcs.1.weight", "roi_head.bbox_head.fc_cls.weight",
              "roi_head.bbox_head.fc_reg.bias", "roi_head.mask_head.convs.3.conv.weight",
              "roi_head.mask_head.conv_logits.weight"):
    assert key in sd, key
  assert not any(k.endswith("attn_mask") or k.startswith("backbone.norm.") for k in sd)
  # fc1: PyTorch flattens the (C, 7, 7) RoI features and so does the head: a plain
  # transpose, no row permutation.
  fc1 = params["roi_head"]["bbox_head"]["shared_fcs_0"]["kernel"]
  assert sd["roi_head.bbox_head.shared_fcs.0.weight"].shape == (32, 16 * 7 * 7)
  np.testing.assert_array_equal(sd["roi_head.bbox_head.shared_fcs.0.weight"], fc1.T)
  # The deconv: PyTorch's (in, out, kh, kw), no flip.
  deconv = params["roi_head"]["mask_head"]["upsample"]["kernel"]
  np.testing.assert_array_equal(sd["roi_head.mask_head.upsample.weight"],
                                deconv.transpose(2, 3, 0, 1))
  # The whole-model converter and the head converter agree.
  heads = det_convert.head_params_to_torch(params)
  assert set(heads) == {k for k in sd if det_convert.is_head_key(k)}
  for key, value in heads.items():
    np.testing.assert_array_equal(sd[key], value, err_msg=key)
  # An mmdet checkpoint (torch tensors under 'state_dict') loads back exactly, also into
  # a scanned backbone.
  checkpoint = {"meta": {}, "state_dict": {k: torch.from_numpy(np.array(v))
                                           for k, v in sd.items()}}
  loaded = convert.load_torch_variables(checkpoint, model)
  assert set(loaded) == {"params"}
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  # The params-only entry point (the convert CLI's) lays out the deconv the same way.
  jax.tree.map(np.testing.assert_array_equal, convert.load_torch_checkpoint(sd, model),
               variables["params"])
  scanned = swin_jax.create_model(MASK_T, **TINY, scan_blocks=True)
  again = convert.export_torch_state_dict(convert.load_torch_variables(sd, scanned), scanned)
  assert sorted(again) == sorted(k for k in sd if not k.endswith("relative_position_index"))
  for key, value in again.items():
    np.testing.assert_array_equal(value, sd[key], err_msg=key)
  # Strict by default; strict=False keeps the model's own values.
  del sd["roi_head.mask_head.upsample.bias"]
  with pytest.raises(convert.CheckpointMismatchError, match="mask_head.upsample.bias"):
    convert.load_torch_variables(sd, model)
  partial = convert.load_torch_variables(sd, model, strict=False, fallback_params=params)
  jax.tree.map(np.testing.assert_array_equal, partial, variables)
  with pytest.raises(ValueError, match="official"):
    convert.export_torch_state_dict(variables, model, layout="timm")


# ---------------------------------------------------------------------------------------
# mmdet 3.3.0 references.


@pytest.fixture(scope="module")
def mm():
  """mmdet's modules under mmcv-lite, with mmcv's NMS through torchvision."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  pytest.importorskip("mmdet")
  import mm_stubs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import mmcv.ops  # pylint: disable=import-outside-toplevel,unused-import
  nms_module = importlib.import_module("mmcv.ops.nms")

  def torchvision_nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1):
    assert offset == 0 and score_threshold == 0 and max_num == -1
    keep = torchvision.ops.nms(boxes, scores, float(iou_threshold))
    return torch.cat([boxes[keep], scores[keep, None]], 1), keep

  # pylint: disable=import-outside-toplevel
  from mmdet.models.dense_heads import RPNHead
  from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
  from mmdet.models.roi_heads.mask_heads import FCNMaskHead
  from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
  original = nms_module.nms
  nms_module.nms = torchvision_nms  # mmcv's batched_nms looks 'nms' up in its module
  yield types.SimpleNamespace(torch=torch, RPNHead=RPNHead,
                              Shared2FCBBoxHead=Shared2FCBBoxHead, FCNMaskHead=FCNMaskHead,
                              do_paste_mask=_do_paste_mask)
  nms_module.nms = original


def _config(cfg):
  from mmengine.config import ConfigDict  # pylint: disable=import-outside-toplevel
  return ConfigDict(cfg)


def random_boxes(rng, n, height, width, min_size=2.0):
  xy = rng.uniform(0, [width - min_size, height - min_size], (n, 2))
  wh = rng.uniform(min_size, [width, height], (n, 2))
  far = np.minimum(xy + wh, [width, height])
  return np.concatenate([xy, far], axis=1).astype(np.float32)


def test_proposals_match_mmdet_rpn_head(mm):
  """Five levels of random RPN outputs of a 160x224 canvas (the first two cut to their best
  ``nms_pre``, and the NMS output to ``max_per_img``), two image sizes."""
  torch = mm.torch
  rng = np.random.default_rng(4)
  sizes = [(40, 56), (20, 28), (10, 14), (5, 7), (3, 4)]
  cls = [rng.normal(0, 2, (2, h, w, 3)).astype(np.float32) for h, w in sizes]
  reg = [rng.normal(0, 0.5, (2, h, w, 12)).astype(np.float32) for h, w in sizes]
  image_hw = np.array([[160, 224], [150, 200]], np.int32)
  head = mm.RPNHead(in_channels=8, feat_channels=8, anchor_generator=ANCHOR_GENERATOR)
  metas = [dict(img_shape=tuple(int(v) for v in hw)) for hw in image_hw]
  anchors = anchors_lib.multilevel_anchors(sizes)
  for nms_pre, max_per_img in ((1000, 1000), (2000, 300)):
    cfg = _config(dict(RPN_TEST_CFG, nms_pre=nms_pre, max_per_img=max_per_img))
    with torch.no_grad():
      ref = head.predict_by_feat([torch.from_numpy(c).permute(0, 3, 1, 2) for c in cls],
                                 [torch.from_numpy(r).permute(0, 3, 1, 2) for r in reg],
                                 batch_img_metas=metas, cfg=cfg, rescale=False)
    run = jax.jit(proposals_lib.propose, static_argnums=(4, 5))
    boxes, scores, valid = (np.asarray(x) for x in run(cls, reg, anchors, image_hw, nms_pre,
                                                       max_per_img))
    assert boxes.shape == (2, max_per_img, 4)
    for i in range(2):
      n = len(ref[i])
      assert valid[i].sum() == n and valid[i, :n].all()
      np.testing.assert_allclose(boxes[i, :n], ref[i].bboxes.numpy(), rtol=0, atol=1e-4)
      np.testing.assert_allclose(scores[i, :n], ref[i].scores.numpy(), rtol=0, atol=1e-6)
      assert np.all(boxes[i, n:] == 0) and np.all(scores[i, n:] == 0)
    if max_per_img == 300:
      assert valid.all()  # the cut after NMS is exercised


def test_min_bbox_size_zero_drops_no_proposal_as_in_mmdet_2_11():
  """Anchors outside a 5x5 image clip to zero-width or zero-height proposals: kept with the
  official ``min_bbox_size=0`` (mmdet 2.11; 3.x would drop them), dropped by a positive
  size."""
  anchors = [np.array([[0, 0, 2, 2], [2, 2, 4, 4], [0, 2, 2, 4],
                       [6, 6, 8, 8], [7, 0, 9, 3], [0, 7, 3, 9]], np.float32)]
  cls = [np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)]
  reg = [np.zeros((1, 1, 2, 12), np.float32)]
  hw = np.array([[5, 5]], np.int32)
  boxes, _, valid = proposals_lib.propose(cls, reg, anchors, hw, 1000, 8, 0.7, 0.0)
  assert int(valid.sum()) == 6
  np.testing.assert_array_equal(np.asarray(boxes)[0, :3], [[0, 5, 3, 5], [5, 0, 5, 3],
                                                           [5, 5, 5, 5]])
  boxes, _, valid = proposals_lib.propose(cls, reg, anchors, hw, 1000, 8, 0.7, 1e-3)
  assert int(valid.sum()) == 3
  np.testing.assert_array_equal(np.asarray(boxes)[0, :3], anchors[0][[2, 1, 0]])


def test_detect_matches_mmdet_bbox_head(mm):
  """300 RoIs x 10 classes per image (the last 20 of image 1 padding), two image sizes,
  with the default pre-NMS top-k and one that cuts the candidates."""
  torch = mm.torch
  rng = np.random.default_rng(5)
  k, r = 10, 300
  image_hw = np.array([[120, 160], [100, 150]], np.int32)
  rois = np.stack([random_boxes(rng, r, h, w) for h, w in image_hw])
  rois_valid = np.ones((2, r), bool)
  rois_valid[1, -20:] = False
  cls_score = rng.normal(0, 2, (2, r, k + 1)).astype(np.float32)
  bbox_pred = rng.normal(0, 1, (2, r, 4 * k)).astype(np.float32)
  head = mm.Shared2FCBBoxHead(in_channels=8, fc_out_channels=16, roi_feat_size=7, num_classes=k)
  n_valid = rois_valid.sum(1)
  mm_rois = tuple(torch.from_numpy(np.concatenate(
      [np.full((n, 1), i, np.float32), rois[i, :n]], 1)) for i, n in enumerate(n_valid))
  with torch.no_grad():
    ref = head.predict_by_feat(
        mm_rois, tuple(torch.from_numpy(cls_score[i, :n]) for i, n in enumerate(n_valid)),
        tuple(torch.from_numpy(bbox_pred[i, :n]) for i, n in enumerate(n_valid)),
        batch_img_metas=[dict(img_shape=tuple(int(v) for v in hw)) for hw in image_hw],
        rcnn_test_cfg=_config(RCNN_TEST_CFG), rescale=False)
  # Candidates per image, well above the second top-k (300): that one cuts them.
  candidates = np.asarray(jax.nn.softmax(cls_score, -1)[..., :k] > 0.05).sum(axis=(1, 2))
  assert np.all(candidates > 1000)
  for top_k in (4096, 300):
    run = jax.jit(postprocess.detect, static_argnums=(5, 6, 7, 8))
    dets = jax.tree.map(np.asarray, run(rois, rois_valid, cls_score, bbox_pred, image_hw,
                                        0.05, 0.5, 100, top_k))
    for i in range(2):
      n = len(ref[i])
      assert n == 100 and dets["num_detections"][i] == n
      np.testing.assert_array_equal(dets["classes"][i], ref[i].labels.numpy())
      np.testing.assert_allclose(dets["boxes"][i], ref[i].bboxes.numpy(), rtol=0, atol=1e-4)
      np.testing.assert_allclose(dets["scores"][i], ref[i].scores.numpy(), rtol=0, atol=1e-6)


def test_paste_masks_matches_mmdet(mm):
  """28x28 masks pasted into a 50x70 image by boxes of every kind (fractional, at the
  border, smaller and larger than the mask, an empty one): the same pixels as mmdet's
  ``FCNMaskHead`` (CPU), and probabilities within 1e-6 of ``_do_paste_mask``."""
  torch = mm.torch
  rng = np.random.default_rng(6)
  height, width = 50, 70
  boxes = random_boxes(rng, 12, height, width, min_size=1.0)
  boxes[:4] = [[0.0, 0.0, 70.0, 50.0], [3.3, 4.7, 9.1, 8.2], [60.5, 40.25, 70.0, 50.0],
               [10.0, 10.0, 10.0, 20.0]]
  logits = rng.normal(0, 3, (12, 3, 28, 28)).astype(np.float32)
  labels = rng.integers(0, 3, 12)
  head = mm.FCNMaskHead(num_convs=1, in_channels=8, conv_out_channels=8, num_classes=3)
  with torch.no_grad():
    ref = head._predict_by_feat_single(  # pylint: disable=protected-access
        torch.from_numpy(logits), torch.from_numpy(boxes), torch.from_numpy(labels),
        dict(ori_shape=(height, width), scale_factor=(1.0, 1.0)),
        _config(RCNN_TEST_CFG), rescale=False).numpy()
  probs = torch.from_numpy(logits[np.arange(12), labels]).sigmoid()
  ours = postprocess.paste_masks(probs.numpy(), boxes, (height, width))
  assert ours.shape == ref.shape == (12, height, width) and ours.dtype == bool
  np.testing.assert_array_equal(ours, ref)
  assert ref.any(axis=(1, 2))[:3].all()
  values = postprocess.paste_masks(probs.numpy(), boxes, (height, width), threshold=None)
  for i in range(12):
    with torch.no_grad():
      region, (rows, cols) = mm.do_paste_mask(probs[i][None, None],
                                              torch.from_numpy(boxes[i:i + 1]), height, width,
                                              skip_empty=True)
    region = np.nan_to_num(region[0].numpy())
    np.testing.assert_allclose(values[i, rows, cols], region, rtol=0, atol=1e-6)


def test_select_masks_reads_each_detections_class():
  logits = np.random.default_rng(7).normal(size=(1, 3, 28, 28, 4)).astype(np.float32)
  classes = np.array([[2, 0, -1]], np.int32)
  masks = np.asarray(postprocess.select_masks(logits, classes))
  np.testing.assert_allclose(masks[0, 0], jax.nn.sigmoid(logits[0, 0, ..., 2]), atol=1e-7)
  np.testing.assert_allclose(masks[0, 1], jax.nn.sigmoid(logits[0, 1, ..., 0]), atol=1e-7)
  assert np.all(masks[0, 2] == 0)


def mmdet_mask_rcnn(model, sd):
  """mmdet 3.3.0's ``MaskRCNN`` shaped like the tiny ``model``, strictly loaded from its
  exported official state dict; eval mode."""
  import mm_oracle  # pylint: disable=import-outside-toplevel
  from mmengine.registry import init_default_scope  # pylint: disable=import-outside-toplevel
  from mmdet.registry import MODELS  # pylint: disable=import-outside-toplevel
  import mmdet.models  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  init_default_scope("mmdet")
  swin = model.backbone
  widths = [swin.embed_dim * 2**i for i in range(len(swin.depths))]
  c, k = model.neck_channels, model.num_classes

  def roi_layer(size):
    return dict(type="RoIAlign", output_size=size, sampling_ratio=model.roi_sampling_ratio,
                use_torchvision=True)

  detector = MODELS.build(_config(dict(
      type="MaskRCNN",
      backbone=dict(type="SwinTransformer", embed_dims=swin.embed_dim, depths=swin.depths,
                    num_heads=swin.num_heads, window_size=swin.window_size,
                    out_indices=(0, 1, 2, 3)),
      neck=dict(type="FPN", in_channels=widths, out_channels=c, num_outs=5),
      rpn_head=dict(
          type="RPNHead", in_channels=c, feat_channels=model.rpn_channels,
          anchor_generator=ANCHOR_GENERATOR,
          bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                          target_stds=[1.0] * 4)),
      roi_head=dict(
          type="StandardRoIHead",
          bbox_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=roi_layer(7),
                                  out_channels=c, featmap_strides=[4, 8, 16, 32]),
          bbox_head=dict(type="Shared2FCBBoxHead", in_channels=c,
                         fc_out_channels=model.fc_channels, roi_feat_size=7, num_classes=k,
                         bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                         target_stds=[0.1, 0.1, 0.2, 0.2])),
          mask_roi_extractor=dict(type="SingleRoIExtractor", roi_layer=roi_layer(14),
                                  out_channels=c, featmap_strides=[4, 8, 16, 32]),
          mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=c,
                         conv_out_channels=model.mask_channels, num_classes=k)),
      train_cfg=None, test_cfg=dict(rpn=RPN_TEST_CFG, rcnn=RCNN_TEST_CFG))))
  backbone = mm_oracle.mmdet_backbone(swin, {k[len("backbone."):]: v for k, v in sd.items()
                                             if k.startswith("backbone.")})
  full = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
  full.update({k: mm_oracle.to_torch({k: v})[k] for k, v in sd.items()
               if det_convert.is_head_key(k)})
  detector.load_state_dict(full, strict=True)
  detector.eval()
  return detector


@SHARES_TINY_RUN
def test_tiny_mask_rcnn_matches_mmdet_mask_rcnn(mm, tiny_run):
  """The whole inference path, random weights, two images (one padded from 60x75): the
  same detections (class, box, score) and the same pasted mask pixels as mmdet's detector."""
  torch = mm.torch
  pytest.importorskip("mmseg")  # mm_oracle's import
  from mmdet.structures import DetDataSample  # pylint: disable=import-outside-toplevel
  model, variables, images, dets = tiny_run
  sd = convert.export_torch_state_dict(variables, model, include_buffers=True)
  detector = mmdet_mask_rcnn(model, sd)
  samples = []
  for hw in IMAGE_HW:
    sample = DetDataSample()
    shape = tuple(int(v) for v in hw)
    sample.set_metainfo(dict(img_shape=shape, ori_shape=shape, scale_factor=(1.0, 1.0),
                             batch_input_shape=CANVAS, pad_shape=CANVAS))
    samples.append(sample)
  with torch.no_grad():
    ref = detector.predict(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                           samples, rescale=False)
  for i, hw in enumerate(IMAGE_HW):
    pred = ref[i].pred_instances
    n = len(pred)
    assert n > 50 and dets["num_detections"][i] == n
    np.testing.assert_array_equal(dets["classes"][i, :n], pred.labels.numpy())
    np.testing.assert_allclose(dets["scores"][i, :n], pred.scores.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(dets["boxes"][i, :n], pred.bboxes.numpy(), rtol=0, atol=1e-3)
    pasted = postprocess.paste_masks(dets["masks"][i, :n], dets["boxes"][i, :n], tuple(hw))
    ref_masks = pred.masks.numpy()
    assert pasted.shape == ref_masks.shape and ref_masks.any()
    # Boxes agree to ~1e-5 px, probabilities to ~1e-6: a pixel on the 0.5 edge may flip.
    assert (pasted != ref_masks).mean() <= 1e-4
