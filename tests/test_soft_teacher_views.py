"""Soft Teacher's views and box transfer: the matrices against the boxes and images they
describe, teacher -> student box round trips, the official colour formulas, and the draw
statistics of the official pipelines (``configs/soft_teacher/base.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from swin_jax.data import detection_transforms as dt
from swin_jax.data import mmseg_transforms as mt
from swin_jax.data import soft_teacher_views as stv
from swin_jax.models.detection.box_transform import relative_matrix, transform_boxes

# Small views so that each draw is cheap: 60x80 sources resized to long 96..128.
SMALL_RANGE = ((96, 64), (128, 112))
CANVAS = (128, 128)
SOURCE_HW = (60, 80)
# chi-square 0.1% points: 3 and 8 degrees of freedom.
CHI2_3, CHI2_8 = 16.27, 26.12


def identity(example):
  return example


def official_transform_bboxes(boxes, matrix, out_hw):
  """``Transform2D.transform_bboxes`` in plain numpy (float64): ``bbox2points`` corner
  order, ``M @ p``, divide by the third coordinate, ``points2bbox``'s min / max / clamp."""
  boxes = np.asarray(boxes, np.float64)
  x1, y1, x2, y2 = boxes.T
  points = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], 1).reshape(-1, 2)
  points = np.concatenate([points, np.ones((len(points), 1))], 1)
  points = (np.asarray(matrix, np.float64) @ points.T).T
  points = (points[:, :2] / points[:, 2:3]).reshape(-1, 4, 2)
  lo, hi = points.min(1), points.max(1)
  h, w = out_hw
  return np.stack([np.clip(lo[:, 0], 0, w), np.clip(lo[:, 1], 0, h),
                   np.clip(hi[:, 0], 0, w), np.clip(hi[:, 1], 0, h)], 1)


def random_boxes(rng, n, hw):
  h, w = hw
  x = np.sort(rng.uniform(0, w, (n, 2)), 1)
  y = np.sort(rng.uniform(0, h, (n, 2)), 1)
  return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1).astype(np.float32)


def random_image(seed, hw=SOURCE_HW):
  return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


# ------------------------------------------------------------------------ box_transform


def test_transform_boxes_is_the_official_rule_and_jits():
  rng = np.random.default_rng(0)
  b, n = 6, 9
  matrices = np.eye(3) + rng.normal(0, 0.3, (b, 3, 3))
  matrices[:, :2, 2] = rng.uniform(-40, 40, (b, 2))
  matrices[:, 2] = [0, 0, 1]
  matrices[:3, 2, :2] = rng.uniform(-2e-3, 2e-3, (3, 2))     # projective rows too
  matrices = matrices.astype(np.float32)
  boxes = np.stack([random_boxes(rng, n, (90, 120)) for _ in range(b)])
  out_hw = np.array([[100, 130], [80, 60], [120, 90], [64, 64], [50, 200], [90, 120]],
                    np.int32)
  expected = np.stack([official_transform_bboxes(boxes[i], matrices[i], out_hw[i])
                       for i in range(b)])
  assert (expected == 0).any() and (expected[..., 2] == out_hw[:, None, 1]).any()  # clamps
  eager = transform_boxes(boxes, matrices, out_hw)                    # numpy in
  np.testing.assert_allclose(np.asarray(eager), expected, rtol=1e-5, atol=1e-3)
  jitted = jax.jit(transform_boxes)(jnp.asarray(boxes), jnp.asarray(matrices),
                                    jnp.asarray(out_hw))
  np.testing.assert_allclose(np.asarray(jitted), expected, rtol=1e-5, atol=1e-3)
  mapped = jax.vmap(transform_boxes)(boxes, matrices, out_hw)
  np.testing.assert_allclose(np.asarray(mapped), expected, rtol=1e-5, atol=1e-3)
  one = transform_boxes(boxes[0], matrices[0], out_hw[0])             # no batch dims
  np.testing.assert_allclose(np.asarray(one), expected[0], rtol=1e-5, atol=1e-3)


