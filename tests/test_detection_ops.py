"""Static-shape detection ops against their references: mmdet 3.3.0's ``AnchorGenerator``,
``DeltaXYWHBBoxCoder`` and ``SingleRoIExtractor.map_roi_levels``; torchvision 0.29's
``nms``, ``batched_nms`` and ``roi_align(aligned=True)``.

Anchors are numpy constants: equal bit for bit. The coder runs under XLA, whose ``log`` /
``exp`` differ from PyTorch's by one ulp and which fuses ``a + b * c`` into one multiply-add
on CPU; so the coder is compared in ulps (encode's dx, dy are exact for the RPN's unit
stds). NMS keeps the same
indices in the same order, ties included. RoIAlign is within 1e-5 on features in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from swin_jax.models.detection import anchors as anchors_lib
from swin_jax.models.detection import box_coder
from swin_jax.models.detection import nms as nms_lib
from swin_jax.models.detection import roi_align as roi_lib

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

STRIDES = [4, 8, 16, 32, 64]
# Feature maps of a 52x84 image after Swin's ceil padding and the FPN's P6: odd sizes.
FEATMAP_SIZES = [(13, 21), (7, 11), (4, 6), (2, 3), (1, 2)]


def mmdet():
  """mmdet's ``(AnchorGenerator, DeltaXYWHBBoxCoder, SingleRoIExtractor)``, imported after
  the ``mmcv._ext`` stand-in."""
  pytest.importorskip("mmdet")
  # pylint: disable=import-outside-toplevel,unused-import
  import mm_stubs  # noqa: F401
  from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
  from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
  from mmdet.models.task_modules.prior_generators import AnchorGenerator
  return AnchorGenerator, DeltaXYWHBBoxCoder, SingleRoIExtractor


def random_boxes(rng, n, low=0.0, high=100.0, min_size=1.0, max_size=40.0):
  xy = rng.uniform(low, high, (n, 2))
  wh = rng.uniform(min_size, max_size, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def ulps(a, b):
  """Elementwise distance in units of the float32 spacing at the larger magnitude."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32))


# ---------------------------------------------------------------------------------------
# Anchors.


def test_anchors_equal_mmdet_anchor_generator_bit_for_bit():
  AnchorGenerator, _, _ = mmdet()
  ref = AnchorGenerator(strides=STRIDES, ratios=[0.5, 1.0, 2.0], scales=[8])
  for ours, theirs in zip([anchors_lib.base_anchors(s) for s in STRIDES], ref.base_anchors):
    np.testing.assert_array_equal(ours, theirs.numpy())
  grids = ref.grid_priors(FEATMAP_SIZES, device="cpu")
  ours = anchors_lib.multilevel_anchors(FEATMAP_SIZES)
  for level, (a, b) in enumerate(zip(ours, grids)):
    assert a.dtype == np.float32 and a.shape == (FEATMAP_SIZES[level][0] *
                                                 FEATMAP_SIZES[level][1] * 3, 4)
    np.testing.assert_array_equal(a, b.numpy(), err_msg=f"level {level}")


