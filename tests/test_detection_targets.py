"""Mask R-CNN training targets and losses against mmdet 3.3.0: ``MaxIoUAssigner``,
``RandomSampler``, ``RPNHead.get_targets`` / ``loss_by_feat``, ``BBoxHead.get_targets`` /
``loss``, ``mask_target``, ``FCNMaskHead.loss_and_target``, ``AnchorGenerator.valid_flags``.

The random draw cannot match PyTorch's, so the parity tests use cases where mmdet draws
everything (no more positives and negatives than the sampler's quotas) and compare the sets
it drew; the draw itself is tested by its invariants and statistics. mmdet's ``mask_target``
calls mmcv's compiled ``roi_align``, which mmcv-lite lacks: the tests hand it torchvision's
(the same op for ``aligned=True``, adaptive sampling included).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from swin_jax.models.detection import anchors as anchors_lib
from swin_jax.models.detection import assigner as assigner_lib
from swin_jax.models.detection import losses as losses_lib
from swin_jax.models.detection import sampler as sampler_lib
from swin_jax.models.detection import targets as targets_lib
from swin_jax.models.detection.assigner import RCNN_ASSIGNER, RPN_ASSIGNER, AssignerConfig
from swin_jax.models.detection.sampler import RCNN_SAMPLER, RPN_SAMPLER, SamplerConfig

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("mmdet")
import mm_stubs  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402
from mmdet.models.dense_heads import RPNHead as MMRPNHead  # noqa: E402
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead as MMBBoxHead  # noqa: E402
from mmdet.models.roi_heads.mask_heads import FCNMaskHead as MMMaskHead  # noqa: E402
from mmdet.models.task_modules.assigners import MaxIoUAssigner  # noqa: E402
from mmdet.models.task_modules.assigners.assign_result import AssignResult  # noqa: E402
from mmdet.models.task_modules.prior_generators import AnchorGenerator  # noqa: E402
from mmdet.models.task_modules.samplers import RandomSampler  # noqa: E402
from mmdet.structures.bbox import bbox2roi  # noqa: E402
from mmdet.structures.mask import BitmapMasks, mask_target  # noqa: E402
import mmdet.structures.mask.structures as mm_mask_structures  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402

register_all_modules()  # the heads build their assigners and coders from registry names

STRIDES = [4, 8, 16, 32, 64]


def mm_assigner(cfg: AssignerConfig) -> MaxIoUAssigner:
  return MaxIoUAssigner(pos_iou_thr=cfg.pos_iou_thr, neg_iou_thr=cfg.neg_iou_thr,
                        min_pos_iou=cfg.min_pos_iou, gt_max_assign_all=cfg.gt_max_assign_all,
                        match_low_quality=cfg.match_low_quality, ignore_iof_thr=-1)


def mm_sampler(cfg: SamplerConfig) -> RandomSampler:
  return RandomSampler(num=cfg.num, pos_fraction=cfg.pos_fraction, neg_pos_ub=cfg.neg_pos_ub,
                       add_gt_as_proposals=cfg.add_gt_as_proposals)


def t(x, dtype=torch.float32):
  return torch.as_tensor(np.asarray(x)).to(dtype)


def jitter(rng, boxes, n, scale):
  """``n`` boxes near random members of ``boxes``: corners moved by up to ``scale`` x size."""
  base = boxes[rng.integers(0, len(boxes), n)]
  wh = np.concatenate([base[:, 2:] - base[:, :2]] * 2, axis=1)
  return (base + rng.uniform(-scale, scale, (n, 4)) * wh).astype(np.float32)


def random_gts(rng, g, canvas_hw, min_size=12.0, max_size=40.0):
  h, w = canvas_hw
  wh = rng.uniform(min_size, max_size, (g, 2))
  xy = rng.uniform(0, 1, (g, 2)) * (np.array([w, h]) - wh)
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.fixture
def torchvision_roi_align(monkeypatch):
  """mmdet's ``BitmapMasks.crop_and_resize`` with torchvision's RoIAlign for mmcv's."""
  def roi_align(inp, rois, output_size, spatial_scale, sampling_ratio, pool_mode, aligned):
    assert pool_mode == "avg"
    return torchvision.ops.roi_align(inp, rois, output_size, spatial_scale, sampling_ratio,
                                     aligned)
  monkeypatch.setattr(mm_mask_structures, "roi_align", roi_align)


# ---------------------------------------------------------------------------------------
# Assigner.