def test_relative_matrix_is_to_times_inverse_from():
  rng = np.random.default_rng(1)
  a = (np.eye(3) + rng.normal(0, 0.3, (2, 4, 3, 3))).astype(np.float32)
  c = (np.eye(3) + rng.normal(0, 0.3, (2, 4, 3, 3))).astype(np.float32)
  expected = c.astype(np.float64) @ np.linalg.inv(a.astype(np.float64))
  np.testing.assert_allclose(np.asarray(relative_matrix(a, c)), expected, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(jax.jit(relative_matrix)(a, c)), expected,
                             rtol=1e-4, atol=1e-4)
  # Broadcasts one 'from' matrix over a batch of 'to' matrices.
  np.testing.assert_allclose(np.asarray(relative_matrix(a[0, 0], c)), c @ np.linalg.inv(
      a[0, 0].astype(np.float64)), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- matrix conventions


def test_flip_matrix_is_detection_transforms_flip():
  rng = np.random.default_rng(2)
  boxes = random_boxes(rng, 20, (50, 70))
  mapped = transform_boxes(boxes, stv.flip_matrix(70), (50, 70))
  np.testing.assert_allclose(np.asarray(mapped), dt.flip_boxes(boxes, 70), atol=1e-5)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_resize_flip_matrix_moves_boxes_as_the_resize_and_flip(flip_prob):
  rng = np.random.default_rng(3)
  for seed in range(8):
    source = {"image": random_image(seed), "boxes": random_boxes(rng, 7, SOURCE_HW),
              "labels": np.arange(7, dtype=np.int32)}
    example, matrix = stv.resize_flip(source, np.random.default_rng(seed), SMALL_RANGE,
                                      flip_prob, CANVAS)
    nh, nw = example["image"].shape[:2]
    h_scale, w_scale = example["scale_factor"]                   # keep-ratio's factors
    assert abs(matrix[0, 0]) == w_scale and matrix[1, 1] == h_scale
    assert w_scale == np.float32(nw / SOURCE_HW[1]) and h_scale == np.float32(
        nh / SOURCE_HW[0])
    assert (matrix[0, 0] < 0) == (flip_prob == 1.0)
    mapped = transform_boxes(source["boxes"], matrix, (nh, nw))
    np.testing.assert_allclose(np.asarray(mapped), example["boxes"], atol=1e-3)


def test_geometric_matrices_are_the_official_ones():
  hw = (60, 80)
  cx, cy = 79 / 2, 59 / 2
  for angle in (17.0, -29.5):
    # cv2.getRotationMatrix2D(centre, -angle, 1): alpha = cos, beta = sin of -angle.
    alpha, beta = np.cos(np.deg2rad(-angle)), np.sin(np.deg2rad(-angle))
    expected = [[alpha, beta, (1 - alpha) * cx - beta * cy],
                [-beta, alpha, beta * cx + (1 - alpha) * cy], [0, 0, 1]]
    np.testing.assert_allclose(stv.geometric_matrix("rotate", angle, hw), expected,
                               atol=1e-12)
  # A positive angle turns clockwise on screen: the top-left corner goes to the top-right.
  corner = stv.rotate_matrix(90.0, (64, 64)) @ [0, 0, 1]
  np.testing.assert_allclose(corner[:2], [63, 0], atol=1e-9)
  np.testing.assert_allclose(stv.geometric_matrix("shear_x", 20.0, hw)[0, 1],
                             np.float32(np.tanh(-20 * np.pi / 180)))
  np.testing.assert_allclose(stv.geometric_matrix("shear_y", 20.0, hw)[1, 0],
                             np.float32(np.tanh(20 * np.pi / 180)))
  np.testing.assert_allclose(stv.geometric_matrix("translate_x", 0.05, hw)[0, 2], 4.0)
  np.testing.assert_allclose(stv.geometric_matrix("translate_y", -0.1, hw)[1, 2], -6.0)


def test_warp_follows_opencv_pixel_centres_and_fills_125():
  image = random_image(4, (40, 56))
  np.testing.assert_array_equal(stv.warp(image, np.eye(3)), image)
  shifted = stv.warp(image, stv.translate_matrix(5, -3))
  np.testing.assert_array_equal(shifted[:-3, 5:], image[3:, :-5])
  assert (shifted[:, :5] == 125).all() and (shifted[-3:] == 125).all()
  # OpenCV's centre ((w-1)/2, (h-1)/2): a half turn is the image reversed, to the pixel.
  turned = stv.warp(image, stv.rotate_matrix(180.0, image.shape[:2])).astype(int)
  assert np.abs(turned - image[::-1, ::-1]).max() <= 1


# ------------------------------------------------------------------------------ colour


def test_colour_ops_are_the_official_formulas():
  image = random_image(5, (24, 32))
  pil = Image.fromarray(image)
  enhancers = {"RandColor": ImageEnhance.Color, "RandContrast": ImageEnhance.Contrast,
               "RandBrightness": ImageEnhance.Brightness,
               "RandSharpness": ImageEnhance.Sharpness}
  np.testing.assert_array_equal(stv.apply_colour(image, "Identity", 3), image)
  for m in range(1, 10):
    np.testing.assert_array_equal(stv.apply_colour(image, "AutoContrast", m),
                                  np.asarray(ImageOps.autocontrast(pil)))
    np.testing.assert_array_equal(stv.apply_colour(image, "RandEqualize", m),
                                  np.asarray(ImageOps.equalize(pil)))
    threshold = min(int(m * 256 / 10), 255)                      # mmcv.solarize
    np.testing.assert_array_equal(stv.apply_colour(image, "RandSolarize", m),
                                  np.where(image < threshold, image, 255 - image))
    bits = 4 - int(m * 4 / 10)
    np.testing.assert_array_equal(stv.apply_colour(image, "RandPosterize", m),
                                  image & np.uint8(256 - 2 ** (8 - bits)))
    for name, enhancer in enhancers.items():
      factor = float(m) * 1.8 / 10 + 0.1
      np.testing.assert_array_equal(stv.apply_colour(image, name, m),
                                    np.asarray(enhancer(pil).enhance(factor)), err_msg=name)


# --------------------------------------------------------------------------- statistics


def chi_square(counts):
  counts = np.asarray(counts, np.float64)
  expected = counts.sum() / len(counts)
  return float(((counts - expected) ** 2 / expected).sum())


def test_strong_draws_have_the_official_probabilities():
  rng = np.random.default_rng(6)
  hw = (600, 800)
  plans = [stv.sample_strong_ops(rng, hw) for _ in range(4500)]
  colours = [p["colour"][0] for p in plans]
  counts = [colours.count(name) for name in stv.COLOUR_OPS]
  assert len(stv.COLOUR_OPS) == 9 and chi_square(counts) < CHI2_8, counts
  magnitudes = np.array([p["colour"][1] for p in plans])
  assert chi_square(np.bincount(magnitudes, minlength=10)[1:]) < CHI2_8
  assert magnitudes.min() == 1 and magnitudes.max() == 9
  branches = [("shear" if len(p["geometric"]) == 2 else p["geometric"][0][0]) for p in plans]
  counts = [branches.count(b) for b in stv.GEOMETRIC_BRANCHES]
  assert chi_square(counts) < CHI2_3, counts
  colour_first = sum(p["order"] == ("colour", "geometric") for p in plans)
  assert abs(colour_first - 2250) < 4 * np.sqrt(4500 / 4)          # 1/2, 4 sigma
  values = {}
  for p in plans:
    for op, value in p["geometric"]:
      values.setdefault(op, []).append(value)
  assert [op for op, _ in next(p for p in plans if len(p["geometric"]) == 2)["geometric"]
          ] == ["shear_x", "shear_y"]
  for op, (lo, hi) in (("translate_x", (-0.1, 0.1)), ("translate_y", (-0.1, 0.1)),
                       ("rotate", (-30, 30)), ("shear_x", (-30, 30)), ("shear_y", (-30, 30))):
    v = np.array(values[op])
    span = hi - lo
    assert v.min() >= lo and v.max() < hi and v.min() < lo + 0.02 * span
    assert v.max() > hi - 0.02 * span and abs(v.mean() - (lo + hi) / 2) < 0.05 * span
  patches = [p["erase"] for p in plans]
  n = np.array([len(e) for e in patches])
  assert n.min() == 1 and n.max() == 4                  # randint(1, 5): 1..4
  assert chi_square(np.bincount(n)[1:]) < CHI2_3
  boxes = np.array([b for e in patches for b in e])
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 800).all() and (boxes[:, 3] <= 600).all()
  pw, ph = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  assert pw.max() <= 0.2 * 800 and pw.max() > 0.19 * 800 and pw.min() == 0
  # squared: one ratio for both sides, so int(r h) and int(r w) agree up to the flooring.
  np.testing.assert_allclose(pw / 800, ph / 600, atol=1.01 / 600)