def test_anchors_are_centred_on_cell_corners_in_y_x_anchor_order():
  """Level 0 (stride 4, base 32): the ratio-1 anchor at cell (y=2, x=1) is the 32x32 square
  centred at (4, 8), no half-stride offset; ratio 0.5 is wide, ratio 2 tall."""
  level0 = anchors_lib.multilevel_anchors(FEATMAP_SIZES)[0].reshape(13, 21, 3, 4)
  np.testing.assert_array_equal(level0[2, 1, 1], [4 - 16, 8 - 16, 4 + 16, 8 + 16])
  w = level0[0, 0, :, 2] - level0[0, 0, :, 0]
  h = level0[0, 0, :, 3] - level0[0, 0, :, 1]
  np.testing.assert_allclose(h / w, [0.5, 1.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(np.sqrt(w * h), 32.0, rtol=1e-6)
  assert anchors_lib.num_base_anchors() == 3


# ---------------------------------------------------------------------------------------
# DeltaXYWHBBoxCoder.


@pytest.mark.parametrize("stds", [box_coder.RPN_STDS, box_coder.RCNN_STDS], ids=["rpn", "rcnn"])
def test_encode_matches_mmdet(stds):
  _, DeltaXYWHBBoxCoder, _ = mmdet()
  rng = np.random.default_rng(0)
  boxes, targets = random_boxes(rng, 2000, 0, 800, 1, 300), random_boxes(rng, 2000, 0, 800, 1, 300)
  ref = DeltaXYWHBBoxCoder(target_stds=list(stds)).encode(torch.from_numpy(boxes),
                                                          torch.from_numpy(targets)).numpy()
  ours = np.asarray(jax.jit(box_coder.encode, static_argnums=2)(boxes, targets, stds))
  if stds == box_coder.RPN_STDS:
    np.testing.assert_array_equal(ours[:, :2], ref[:, :2])
  # XLA's log is not PyTorch's (1 ulp), and it divides by constant stds as a multiplication
  # by their reciprocals (1 more).
  assert ulps(ours, ref).max() <= 2


@pytest.mark.parametrize("stds", [box_coder.RPN_STDS, box_coder.RCNN_STDS], ids=["rpn", "rcnn"])
@pytest.mark.parametrize("max_shape", [None, (600, 700)], ids=["unclipped", "clipped"])
def test_decode_matches_mmdet_with_class_specific_deltas(stds, max_shape):
  """(N, 4) boxes, (N, 4K) deltas with K = 3 classes; deltas up to |10| run into the
  wh_ratio_clip clamp and boxes into the image border."""
  _, DeltaXYWHBBoxCoder, _ = mmdet()
  rng = np.random.default_rng(1)
  boxes = random_boxes(rng, 1000, 0, 800, 1, 300)
  deltas = np.clip(rng.standard_normal((1000, 12)) * 3, -10, 10).astype(np.float32)
  coder = DeltaXYWHBBoxCoder(target_stds=list(stds))
  ref = coder.decode(torch.from_numpy(boxes), torch.from_numpy(deltas),
                     max_shape=max_shape).numpy()
  ours = np.asarray(jax.jit(lambda b, d: box_coder.decode(b, d, stds, max_shape=max_shape))(
      boxes, deltas))
  assert ours.shape == ref.shape == (1000, 12)
  # A coordinate is centre -/+ half size, so its rounding error is a few ulps of the larger
  # of the two (of the box before clipping): measured against a float64 decode, mmdet's own
  # float32 result is up to 6.5 such ulps off, and ours is as close.
  unclipped = coder.decode(torch.from_numpy(boxes), torch.from_numpy(deltas)).numpy()
  scale = np.abs(unclipped.reshape(-1, 3, 4)).max(-1, keepdims=True).astype(np.float32)
  err = np.abs(ours.reshape(-1, 3, 4) - ref.reshape(-1, 3, 4)) / np.spacing(scale)
  assert err.max() <= 8
  if max_shape is not None:
    assert ours[:, 0::2].max() == 700 and ours[:, 1::2].max() == 600 and ours.min() == 0
    np.testing.assert_array_equal(ours == 0, ref == 0)


def test_decode_clamps_the_log_size_ratio_at_log_1000_over_16():
  box = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)   # w 20, h 40
  bound = float(np.abs(np.log(16 / 1000)))
  big = box_coder.decode(box, np.array([[0, 0, 9.0, -9.0]], np.float32))
  at_bound = box_coder.decode(box, np.array([[0, 0, bound, -bound]], np.float32))
  np.testing.assert_array_equal(big, at_bound)
  w, h = float(big[0, 2] - big[0, 0]), float(big[0, 3] - big[0, 1])
  np.testing.assert_allclose([w, h], [20 * 1000 / 16, 40 * 16 / 1000], rtol=1e-5)


def test_decode_takes_per_image_sizes_as_an_array_under_jit():
  rng = np.random.default_rng(2)
  boxes = random_boxes(rng, 2 * 50, 0, 300, 1, 200).reshape(2, 50, 4)
  deltas = (rng.standard_normal((2, 50, 4)) * 2).astype(np.float32)
  hw = np.array([[120, 200], [250, 90]], np.float32)
  batched = jax.jit(lambda b, d, s: box_coder.decode(b, d, max_shape=s))(boxes, deltas, hw)
  for i in range(2):
    single = box_coder.decode(boxes[i], deltas[i], max_shape=tuple(hw[i]))
    np.testing.assert_array_equal(batched[i], single)
    assert batched[i][:, 0::2].max() <= hw[i, 1] and batched[i][:, 1::2].max() <= hw[i, 0]


def test_encode_then_decode_returns_the_targets():
  rng = np.random.default_rng(3)
  boxes, targets = random_boxes(rng, 200), random_boxes(rng, 200)
  for stds in (box_coder.RPN_STDS, box_coder.RCNN_STDS):
    back = box_coder.decode(boxes, box_coder.encode(boxes, targets, stds), stds)
    np.testing.assert_allclose(back, targets, atol=1e-4)


# ---------------------------------------------------------------------------------------
# NMS.


def tied_problem(seed, n=300, classes=None):
  """Random boxes where a fifth are exact copies of others and scores take 11 values, so
  equal scores on overlapping boxes are common and decide which copy survives."""
  rng = np.random.default_rng(seed)
  boxes = random_boxes(rng, n)
  boxes[rng.integers(0, n, n // 5)] = boxes[rng.integers(0, n, n // 5)]
  scores = np.round(rng.uniform(0, 1, n), 1).astype(np.float32)
  idxs = None if classes is None else rng.integers(0, classes, n)
  return boxes, scores, idxs


def assert_same_kept(indices, valid, reference, max_output):
  indices, valid = np.asarray(indices), np.asarray(valid)
  expected = reference[:max_output]
  assert indices.shape == valid.shape == (max_output,)
  assert int(valid.sum()) == len(expected)
  assert np.all(valid[:len(expected)])           # kept entries first, then padding
  np.testing.assert_array_equal(indices[:len(expected)], expected)
  np.testing.assert_array_equal(indices[len(expected):], 0)


@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_nms_keeps_torchvisions_indices_in_its_order_ties_included(iou_threshold):
  boxes, scores, _ = tied_problem(seed=4)
  ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                            iou_threshold).numpy()
  run = jax.jit(nms_lib.nms, static_argnames=("iou_threshold", "max_output", "tile"))
  # tile 64: five tiles, so boxes are suppressed across tiles as well as within one.
  for max_output in (40, 320):                  # fewer than kept; more than all boxes
    indices, valid = run(boxes, scores, iou_threshold=iou_threshold, max_output=max_output,
                         tile=64)
    assert_same_kept(indices, valid, ref, max_output)


def test_nms_visits_equal_scores_by_index_as_torchvision_does():
  """Three copies of a box with equal scores: the first index survives; a later, higher
  score wins over them."""
  box = [0.0, 0.0, 10.0, 10.0]
  boxes = np.array([box, box, [50, 50, 60, 60], box], np.float32)
  for scores in ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.9, 0.7]):
    scores = np.array(scores, np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    indices, valid = nms_lib.nms(boxes, scores, 0.5, 4)
    assert_same_kept(indices, valid, ref, 4)
  np.testing.assert_array_equal(ref, [2, 3])


def test_nms_threshold_is_strict_and_compared_as_torchvision_compares_it():
  """IoU exactly 0.5 (integer boxes): not suppressed at 0.5, suppressed below it. The
  float32 bound of 0.7 is the largest float32 under 0.7."""
  boxes = np.array([[0, 0, 30, 10], [10, 0, 40, 10]], np.float32)   # IoU 20 / 40
  scores = np.array([0.9, 0.8], np.float32)
  for threshold in (0.5, 0.49):
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                              threshold).numpy()
    assert_same_kept(*nms_lib.nms(boxes, scores, threshold, 2), ref, 2)
  assert float(nms_lib.iou_threshold_bound(0.7)) <= 0.7 < float(
      np.nextafter(nms_lib.iou_threshold_bound(0.7), np.float32(1)))