PLANTED_GTS = np.array([[0, 0, 10, 10],        # 0: padding, on top of gt 1 and candidate 0
                        [0, 0, 10, 10],        # 1
                        [100, 100, 110, 110],  # 2: best IoU 0.5, two candidates tie
                        [200, 200, 210, 210],  # 3: best IoU 0.2, under min_pos_iou 0.3
                        [300, 300, 310, 310],  # 4 and 5: the same box, claiming candidate 7
                        [300, 300, 310, 310]], np.float32)
PLANTED_VALID = np.array([False, True, True, True, True, True])
PLANTED_LABELS = np.array([9, 1, 2, 3, 4, 5])
PLANTED_CANDIDATES = np.array([[0, 0, 10, 10],        # IoU 1 with gt 1
                               [0, 0, 10, 5],         # 0.5 with gt 1
                               [0, 0, 10, 2],         # 0.2 with gt 1
                               [20, 20, 30, 30],      # 0
                               [100, 100, 110, 105],  # 0.5 with gt 2
                               [100, 105, 110, 110],  # 0.5 with gt 2
                               [200, 200, 210, 202],  # 0.2 with gt 3
                               [300, 300, 310, 305]],  # 0.5 with gts 4 and 5
                              np.float32)


def planted(cfg, candidate_valid=None):
  out = assigner_lib.max_iou_assign(PLANTED_CANDIDATES, PLANTED_GTS, PLANTED_VALID,
                                    PLANTED_LABELS, cfg, candidate_valid)
  return [np.asarray(x) for x in out]


def test_rpn_assigner_planted_bands_low_quality_ties_and_padding():
  """0.7 / 0.3: IoU 1 positive; 0.5 in the ignore band unless low-quality matched; 0.2
  negative; gt 2's best (0.5 >= min_pos_iou 0.3, two tied candidates) both positive; gt 3's best
  (0.2) stays negative; gts 4 and 5 claim candidate 7 and the later one wins; the padded gt on
  top of gt 1 and candidate 0 is never matched."""
  gt_inds, max_overlaps, labels = planted(RPN_ASSIGNER)
  np.testing.assert_array_equal(gt_inds, [2, -1, 0, 0, 3, 3, 0, 6])
  np.testing.assert_allclose(max_overlaps, [1, .5, .2, 0, .5, .5, .2, .5], atol=1e-6)
  np.testing.assert_array_equal(labels, [1, -1, -1, -1, 2, 2, -1, 5])


def test_rcnn_assigner_planted():
  """0.5 / 0.5 / min 0.5: 0.5 is positive; candidate 7's argmax is gt 4 (first of a tie), but
  the low-quality step gives it to gt 5."""
  gt_inds, _, labels = planted(RCNN_ASSIGNER)
  np.testing.assert_array_equal(gt_inds, [2, 2, 0, 0, 3, 3, 0, 6])
  np.testing.assert_array_equal(labels, [1, 1, -1, -1, 2, 2, -1, 5])


def test_invalid_candidates_take_no_part():
  """Candidate 0 dropped (mmdet's ``inside_flags``): it comes out ignored, and gt 1's best valid
  candidate is now candidate 1 (0.5 >= 0.3), positive by the low-quality match."""
  valid = np.ones(8, bool)
  valid[0] = False
  gt_inds, max_overlaps, _ = planted(RPN_ASSIGNER, valid)
  np.testing.assert_array_equal(gt_inds, [-1, 2, 0, 0, 3, 3, 0, 6])
  assert max_overlaps[0] == 0


@pytest.mark.parametrize("num_gts", [0, 3])
def test_no_ground_truth_makes_every_valid_candidate_negative(num_gts):
  """No gt slot at all, or only padded ones (mmdet's ``num_gts == 0`` branch): every valid
  candidate negative with IoU 0, labels -1; invalid candidates stay ignored."""
  gts = np.tile(PLANTED_CANDIDATES[:1], (num_gts, 1))
  valid = np.array([True] * 7 + [False])
  out = assigner_lib.max_iou_assign(PLANTED_CANDIDATES, gts.reshape(num_gts, 4),
                                    np.zeros(num_gts, bool), np.zeros(num_gts, np.int32),
                                    RPN_ASSIGNER, valid)
  np.testing.assert_array_equal(out.gt_inds, [0] * 7 + [-1])
  np.testing.assert_array_equal(out.max_overlaps, np.zeros(8))
  np.testing.assert_array_equal(out.labels, -np.ones(8))
  ref = mm_assigner(RPN_ASSIGNER).assign(
      InstanceData(priors=t(PLANTED_CANDIDATES[:7])),
      InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)))
  np.testing.assert_array_equal(out.gt_inds[:7], ref.gt_inds.numpy())