def test_scale_draws_cover_the_range_inclusively():
  rng = np.random.default_rng(7)
  draws = np.array([stv.sample_range_scale(rng) for _ in range(20000)])
  assert (draws[:, 0] == 1333).all()
  assert draws[:, 1].min() == 400 and draws[:, 1].max() == 1200
  assert len(np.unique(draws[:, 1])) > 750
  draws = np.array([stv.sample_range_scale(rng, ((200, 100), (240, 120)))
                    for _ in range(3000)])
  assert set(draws[:, 0]) == set(range(200, 241)) and set(draws[:, 1]) == set(range(100, 121))
  assert chi_square(np.bincount(draws[:, 1])[100:]) < 60       # 20 dof, 0.1% is 45.3


def test_views_flip_half_the_time():
  rng = np.random.default_rng(8)
  flips = sum(stv.weak_view(random_image(0, (20, 30)), rng, ((40, 20), (48, 24)))[1][0, 0] < 0
              for _ in range(800))
  assert abs(flips - 400) < 4 * np.sqrt(200)


# ------------------------------------------------------------------ views: boxes, images


def test_boxes_round_trip_teacher_to_student():
  views = stv.UnlabelledViews(CANVAS, identity, SMALL_RANGE)
  rng = np.random.default_rng(9)
  image = random_image(9)
  outs = [views({"image": image}, rng) for _ in range(60)]
  boxes = np.stack([random_boxes(rng, 12, SOURCE_HW) for _ in outs])
  stack = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
  teacher = transform_boxes(boxes, stack["teacher_matrix"], stack["teacher_hw"])
  relative = relative_matrix(stack["teacher_matrix"], stack["student_matrix"])
  via_teacher = np.asarray(jax.jit(transform_boxes)(teacher, relative, stack["student_hw"]))
  direct = np.stack([official_transform_bboxes(b, o["student_matrix"], o["student_hw"])
                     for b, o in zip(boxes, outs)])
  np.testing.assert_allclose(via_teacher, direct, atol=2e-3)
  assert (direct[..., 0] == 0).any()                   # some boxes leave the student view
  # Two weak views (resize and flip only): boxes go between them as the flips and scales.
  weak = [stv.weak_view(image, rng, SMALL_RANGE) for _ in range(40)]
  for (img_a, a), (img_b, b) in zip(weak[::2], weak[1::2]):
    src = boxes[0]
    in_a = transform_boxes(src, a, img_a.shape[:2])
    in_b = transform_boxes(in_a, relative_matrix(a, b), img_b.shape[:2])
    np.testing.assert_allclose(np.asarray(in_b), official_transform_bboxes(
        src, b, img_b.shape[:2]), rtol=1e-5, atol=1e-3)