def test_nms_of_a_padded_array_equals_torchvision_on_the_valid_boxes():
  boxes, scores, _ = tied_problem(seed=5, n=200)
  valid = np.random.default_rng(6).uniform(size=200) < 0.7
  garbage = boxes.copy()
  garbage[~valid] = [0, 0, 1000, 1000]                 # would suppress everything
  scores_in = np.where(valid, scores, 2.0).astype(np.float32)   # and come first
  ref = torchvision.ops.nms(torch.from_numpy(boxes[valid]), torch.from_numpy(scores[valid]),
                            0.7).numpy()
  indices, is_valid = nms_lib.nms(garbage, scores_in, 0.7, 200, valid=valid)
  assert_same_kept(indices, is_valid, np.flatnonzero(valid)[ref], 200)


def test_batched_nms_matches_torchvision_per_category():
  boxes, scores, idxs = tied_problem(seed=7, classes=5)
  ref = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                    torch.from_numpy(idxs), 0.5).numpy()
  plain = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
  assert len(ref) > len(plain)  # categories do not suppress each other
  indices, valid = jax.jit(nms_lib.batched_nms, static_argnums=(3, 4))(boxes, scores, idxs,
                                                                      0.5, 300)
  assert_same_kept(indices, valid, ref, 300)


# ---------------------------------------------------------------------------------------
# RoIAlign.