@pytest.mark.parametrize("cfg", [
    RPN_ASSIGNER, RCNN_ASSIGNER,
    AssignerConfig(0.5, (0.1, 0.4), min_pos_iou=0.0, gt_max_assign_all=False),
    AssignerConfig(0.6, 0.4, match_low_quality=False)], ids=["rpn", "rcnn", "tuple", "noLQ"])
def test_assigner_equals_mmdet_on_random_boxes(cfg):
  """Random gts (some padded, in the middle too) and candidates jittered around them, a fifth
  of the candidates invalid: gt index, max IoU and label as mmdet's on the valid subset (whose
  gt list is the valid gts only)."""
  rng = np.random.default_rng(0)
  gts = random_gts(rng, 8, (200, 300))
  gt_valid = np.array([1, 1, 0, 1, 1, 0, 1, 0], bool)
  labels = rng.integers(0, 80, 8)
  cands = np.concatenate([jitter(rng, gts, 400, 0.3), random_gts(rng, 100, (200, 300))])
  cand_valid = rng.uniform(size=500) > 0.2
  out = assigner_lib.max_iou_assign(cands, gts, gt_valid, labels, cfg, cand_valid)
  ref = mm_assigner(cfg).assign(
      InstanceData(priors=t(cands[cand_valid])),
      InstanceData(bboxes=t(gts[gt_valid]), labels=t(labels[gt_valid], torch.long)))
  ours_to_mm = np.cumsum(gt_valid) - 1   # our gt slot -> mmdet's index among valid gts
  gt_inds = np.asarray(out.gt_inds)
  mapped = np.where(gt_inds > 0, ours_to_mm[np.maximum(gt_inds - 1, 0)] + 1, gt_inds)
  np.testing.assert_array_equal(mapped[cand_valid], ref.gt_inds.numpy())
  np.testing.assert_array_equal(gt_inds[~cand_valid], -1)
  np.testing.assert_allclose(np.asarray(out.max_overlaps)[cand_valid],
                             ref.max_overlaps.numpy(), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.labels)[cand_valid], ref.labels.numpy())
  counts = np.bincount(np.sign(gt_inds[cand_valid]) + 1, minlength=3)
  has_band = cfg.pos_iou_thr > np.max(cfg.neg_iou_thr)
  assert counts[1:].min() > 10 and (counts[0] > 10 or not has_band), (
      f"(ignored, negative, positive) = {counts}: a band went untested")


def test_anchor_valid_flags_equal_mmdet():
  """Per-image padded sizes smaller than the batch's feature maps (jitted, traced size)."""
  sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
  ref = AnchorGenerator(strides=STRIDES, ratios=[0.5, 1.0, 2.0], scales=[8])
  flags = jax.jit(assigner_lib.anchor_valid_flags, static_argnums=(0, 2))
  for pad_hw in [(64, 96), (64, 64), (32, 96), (40, 72)]:
    theirs = torch.cat(ref.valid_flags(sizes, pad_hw, device="cpu")).numpy()
    np.testing.assert_array_equal(flags(tuple(sizes), jnp.array(pad_hw), tuple(STRIDES)),
                                  theirs, err_msg=str(pad_hw))


# ---------------------------------------------------------------------------------------
# Sampler.


def planted_assignment(num_pos, num_neg, num_ignored, seed=0):
  rng = np.random.default_rng(seed)
  gt_inds = np.concatenate([rng.integers(1, 5, num_pos), np.zeros(num_neg, int),
                            -np.ones(num_ignored, int)])
  return rng.permutation(gt_inds).astype(np.int32)


@functools.partial(jax.jit, static_argnums=2)
def draw_and_mask(key, gt_inds, cfg):
  sample = sampler_lib.random_sample(key, gt_inds, cfg)
  return sample, sampler_lib.sampled_masks(sample, gt_inds.shape[0])