def planted(hw=(96, 128), box=(52, 36, 76, 60)):
  image = np.zeros((*hw, 3), np.uint8)
  x1, y1, x2, y2 = box
  image[y1:y2, x1:x2] = 255
  return image, np.array([box], np.float32)


def bright_box(image, threshold=127):
  """The bright pixels' box (pixel ``i`` spans ``[i, i + 1]``); None if there are none.
  127: above the fill value (125), at half the square's contrast."""
  ys, xs = np.nonzero(image.min(-1) > threshold)
  if not len(xs):
    return None
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def visible_box(box, matrix, hw):
  """The box of the part of the image that the square ``box`` maps to through ``matrix``
  (its corners through the matrix, the quadrilateral clipped to the image); None if
  nothing is left."""
  x1, y1, x2, y2 = np.asarray(box, np.float64).ravel()
  corners = np.array([[x1, y1, 1], [x2, y1, 1], [x2, y2, 1], [x1, y2, 1]]) @ np.asarray(
      matrix, np.float64).T
  points = list(corners[:, :2] / corners[:, 2:])
  h, w = hw
  for axis, bound, below in ((0, 0, False), (0, w, True), (1, 0, False), (1, h, True)):
    clipped = []
    for p, q in zip(points, points[1:] + points[:1]):   # Sutherland-Hodgman, one edge
      p_in, q_in = (p[axis] <= bound, q[axis] <= bound) if below else (p[axis] >= bound,
                                                                        q[axis] >= bound)
      if p_in:
        clipped.append(p)
      if p_in != q_in:
        clipped.append(p + (bound - p[axis]) / (q[axis] - p[axis]) * (q - p))
    points = clipped
    if not points:
      return None
  points = np.array(points)
  return np.concatenate([points.min(0), points.max(0)])