def roi_problem(seed, batch=2, height=13, width=17, channels=8, n=40, image=(52, 68)):
  """Features in [-1, 1] and boxes in image coordinates: inside, across the border, fully
  outside, tiny and zero-size."""
  rng = np.random.default_rng(seed)
  feats = rng.uniform(-1, 1, (batch, height, width, channels)).astype(np.float32)
  xy = rng.uniform(-15, max(image) + 5, (n, 2))
  wh = rng.uniform(0, 50, (n, 2))
  wh[:3] = [[0, 0], [0.3, 0.2], [1, 1]]
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  return feats, boxes, rng.integers(0, batch, n).astype(np.int32)


def tv_roi_align(feats, boxes, batch_idx, output_size, scale, sampling_ratio):
  rois = np.concatenate([batch_idx[:, None].astype(np.float32), boxes], axis=1)
  out = torchvision.ops.roi_align(torch.from_numpy(feats).permute(0, 3, 1, 2),
                                  torch.from_numpy(rois), output_size, scale, sampling_ratio,
                                  aligned=True)
  return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("output_size", [7, 14])
def test_roi_align_matches_torchvision_aligned(output_size):
  feats, boxes, batch_idx = roi_problem(seed=8)
  ref = tv_roi_align(feats, boxes, batch_idx, output_size, 0.25, 2)
  ours = jax.jit(roi_lib.roi_align, static_argnums=(3, 4, 5))(feats, boxes, batch_idx,
                                                             output_size, 0.25, 2)
  assert ours.shape == ref.shape == (40, output_size, output_size, 8)
  assert np.abs(np.asarray(ours) - ref).max() <= 1e-5


def test_roi_align_rejects_the_adaptive_sampling_ratio():
  feats, boxes, batch_idx = roi_problem(seed=9, n=3)
  with pytest.raises(ValueError, match="adaptive"):
    roi_lib.roi_align(feats, boxes, batch_idx, 7, 0.25, sampling_ratio=0)