@pytest.mark.parametrize("cfg,num_pos,num_neg", [
    (RCNN_SAMPLER, 300, 5000),   # enough of both: 128 + 384
    (RCNN_SAMPLER, 10, 5000),    # few positives: 10 + 502
    (RCNN_SAMPLER, 300, 100),    # few negatives: 128 + 100, short of 512
    (RCNN_SAMPLER, 0, 0),        # nothing to draw
    (RPN_SAMPLER, 1000, 1000),   # 128 + 128
    (SamplerConfig(64, 0.25, neg_pos_ub=3), 5, 500),  # negatives capped at 3 x 5
    (SamplerConfig(64, 0.25, neg_pos_ub=3), 0, 500),  # ... at 3 x max(1, 0)
])
def test_sample_counts_and_invariants(cfg, num_pos, num_neg):
  """Counts as mmdet's ``RandomSampler`` draws; positives fill slots ``[0, num_pos)``, all
  drawn indices distinct, positives drawn from positives and negatives from negatives,
  ignored candidates never drawn."""
  gt_inds = planted_assignment(num_pos, num_neg, 6700 - num_pos - num_neg)  # one shape
  sample, (pos_mask, neg_mask) = draw_and_mask(jax.random.key(0), jnp.asarray(gt_inds), cfg)
  # Ground truth as proposals is ``add_gt_as_proposals``'s job, not the draw's.
  ref = mm_sampler(dataclasses.replace(cfg, add_gt_as_proposals=False)).sample(
      AssignResult(1, t(gt_inds, torch.long), torch.zeros(len(gt_inds)),
                   torch.full((len(gt_inds),), -1)),
      InstanceData(priors=torch.zeros(len(gt_inds), 4)),
      InstanceData(bboxes=torch.zeros(4, 4), labels=torch.zeros(4, dtype=torch.long)))
  p, n = int(sample.num_pos), int(sample.num_neg)
  assert (p, n) == (ref.pos_inds.numel(), ref.neg_inds.numel())
  assert sample.inds.shape == (cfg.num,) and p <= cfg.max_pos
  inds, valid, is_pos = (np.asarray(x) for x in (sample.inds, sample.valid, sample.is_pos))
  np.testing.assert_array_equal(is_pos, np.arange(cfg.num) < p)
  np.testing.assert_array_equal(valid, np.arange(cfg.num) < p + n)
  drawn = inds[valid]
  assert len(set(drawn.tolist())) == len(drawn)
  assert np.all(gt_inds[inds[:p]] > 0) and np.all(gt_inds[inds[p:p + n]] == 0)
  assert int(pos_mask.sum()) == p and int(neg_mask.sum()) == n
  assert not np.any(np.asarray(pos_mask | neg_mask)[gt_inds < 0])


def test_sample_is_uniform_over_each_pool():
  """Over 256 keys (one vmapped program), each of 300 positives is drawn with probability
  128 / 300 and each of 500 negatives with 384 / 500, with no trend along the index."""
  gt_inds = jnp.asarray(planted_assignment(300, 500, 200, seed=1))
  keys = jax.random.split(jax.random.key(1), 256)
  draw = jax.jit(jax.vmap(lambda k: sampler_lib.sampled_masks(
      sampler_lib.random_sample(k, gt_inds, RCNN_SAMPLER), gt_inds.shape[0])))
  pos, neg = (np.asarray(x).mean(0) for x in draw(keys))
  gi = np.asarray(gt_inds)
  for freq, pool, expected in ((pos, gi > 0, 128 / 300), (neg, gi == 0, 384 / 500)):
    f = freq[pool]
    np.testing.assert_allclose(f.mean(), expected, atol=1e-6)   # exact counts every draw
    sd = np.sqrt(expected * (1 - expected) / 256)
    assert np.abs(f - expected).max() < 5 * sd
    assert abs(f[: len(f) // 2].mean() - f[len(f) // 2:].mean()) < 3 * sd
  assert pos[gi <= 0].max() == 0 and neg[gi != 0].max() == 0


def test_add_gt_as_proposals_equals_mmdet_add_gt():
  """Valid gts prepended, each assigned to itself with IoU 1 and its label; padded slots
  ignored (never drawn)."""
  gt_valid = np.array([True, True, True, False])
  labels = np.array([3, 0, 7, 5])
  assign = assigner_lib.AssignResult(jnp.array([0, 2, -1, 1]), jnp.array([.1, .8, .4, .6]),
                                     jnp.array([-1, 0, -1, 3]))
  boxes, merged, is_gt = sampler_lib.add_gt_as_proposals(
      jnp.ones((4, 4)), assign, jnp.zeros((4, 4)), gt_valid, labels)
  ref = AssignResult(3, torch.tensor([0, 2, -1, 1]), torch.tensor([.1, .8, .4, .6]),
                     torch.tensor([-1, 0, -1, 3]))
  ref.add_gt_(torch.tensor(labels[:3]))
  keep = np.r_[0:3, 4:8]   # drop our padded gt slot
  np.testing.assert_array_equal(np.asarray(merged.gt_inds)[keep], ref.gt_inds.numpy())
  np.testing.assert_allclose(np.asarray(merged.max_overlaps)[keep], ref.max_overlaps.numpy())
  np.testing.assert_array_equal(np.asarray(merged.labels)[keep], ref.labels.numpy())
  assert int(merged.gt_inds[3]) == -1 and boxes.shape == (8, 4)
  np.testing.assert_array_equal(is_gt, [1, 1, 1, 0, 0, 0, 0, 0])


# ---------------------------------------------------------------------------------------
# RPN targets and loss.


def mm_rpn_head(sampler_cfg: SamplerConfig) -> MMRPNHead:
  return MMRPNHead(
      in_channels=4, feat_channels=4,
      anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                            strides=STRIDES),
      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                      target_stds=[1.0] * 4),
      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
      loss_bbox=dict(type="L1Loss", loss_weight=1.0),
      train_cfg=ConfigDict(
          assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3,
                        min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
          sampler=dict(type="RandomSampler", num=sampler_cfg.num,
                       pos_fraction=sampler_cfg.pos_fraction, neg_pos_ub=-1,
                       add_gt_as_proposals=False),
          allowed_border=-1, pos_weight=-1, debug=False))