@pytest.mark.parametrize("ops", [
    (("translate_x", 0.1),), (("translate_x", -0.07),), (("translate_y", 0.1),),
    (("translate_y", -0.1),), (("rotate", 25.0),), (("rotate", -30.0),),
    (("shear_x", 28.0), ("shear_y", -20.0)), (("shear_x", -15.0), ("shear_y", 30.0))],
    ids=lambda ops: "+".join(f"{op}{value:g}" for op, value in ops))
def test_planted_square_lands_where_the_matrix_maps_it(ops):
  source, square = planted()
  resized, matrix = stv.resize_flip({"image": source, "boxes": square,
                                     "labels": np.zeros(1, np.int32)},
                                    np.random.default_rng(10), SMALL_RANGE, 1.0, CANVAS)
  plan = {"order": ("geometric", "colour"), "colour": ("Identity", 5), "geometric": ops,
          "erase": ()}
  image, geometric = stv.apply_strong_ops(resized["image"], plan)
  expected = visible_box(square, geometric @ matrix, image.shape[:2])
  np.testing.assert_allclose(bright_box(image), expected, atol=2.0)
  assert (image == 125).all(-1).any()                  # the uncovered area: the fill value


def test_strong_view_square_follows_student_matrix():
  """The view's own draws: its matrix is the geometric ops' on top of resize and flip, and
  the square (colour and erase left out to find it) lands where that matrix maps it."""
  source, square = planted()
  seen, checked = set(), 0
  for seed in range(24):
    image, matrix, plan = stv.strong_view(source, np.random.default_rng(seed), SMALL_RANGE,
                                          0.5, CANVAS)
    resized, base = stv.resize_flip({"image": source, "boxes": square,
                                     "labels": np.zeros(1, np.int32)},
                                    np.random.default_rng(seed), SMALL_RANGE, 0.5, CANVAS)
    bare = {**plan, "colour": ("Identity", 1), "erase": ()}
    warped, geometric = stv.apply_strong_ops(resized["image"], bare)
    np.testing.assert_allclose(matrix, geometric @ base, atol=1e-9)
    assert image.shape == warped.shape == resized["image"].shape
    expected = visible_box(square, matrix, image.shape[:2])
    if expected is None:                                # sheared out of the image
      assert bright_box(warped) is None
    elif min(expected[2:] - expected[:2]) >= 2:         # not a sliver at the border
      np.testing.assert_allclose(bright_box(warped), expected, atol=2.0)
      checked += 1
    if plan["colour"][0] == "Identity":
      np.testing.assert_array_equal(image, stv.erase(warped, plan["erase"]))
    seen.add("shear" if len(plan["geometric"]) == 2 else plan["geometric"][0][0])
  assert seen == set(stv.GEOMETRIC_BRANCHES) and checked >= 20