def test_map_roi_levels_matches_mmdet():
  _, _, SingleRoIExtractor = mmdet()
  extractor = SingleRoIExtractor(
      roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=2, use_torchvision=True),
      out_channels=8, featmap_strides=[4, 8, 16, 32])
  rng = np.random.default_rng(10)
  sides = np.array([0, 1, 55.9, 56, 111.9, 112, 112.1, 223.9, 224, 447.9, 448, 449, 1000],
                   np.float32)
  square = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
  boxes = np.concatenate([square, random_boxes(rng, 300, 0, 800, 1, 700)]).astype(np.float32)
  rois = torch.from_numpy(np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], 1))
  ref = extractor.map_roi_levels(rois, 4).numpy()
  ours = np.asarray(jax.jit(roi_lib.map_roi_levels, static_argnums=1)(boxes, 4))
  np.testing.assert_array_equal(ours, ref)
  np.testing.assert_array_equal(ours[:len(sides)], [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
  assert set(np.unique(ours)) == {0, 1, 2, 3}


def test_multilevel_roi_align_matches_mmdet_single_roi_extractor():
  """mmdet's extractor (its RoIAlign through torchvision, sampling ratio 2) on a 4-level
  pyramid of a 256x320 image, boxes of every level in a batch of 2."""
  _, _, SingleRoIExtractor = mmdet()
  extractor = SingleRoIExtractor(
      roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=2, use_torchvision=True),
      out_channels=8, featmap_strides=[4, 8, 16, 32])
  rng = np.random.default_rng(11)
  feats = [rng.uniform(-1, 1, (2, 256 // s, 320 // s, 8)).astype(np.float32)
           for s in (4, 8, 16, 32)]
  boxes = random_boxes(rng, 60, -20, 250, 2, 320)
  boxes[:4] = [[0, 0, 460, 460], [-100, 50, 500, 500], [10, 10, 20, 20], [100, 60, 330, 290]]
  batch_idx = rng.integers(0, 2, 60).astype(np.int32)
  assert len(set(np.asarray(roi_lib.map_roi_levels(boxes, 4)))) == 4
  rois = torch.from_numpy(np.concatenate([batch_idx[:, None].astype(np.float32), boxes], 1))
  with torch.no_grad():
    ref = extractor([torch.from_numpy(f).permute(0, 3, 1, 2) for f in feats], rois)
  ref = ref.permute(0, 2, 3, 1).numpy()
  ours = jax.jit(roi_lib.multilevel_roi_align, static_argnums=3)(feats, boxes, batch_idx, 7)
  assert ours.shape == ref.shape == (60, 7, 7, 8)
  assert np.abs(np.asarray(ours) - ref).max() <= 1e-5


# ---------------------------------------------------------------------------------------
# Static shapes.


def test_every_op_traces_with_abstract_inputs_to_fixed_shapes():
  """Tracing with shapes alone (no values) succeeds only when no shape depends on data;
  the outputs are padded to the requested sizes."""
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)    # noqa: E731
  boolean = jax.ShapeDtypeStruct((500,), jnp.bool_)
  idx, valid = jax.eval_shape(lambda b, s, v: nms_lib.nms(b, s, 0.7, 100, valid=v),
                              f32(500, 4), f32(500), boolean)
  assert idx.shape == valid.shape == (100,) and idx.dtype == jnp.int32
  idx, _ = jax.eval_shape(lambda b, s, c: nms_lib.batched_nms(b, s, c, 0.5, 100),
                          f32(500, 4), f32(500), i32(500))
  assert idx.shape == (100,)
  out = jax.eval_shape(lambda f, b, i: roi_lib.roi_align(f, b, i, 14, 0.25),
                       f32(2, 20, 24, 16), f32(30, 4), i32(30))
  assert out.shape == (30, 14, 14, 16)
  pyramid = [f32(2, 32 // s, 40 // s, 16) for s in (1, 2, 4, 8)]
  out = jax.eval_shape(lambda f, b, i: roi_lib.multilevel_roi_align(f, b, i, 7),
                       pyramid, f32(30, 4), i32(30))
  assert out.shape == (30, 7, 7, 16)
  boxes = jax.eval_shape(lambda b, d, s: box_coder.decode(b, d, box_coder.RCNN_STDS,
                                                         max_shape=s),
                         f32(2, 30, 4), f32(2, 30, 320), f32(2, 2))
  assert boxes.shape == (2, 30, 320)
  # One program for any values: a second call with other data does not recompile.
  run = jax.jit(nms_lib.nms, static_argnums=(2, 3))
  a, b, _ = tied_problem(seed=12, n=64)
  c, d, _ = tied_problem(seed=13, n=64)
  before = run._cache_size()  # pylint: disable=protected-access
  run(a, b, 0.7, 16)
  run(c, d, 0.7, 16)
  assert run._cache_size() == before + 1  # pylint: disable=protected-access