def test_rpn_targets_and_loss_equal_mmdet():
  """Two images on a 64x96 canvas with their own padded sizes (64x96, 32x64), 4 gt slots each
  (1 and 2 padded). The sampler's quota (4096) exceeds the anchors, so mmdet draws every
  positive and negative and the comparison is exact: labels, weights, deltas (1e-5), the
  batch ``avg_factor`` and both losses (1e-5)."""
  rng = np.random.default_rng(2)
  sizes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
  pad_shapes = [(64, 96), (32, 64)]
  cfg = SamplerConfig(num=4096, pos_fraction=0.5)
  gts = np.stack([random_gts(rng, 4, (64, 96)), random_gts(rng, 4, (32, 64))])
  gt_valid = np.array([[1, 1, 1, 0], [1, 0, 1, 0]], bool)
  anchors = np.concatenate(anchors_lib.multilevel_anchors(sizes))
  n = anchors.shape[0]
  cls = [rng.normal(size=(2, 3, h, w)).astype(np.float32) for h, w in sizes]
  reg = [rng.normal(size=(2, 12, h, w)).astype(np.float32) for h, w in sizes]

  def one(key, gt, valid, pad_hw):
    anchor_valid = assigner_lib.anchor_valid_flags(sizes, pad_hw, STRIDES)
    return targets_lib.rpn_targets(key, anchors, anchor_valid, gt, valid, sampler=cfg)

  ours = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), 2), gts, gt_valid,
                                jnp.array(pad_shapes))
  head = mm_rpn_head(cfg)
  metas = [dict(img_shape=s, pad_shape=s, batch_input_shape=(64, 96)) for s in pad_shapes]
  gt_instances = [InstanceData(bboxes=t(g[v]), labels=torch.zeros(int(v.sum()), dtype=torch.long))
                  for g, v in zip(gts, gt_valid)]
  anchor_list, valid_list = head.get_anchors(sizes, metas, device="cpu")
  labels, label_w, bbox_t, bbox_w, avg = head.get_targets(anchor_list, valid_list, gt_instances,
                                                          metas)
  flat = lambda levels: torch.cat(levels, 1).numpy()  # noqa: E731  per level (B, N_l, ...)
  np.testing.assert_array_equal(ours.labels, flat(labels))
  np.testing.assert_array_equal(ours.label_weights, flat(label_w))
  np.testing.assert_array_equal(ours.bbox_weights, flat(bbox_w))
  np.testing.assert_allclose(ours.bbox_targets, flat(bbox_t), atol=1e-5, rtol=1e-5)
  assert float(ours.avg_factor.sum()) == avg
  assert 0 < (np.asarray(ours.labels) == 0).sum() and ours.labels.shape == (2, n)

  ref = head.loss_by_feat([t(c) for c in cls], [t(r) for r in reg], gt_instances, metas)
  nhwc = lambda x, k: np.concatenate(  # noqa: E731  NCHW levels -> (B, N, k), (y, x, anchor)
      [l.transpose(0, 2, 3, 1).reshape(2, -1, k) for l in x], axis=1)
  loss_cls, loss_bbox = losses_lib.rpn_loss(nhwc(cls, 1)[..., 0], nhwc(reg, 4), ours)
  np.testing.assert_allclose(loss_cls, sum(ref["loss_rpn_cls"]).item(), rtol=1e-5)
  np.testing.assert_allclose(loss_bbox, sum(ref["loss_rpn_bbox"]).item(), rtol=1e-5)
  # The head's own per-level NHWC outputs give the same.
  levels = losses_lib.rpn_loss([c.transpose(0, 2, 3, 1) for c in cls],
                               [r.transpose(0, 2, 3, 1) for r in reg], ours)
  np.testing.assert_allclose(levels, (loss_cls, loss_bbox), rtol=1e-6)