def test_unlabelled_views_outputs():
  views = stv.UnlabelledViews(CANVAS, identity, SMALL_RANGE)
  image = random_image(11)
  example = {"image": image, "boxes": np.zeros((3, 4), np.float32)}
  for seed in range(3):
    out = views(example, np.random.default_rng(seed))
    assert set(out) == {"teacher_image", "teacher_hw", "teacher_matrix", "student_image",
                        "student_hw", "student_matrix"}
    rng = np.random.default_rng(seed)                   # the strong branch draws first
    student, student_matrix, _ = stv.strong_view(image, rng, SMALL_RANGE, 0.5, CANVAS)
    teacher, teacher_matrix = stv.weak_view(image, rng, SMALL_RANGE, 0.5, CANVAS)
    for name, view, matrix in (("teacher", teacher, teacher_matrix),
                               ("student", student, student_matrix)):
      h, w = view.shape[:2]
      assert out[f"{name}_image"].dtype == np.float32 and out[f"{name}_image"].shape == (
          *CANVAS, 3)
      assert out[f"{name}_hw"].dtype == np.int32 and out[f"{name}_hw"].tolist() == [h, w]
      assert out[f"{name}_matrix"].dtype == np.float32
      np.testing.assert_allclose(out[f"{name}_matrix"], matrix, rtol=1e-6)
      np.testing.assert_array_equal(out[f"{name}_image"][:h, :w], mt.normalize(view))
      assert not out[f"{name}_image"][h:].any() and not out[f"{name}_image"][:, w:].any()
      assert max(h, w) in range(96, 129)
  with pytest.raises(ValueError, match="canvas"):
    stv.UnlabelledViews((96, 96), identity, SMALL_RANGE)


def test_supervised_view_outputs():
  rng = np.random.default_rng(12)
  source = {"image": random_image(12), "boxes": random_boxes(rng, 5, SOURCE_HW),
            "labels": np.arange(1, 6, dtype=np.int32),
            "crowd": np.array([False, True, False, False, False]),
            "area": np.ones(5, np.float32), "masks": np.zeros((5, *SOURCE_HW), bool)}
  view = stv.SupervisedView(CANVAS, identity, SMALL_RANGE, max_instances=8)
  for seed in range(4):
    out = view(source, np.random.default_rng(seed))
    assert set(out) == {"image", "image_hw", "gt_boxes", "gt_labels", "gt_valid"}
    assert out["image"].shape == (*CANVAS, 3) and out["gt_boxes"].shape == (8, 4)
    assert out["gt_valid"].tolist() == [True] * 4 + [False] * 4   # crowd dropped
    assert out["gt_labels"][:4].tolist() == [1, 3, 4, 5]
    replay = np.random.default_rng(seed)
    resized, matrix = stv.resize_flip(dt.drop_crowd(source), replay, SMALL_RANGE, 0.5,
                                      CANVAS)
    name, magnitude = stv.sample_colour(replay)
    h, w = resized["image"].shape[:2]
    assert out["image_hw"].tolist() == [h, w]
    np.testing.assert_allclose(out["gt_boxes"][:4], official_transform_bboxes(
        source["boxes"][~source["crowd"]], matrix, (h, w)), atol=1e-3)
    np.testing.assert_array_equal(out["image"][:h, :w], mt.normalize(
        stv.apply_colour(resized["image"], name, magnitude)))