def test_rpn_targets_official_sampler():
  """The official 256 at half positive on a full anchor grid: 256 weighted anchors per image
  (avg_factor 256) of which at most 128 positive, all inside the image's padded area."""
  sizes = [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
  anchors = np.concatenate(anchors_lib.multilevel_anchors(sizes))
  valid = assigner_lib.anchor_valid_flags(sizes, (96, 160), STRIDES)
  gts = jnp.array([[10, 10, 60, 50], [40, 20, 150, 90], [0, 0, 0, 0]], jnp.float32)
  out = jax.jit(targets_lib.rpn_targets)(jax.random.key(3), anchors, valid, gts,
                                         jnp.array([True, True, False]))
  weighted = np.asarray(out.label_weights) > 0
  num_pos = int((np.asarray(out.labels) == 0).sum())
  assert weighted.sum() == 256 and float(out.avg_factor) == 256
  assert 0 < num_pos <= 128 and np.all(np.asarray(valid)[weighted])
  assert np.all(np.asarray(out.bbox_weights).sum(1) == 4 * (np.asarray(out.labels) == 0))


# ---------------------------------------------------------------------------------------
# RCNN and mask targets and losses.


def blob_masks(rng, boxes, canvas_hw):
  """``(G, H, W)`` bool: an ellipse inside each box."""
  h, w = canvas_hw
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
  rx, ry = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
  scale = rng.uniform(0.7, 1.0, (len(boxes), 1, 1))
  return (((xx - cx[:, None, None]) / rx[:, None, None]) ** 2 +
          ((yy - cy[:, None, None]) / ry[:, None, None]) ** 2) <= scale


def test_rcnn_and_mask_targets_and_losses_equal_mmdet(torchvision_roi_align):
  """Two images, 100 proposals each (10 of the second padded) around 4 gt slots (one padded),
  the official assigner and sampler: fewer than 128 positives and 512 candidates, so mmdet
  draws them all. The same RoIs drawn as positives / negatives, labels, class-agnostic deltas
  (1e-5), mask targets (equal wherever mmdet's value is not within 1e-5 of 0.5), and
  loss_cls, loss_bbox, loss_mask on the same predictions (1e-5)."""
  rng = np.random.default_rng(4)
  canvas = (80, 112)
  g_pad, n = 4, 100
  gts = np.stack([random_gts(rng, g_pad, canvas, 20, 60) for _ in range(2)])
  gt_valid = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
  labels = rng.integers(0, 80, (2, g_pad))
  masks = np.stack([blob_masks(rng, g, canvas) for g in gts])
  props = np.stack([np.clip(jitter(rng, g[:3], n, 0.4), 0, [112, 80, 112, 80]) for g in gts])
  prop_valid = np.ones((2, n), bool)
  prop_valid[1, -10:] = False
  p_max = RCNN_SAMPLER.max_pos

  def one(key, prop, pv, gt, gv, lab, m):
    out = targets_lib.rcnn_targets(key, prop, pv, gt, gv, lab)
    mt = targets_lib.mask_targets(out.rois[:p_max], out.pos_gt_inds[:p_max],
                                  out.is_pos[:p_max], m)
    return out, mt

  ours, our_masks = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(5), 2), props,
                                           prop_valid, gts, gt_valid, labels, masks)
  assert ours.rois.shape == (2, 512, 4) and our_masks.shape == (2, p_max, 28, 28)

  # mmdet: assign the valid proposals to the valid gts, prepend the gts, draw.
  rcnn_cfg = ConfigDict(pos_weight=-1, mask_size=28)
  sampling, gt_instances = [], []
  for b in range(2):
    gv = gt_valid[b]
    gi = InstanceData(bboxes=t(gts[b][gv]), labels=t(labels[b][gv], torch.long),
                      masks=BitmapMasks(masks[b][gv].astype(np.uint8), *canvas))
    pi = InstanceData(priors=t(props[b][prop_valid[b]]))
    res = mm_sampler(RCNN_SAMPLER).sample(mm_assigner(RCNN_ASSIGNER).assign(pi, gi), pi, gi)
    sampling.append(res)
    gt_instances.append(gi)
  bbox_head = MMBBoxHead(in_channels=4, fc_out_channels=8, roi_feat_size=7, num_classes=80,
                         bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                         target_stds=[0.1, 0.1, 0.2, 0.2]),
                         reg_class_agnostic=False,
                         loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                       loss_weight=1.0),
                         loss_bbox=dict(type="L1Loss", loss_weight=1.0))
  ref_t = bbox_head.get_targets(sampling, rcnn_cfg)

  # Pair each RoI mmdet drew (its positives, then negatives) with our slot holding the same
  # box with the same role.
  our_rows = []
  for b in range(2):
    res = sampling[b]
    mm_drawn = torch.cat([res.pos_inds, res.neg_inds]).numpy()
    num_pos_b, num_drawn = res.pos_inds.numel(), len(mm_drawn)
    assert (int(ours.num_pos[b]), int(ours.num_neg[b])) == (num_pos_b, num_drawn - num_pos_b)
    assert num_pos_b > 10 and num_drawn - num_pos_b > 10   # proposals on both sides, not only gts
    mm_boxes = res.priors.numpy()
    our_boxes = np.asarray(ours.rois[b])
    order = []
    for j in range(num_drawn):
      hit = np.flatnonzero(np.all(our_boxes[:num_drawn] == mm_boxes[j], axis=1) &
                           (np.asarray(ours.is_pos[b][:num_drawn]) == (j < num_pos_b)))
      assert len(hit) >= 1, f"image {b}: mmdet's RoI {j} was not drawn"
      order.append(hit[0])
    assert len(set(order)) == num_drawn
    our_rows.append((b, np.array(order)))
  labels_mm, label_w_mm, bbox_t_mm, bbox_w_mm = (x.numpy() for x in ref_t)
  pick = lambda x: np.concatenate([np.asarray(x)[b][o] for b, o in our_rows])  # noqa: E731
  np.testing.assert_array_equal(pick(ours.labels), labels_mm)
  np.testing.assert_array_equal(pick(ours.label_weights), label_w_mm)
  np.testing.assert_array_equal(pick(ours.bbox_weights), bbox_w_mm)
  np.testing.assert_allclose(pick(ours.bbox_targets), bbox_t_mm, atol=1e-5, rtol=1e-5)
  assert float(ours.valid.sum()) == len(labels_mm)

  # Losses on the same predictions: random per drawn RoI, garbage in our padding slots.
  total = len(labels_mm)
  cls_mm = rng.normal(size=(total, 81)).astype(np.float32)
  reg_mm = rng.normal(size=(total, 320)).astype(np.float32)
  cls_ours = rng.normal(size=(2, 512, 81)).astype(np.float32) * 100
  reg_ours = rng.normal(size=(2, 512, 320)).astype(np.float32) * 100
  start = 0
  for b, order in our_rows:
    cls_ours[b, order] = cls_mm[start:start + len(order)]
    reg_ours[b, order] = reg_mm[start:start + len(order)]
    start += len(order)
  rois = bbox2roi([res.priors for res in sampling])
  ref_loss = bbox_head.loss(t(cls_mm), t(reg_mm), rois, *ref_t)
  loss_cls, loss_bbox = losses_lib.rcnn_loss(cls_ours, reg_ours, ours)
  np.testing.assert_allclose(loss_cls, ref_loss["loss_cls"].item(), rtol=1e-5)
  np.testing.assert_allclose(loss_bbox, ref_loss["loss_bbox"].item(), rtol=1e-5)

  # Masks: mmdet's targets of its positives, and FCNMaskHead's loss.
  mask_head = MMMaskHead(num_convs=1, in_channels=4, conv_out_channels=4, num_classes=80)
  pos_total = sum(res.pos_inds.numel() for res in sampling)
  mask_mm = rng.normal(size=(pos_total, 80, 28, 28)).astype(np.float32)
  ref_mask = mask_head.loss_and_target(t(mask_mm), sampling, gt_instances, rcnn_cfg)
  mask_ours = rng.normal(size=(2, p_max, 28, 28, 80)).astype(np.float32) * 100
  start = 0
  for b, order in our_rows:
    pos = order[: sampling[b].pos_inds.numel()]
    mask_ours[b, pos] = mask_mm[start:start + len(pos)].transpose(0, 2, 3, 1)
    start += len(pos)
  pos_pick = np.concatenate([np.asarray(our_masks)[b][o[: sampling[b].pos_inds.numel()]]
                             for b, o in our_rows])
  soft = mask_target([res.pos_priors for res in sampling],
                     [res.pos_assigned_gt_inds for res in sampling],
                     [gi.masks for gi in gt_instances],
                     ConfigDict(mask_size=28, soft_mask_target=True)).numpy()
  decided = np.abs(soft - 0.5) > 1e-5   # summation order can flip an exact 0.5 (1 in 1e5)
  np.testing.assert_array_equal(pos_pick[decided], ref_mask["mask_targets"].numpy()[decided])
  loss_mask = losses_lib.mask_loss(mask_ours, our_masks, ours.labels[:, :p_max],
                                   ours.is_pos[:, :p_max])
  np.testing.assert_allclose(loss_mask, ref_mask["loss_mask"]["loss_mask"].item(), rtol=1e-5)
  # Logits already of each RoI's class (what the model's ``mask_outputs`` returns).
  own = np.take_along_axis(mask_ours, np.asarray(ours.labels[:, :p_max])[..., None, None, None]
                           .clip(0, 79), axis=-1)[..., 0]
  np.testing.assert_allclose(losses_lib.mask_loss(own, our_masks, ours.labels[:, :p_max],
                                                  ours.is_pos[:, :p_max]), loss_mask, rtol=1e-6)


def test_mask_targets_equal_mmdet_mask_target(torchvision_roi_align):
  """RoIs from 3 to 90 px (1 to 4 adaptive samples per bin), some past the mask's edge (clipped)
  or degenerate: the soft RoIAlign values within 1e-5 and the binary targets equal wherever the
  value is not within 1e-5 of 0.5. ``mask_hw`` on a larger canvas gives the small mask's
  targets (mmdet 2.11's per-image mask size)."""
  rng = np.random.default_rng(6)
  h, w = 70, 90
  gt_boxes = random_gts(rng, 3, (h, w), 20, 60)
  masks = blob_masks(rng, gt_boxes, (h, w)) | (rng.uniform(size=(3, h, w)) < 0.05)
  xy = rng.uniform(-10, 80, (40, 2))
  wh = rng.uniform(3, 90, (40, 2))
  rois = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  rois[0] = [10, 10, 10, 30]   # zero width
  rois[1] = [0, 0, w, h]       # the whole mask
  gt_inds = rng.integers(0, 3, 40)
  valid = np.ones(40, bool)

  ours = {}
  for binarize in (False, True):
    ours[binarize] = np.asarray(jax.jit(targets_lib.mask_targets, static_argnames="binarize")(
        rois, gt_inds, valid, masks, binarize=binarize))
  ref = {}
  for binarize in (False, True):
    cfg = ConfigDict(mask_size=28, soft_mask_target=not binarize)
    ref[binarize] = mask_target([t(rois)], [t(gt_inds, torch.long)],
                                [BitmapMasks(masks.astype(np.uint8), h, w)], cfg).numpy()
  np.testing.assert_allclose(ours[False], ref[False], atol=1e-5)
  decided = np.abs(ref[False] - 0.5) > 1e-5
  np.testing.assert_array_equal(ours[True][decided], ref[True][decided])
  assert 0.05 < ours[True].mean() < 0.95

  canvas = np.zeros((3, h + 26, w + 38), bool)
  canvas[:, :h, :w] = masks
  padded = targets_lib.mask_targets(rois, gt_inds, valid, canvas, mask_hw=jnp.array([h, w]),
                                    binarize=False)
  np.testing.assert_allclose(padded, ref[False], atol=1e-5)


@pytest.mark.parametrize("gt_slots", [0, 2])
def test_losses_without_positives_are_zero_and_finite(gt_slots):
  """No gt in the image (no slot, or only padded ones of zero size, whose deltas would be
  ``log 0``): every RoI negative, box and mask losses 0 (mmdet's ``sum()`` of an empty
  selection), the classification loss finite, gradients finite."""
  props = jnp.asarray(random_gts(np.random.default_rng(7), 50, (64, 64)))

  @jax.jit
  def run(cls, reg, mask_logits):
    out = targets_lib.rcnn_targets(jax.random.key(0), props, jnp.ones(50, bool),
                                   jnp.zeros((gt_slots, 4)), jnp.zeros(gt_slots, bool),
                                   jnp.zeros(gt_slots, jnp.int32))

    def total(cls, reg, mask_logits):
      lc, lb = losses_lib.rcnn_loss(cls, reg, out)
      masks = targets_lib.mask_targets(out.rois[:128], out.pos_gt_inds[:128],
                                       out.is_pos[:128], jnp.zeros((gt_slots, 64, 64), bool))
      lm = losses_lib.mask_loss(mask_logits, masks, out.labels[:128], out.is_pos[:128])
      return lc + lb + lm, (lc, lb, lm)

    return out, jax.grad(total, argnums=(0, 1, 2), has_aux=True)(cls, reg, mask_logits)

  out, (grads, (lc, lb, lm)) = run(jnp.ones((512, 81)), jnp.ones((512, 320)),
                                   jnp.ones((128, 28, 28, 80)))
  assert int(out.num_pos) == 0 and int(out.num_neg) == 50
  assert np.all(np.asarray(out.labels)[:50] == 80) and np.all(np.isfinite(out.bbox_targets))
  assert float(lb) == 0 and float(lm) == 0 and np.isfinite(float(lc)) and float(lc) > 0
  assert all(np.all(np.isfinite(g)) for g in grads)
