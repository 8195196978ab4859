"""nnU-Net v1 training patches for 3D segmentation: sampling statistics, geometry, DS targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from swin_jax.data import volume_transforms as vt

DEG30 = 30 / 360 * 2 * np.pi


def rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def blob_label(shape=(40, 60, 60)) -> np.ndarray:
  label = np.zeros(shape, np.uint8)
  label[30:36, 5:11, 50:56] = 1      # near the far corner of axis 0 and 2
  label[2:5, 40:45, 3:8] = 2         # near the near corner
  return label


# --- nnU-Net's sizes and bounds, computed by hand ------------------------------------------

def test_generator_patch_size_is_nnunets_get_patch_size():
  c, s = math.cos(DEG30), math.sin(DEG30)
  d, h, w = 64, 128, 128
  # row vector (d, h, w) times Rx, Ry, Rz of 30 degrees, one at a time; |.|, max, / 0.85
  about_x = (d, h * c + w * s, -h * s + w * c)
  about_y = (d * c - w * s, h, d * s + w * c)
  about_z = (d * c + h * s, -d * s + h * c, w)
  expected = tuple(int(max(p, *(abs(v[i]) for v in (about_x, about_y, about_z))) / 0.85)
                   for i, p in enumerate((d, h, w)))
  assert vt.generator_patch_size((64, 128, 128), 30.0) == expected == (140, 205, 168)
  # no rotation, no scaling: the patch itself; angles are capped at 90 degrees
  assert vt.generator_patch_size((32, 48, 16), 0.0, 1.0) == (32, 48, 16)
  assert vt.generator_patch_size((32, 32, 32), 180.0, 1.0) == vt.generator_patch_size(
      (32, 32, 32), 90.0, 1.0)
  assert vt.VolumeTrainTransform((64, 128, 128)).generator_size == (140, 205, 168)


def test_forced_foreground_fraction_per_batch_size():
  # positions j >= round(b * 0.67) are forced
  assert vt.forced_foreground_fraction(2) == 0.5
  assert vt.forced_foreground_fraction(4) == 0.25
  assert vt.forced_foreground_fraction(12) == pytest.approx(1 / 3)


def test_patch_start_bounds_follow_dataloader3d():
  lb, ub = vt.patch_start_bounds((100, 200, 200), (140, 205, 168), (76, 77, 40))
  assert lb.tolist() == [-38, -39, -20]          # -ceil(need / 2)
  assert ub.tolist() == [100 + 38 - 140, 200 + 39 - 205, 200 + 20 - 168]
  # a volume smaller than patch + need_to_pad: need_to_pad becomes patch - shape
  lb, ub = vt.patch_start_bounds((20, 19, 200), (140, 140, 140), (76, 76, 76))
  assert lb[:2].tolist() == [-60, -61] and ub[:2].tolist() == [-60, -60]


def test_uniform_start_covers_the_range():
  g = rng(1)
  starts = np.array([vt.sample_patch_start((30, 50, 70), (20, 20, 20), g,
                                           need_to_pad=(4, 5, 0)) for _ in range(3000)])
  lb, ub = vt.patch_start_bounds((30, 50, 70), (20, 20, 20), (4, 5, 0))
  assert np.all(starts >= lb) and np.all(starts <= ub)
  assert np.all(starts.min(0) == lb) and np.all(starts.max(0) == ub)
  assert np.all(np.abs(starts.mean(0) - (lb + ub) / 2) <= 0.03 * (ub - lb))


# --- forced foreground ---------------------------------------------------------------------

def test_forced_foreground_picks_a_class_uniformly_then_a_voxel():
  label = np.zeros((30, 30, 30), np.uint8)
  label[:10, :10, :10] = 1          # 1000 voxels of class 1
  label[29, 29, 29] = 2             # one voxel of class 2
  label[0, 29, 0] = 3               # class 3: two voxels far apart
  label[29, 0, 29] = 3
  g = rng(2)
  patch = np.array((4, 4, 4))
  hits = {2: 0, (0, 29, 0): 0, (29, 0, 29): 0}
  n = 3000
  for _ in range(n):
    start = vt.sample_patch_start(label.shape, patch, g, True, label)
    box = tuple(slice(int(a), int(a) + 4) for a in start)
    crop = vt.crop_padded(label, start, patch)
    assert crop.any()
    hits[2] += int((crop == 2).any())
    for voxel in [(0, 29, 0), (29, 0, 29)]:
      hits[voxel] += int(all(b.start <= v < b.stop for b, v in zip(box, voxel)))
  assert hits[2] / n == pytest.approx(1 / 3, abs=0.04)       # classes equally likely
  assert hits[(0, 29, 0)] / n == pytest.approx(1 / 6, abs=0.03)
  assert hits[(29, 0, 29)] / n == pytest.approx(1 / 6, abs=0.03)


def test_forced_start_clamps_only_the_lower_bound():
  label = np.zeros((50, 50, 50), np.uint8)
  label[49, 0, 25] = 1
  start = vt.sample_patch_start(label.shape, (20, 20, 20), rng(), True, label,
                                need_to_pad=(6, 6, 6))
  # voxel - patch // 2, but not below lb = -3; past ub = 50 + 3 - 20 = 33 is allowed
  assert start.tolist() == [39, -3, 15]


def test_forced_fraction_and_every_forced_patch_holds_foreground():
  label = blob_label()
  transform = vt.VolumeTrainTransform((16, 24, 24), p_rotation=0.0, p_scale=0.0)
  g = rng(3)
  forced = 0
  n = 3000
  for _ in range(n):
    plan = transform.plan(label, g)
    assert not plan.spatial.modified
    if plan.force_foreground:
      forced += 1
      corner = np.array(plan.start) + (np.array(transform.generator_size) - (16, 24, 24)) // 2
      assert vt.crop_padded(label, corner, (16, 24, 24)).any()
  assert forced / n == pytest.approx(1 / 3, abs=0.03)
  # the same through the whole transform
  image = np.random.default_rng(0).normal(size=label.shape + (1,)).astype(np.float32)
  g = rng(4)
  seen = 0
  while seen < 5:
    state = g.bit_generator.state
    plan = transform.plan(label, g)
    g.bit_generator.state = state
    out = transform({"image": image, "label": label}, g)
    if plan.force_foreground:
      seen += 1
      assert (out["label"] > 0).any()


def test_volume_without_foreground_falls_back_to_uniform():
  label = np.zeros((30, 30, 30), np.uint8)
  starts = {tuple(vt.sample_patch_start(label.shape, (10, 10, 10), rng(s), True, label))
            for s in range(20)}
  assert len(starts) > 10


# --- spatial and mirror draws --------------------------------------------------------------

def test_spatial_draws_statistics():
  g = rng(5)
  n = 20000
  draws = [vt.draw_spatial_params(g) for _ in range(n)]
  rotated = [p for p in draws if p.rotate]
  scaled = np.array([p.scale for p in draws if p.scale is not None])
  assert len(rotated) / n == pytest.approx(0.2, abs=0.015)
  assert len(scaled) / n == pytest.approx(0.2, abs=0.015)
  angles = np.array([p.angles for p in rotated])
  assert np.all(np.abs(angles) <= DEG30) and np.all(angles != 0)   # p_rot_per_axis = 1
  np.testing.assert_allclose(angles.mean(0), 0, atol=0.03)
  np.testing.assert_allclose(np.abs(angles).mean(0), DEG30 / 2, atol=0.02)   # uniform
  assert all(p.angles == (0.0, 0.0, 0.0) for p in draws if not p.rotate)
  # batchgenerators: a coin picks U(0.7, 1) or U(1, 1.4)
  assert np.all((scaled >= 0.7) & (scaled <= 1.4))
  below = scaled[scaled < 1]
  assert len(below) / len(scaled) == pytest.approx(0.5, abs=0.04)
  assert below.mean() == pytest.approx(0.85, abs=0.01)
  assert scaled[scaled >= 1].mean() == pytest.approx(1.2, abs=0.015)
  # rotation and scaling are independent
  both = sum(p.rotate and p.scale is not None for p in draws)
  assert both / n == pytest.approx(0.04, abs=0.006)


def test_rotation_per_axis_probability_and_transform_settings():
  g = rng(6)
  draws = [vt.draw_spatial_params(g, p_rotation=1.0, p_rot_per_axis=0.5,
                                  rotation_degrees=10.0, p_scale=0.0) for _ in range(4000)]
  angles = np.array([p.angles for p in draws])
  np.testing.assert_allclose((angles != 0).mean(0), 0.5, atol=0.035)
  assert np.all(np.abs(angles) <= 10 / 360 * 2 * np.pi)
  transform = vt.VolumeTrainTransform((8, 8, 8), p_rotation=0.5, p_scale=0.1,
                                      oversample_foreground=0.0)
  label = np.zeros((12, 12, 12), np.uint8)
  plans = [transform.plan(label, g) for _ in range(4000)]
  assert np.mean([p.spatial.rotate for p in plans]) == pytest.approx(0.5, abs=0.03)
  assert np.mean([p.spatial.scale is not None for p in plans]) == pytest.approx(0.1, abs=0.02)
  assert not any(p.force_foreground for p in plans)


def test_mirror_frequencies():
  g = rng(7)
  flips = np.array([[a in vt.draw_mirror_axes(g) for a in range(3)] for _ in range(6000)])
  np.testing.assert_allclose(flips.mean(0), 0.5, atol=0.025)
  # independent axes: all three about 1/8 of the time
  assert flips.all(1).mean() == pytest.approx(0.125, abs=0.015)
  assert all(set(vt.draw_mirror_axes(g, (1,))) <= {1} for _ in range(200))


def test_mirror_is_applied_to_image_and_label():
  r = rng(8)
  image = r.normal(size=(20, 20, 20, 2)).astype(np.float32)
  label = r.integers(0, 4, size=(20, 20, 20)).astype(np.uint8)
  transform = vt.VolumeTrainTransform((12, 12, 12), generator_size=(16, 16, 16))
  example = {"image": image, "label": label}
  base = vt.VolumePlan(False, (1, 2, 3), vt.SpatialParams(), ())
  flipped = vt.VolumePlan(False, (1, 2, 3), vt.SpatialParams(), (0, 2))
  a, b = transform.apply(example, base), transform.apply(example, flipped)
  np.testing.assert_array_equal(b["image"], a["image"][::-1, :, ::-1])
  np.testing.assert_array_equal(b["label"], a["label"][::-1, :, ::-1])


# --- geometry ------------------------------------------------------------------------------

@pytest.mark.parametrize("angles, axes", [((90, 0, 0), (1, 2)), ((0, 90, 0), (2, 0)),
                                          ((0, 0, 90), (0, 1))])
def test_quarter_turn_is_rot90(angles, axes):
  # v' = v @ R: Rx(90) maps (v0, v1, v2) -> (v0, v2, -v1), i.e. out(v) = in(v0, v2, -v1),
  # which is np.rot90(in, 1, axes=(1, 2)); likewise Ry -> axes (2, 0), Rz -> axes (0, 1).
  r = rng(9)
  volume = r.uniform(size=(20, 20, 20, 2))
  label = r.integers(0, 3, size=(20, 20, 20)) * 3
  params = vt.SpatialParams(True, tuple(a / 360 * 2 * np.pi for a in angles), None)
  image, seg = vt.spatial_transform(volume, label, (0, 0, 0), (20, 20, 20), (12, 12, 12),
                                    params)
  centre = (slice(4, 16),) * 3     # G / 2 - 0.5 - (f - 1) / 2 = 4
  np.testing.assert_allclose(image, np.rot90(volume[centre], 1, axes=axes), atol=1e-5)
  np.testing.assert_array_equal(seg, np.rot90(label[centre], 1, axes=axes))


def test_zero_angle_unit_scale_is_the_identity_crop():
  r = rng(10)
  volume = r.normal(size=(30, 26, 34, 1))
  label = r.integers(0, 5, size=(30, 26, 34))
  start, generator, patch = (3, -2, 5), (24, 22, 30), (16, 14, 20)
  plain = vt.spatial_transform(volume, label, start, generator, patch, vt.SpatialParams())
  identity = vt.spatial_transform(volume, label, start, generator, patch,
                                  vt.SpatialParams(True, (0.0, 0.0, 0.0), 1.0))
  expected = vt.crop_padded(volume, np.add(start, (4, 4, 5)), patch)
  np.testing.assert_array_equal(plain[0], expected.astype(np.float32))
  np.testing.assert_allclose(identity[0], plain[0], atol=1e-5)
  np.testing.assert_array_equal(identity[1], plain[1])
  np.testing.assert_array_equal(plain[1], vt.crop_padded(label, np.add(start, (4, 4, 5)),
                                                         patch))


def naive_nnunet_patch(volume, label, start, generator, patch, params):
  """nnU-Net's path spelled out: pad the generator patch (image 0, label -1), sample the
  whole of it (image cubic; label per value in ascending order, order 1, cval -1), -1 -> 0."""
  big = vt.crop_padded(volume, start, generator, 0).astype(np.float64)
  seg = vt.crop_padded(label.astype(np.int64), start, generator, -1)
  axes = [np.arange(n) - (n - 1) / 2 for n in patch]
  coords = np.array(np.meshgrid(*axes, indexing="ij"))
  coords = coords.reshape(3, -1).T.dot(vt.rotation_matrix(*params.angles)).T.reshape(
      coords.shape) * params.scale
  coords += (np.array(generator) / 2 - 0.5).reshape(3, 1, 1, 1)
  image = np.stack([ndimage.map_coordinates(big[..., c], coords, order=3, mode="constant",
                                            cval=0.0) for c in range(big.shape[-1])], -1)
  out = np.zeros(patch, np.int64)
  for value in np.unique(seg):
    sampled = ndimage.map_coordinates((seg == value).astype(float), coords, order=1,
                                      mode="constant", cval=-1)
    out[sampled >= 0.5] = value
  out[out == -1] = 0
  return image, out


@pytest.mark.parametrize("angles, scale, start", [((0.4, -0.3, 0.2), 1.3, (-4, 6, -3)),
                                                  ((-0.5, 0.1, 0.45), 0.75, (2, -5, 10)),
                                                  ((0.2, 0.0, -0.1), 1.0, (8, 8, 8))])
def test_rotation_and_scale_match_nnunets_whole_patch_sampling(angles, scale, start):
  r = rng(11)
  volume = ndimage.gaussian_filter(r.normal(size=(30, 40, 40, 1)), (2, 2, 2, 0)) * 10
  label = np.zeros((30, 40, 40), np.uint8)
  label[5:20, 10:25, 8:30] = 2
  label[12:28, 20:38, 15:25] = 5
  label[0:8, 30:40, 30:40] = 9
  generator, patch = (36, 44, 40), (20, 28, 26)
  params = vt.SpatialParams(True, angles, scale)
  image, seg = vt.spatial_transform(volume, label, start, generator, patch, params)
  ref_image, ref_seg = naive_nnunet_patch(volume, label, start, generator, patch, params)
  assert image.dtype == np.float32 and seg.dtype == np.int32
  np.testing.assert_allclose(image[..., 0], ref_image[..., 0], atol=1e-4)
  np.testing.assert_array_equal(seg, ref_seg)
  # interpolation creates no label value; the large ones survive
  assert set(np.unique(seg)) <= {0, 2, 5, 9} and {2, 5} <= set(np.unique(seg))


def test_linear_interpolation_of_label_values_would_invent_labels():
  # the reason for per-label sampling: on the same grid, order 1 on the values creates 1, 3, 4
  label = np.zeros((20, 20, 20), np.uint8)
  label[5:15, 5:10, 5:15] = 2
  label[5:15, 10:15, 5:15] = 5
  params = vt.SpatialParams(True, (0.3, 0.2, 0.1), 1.1)
  coords = vt.sampling_coordinates((20, 20, 20), (12, 12, 12), params)
  linear = np.round(ndimage.map_coordinates(label.astype(float), coords, order=1))
  assert not set(np.unique(linear)) <= {0, 2, 5}
  _, seg = vt.spatial_transform(np.zeros((20, 20, 20, 1)), label, (0, 0, 0), (20, 20, 20),
                                (12, 12, 12), params)
  assert set(np.unique(seg)) == {0, 2, 5}


def test_far_zoom_out_reads_zeros_outside_the_generator_patch():
  volume = np.ones((40, 40, 40, 1))
  label = np.ones((40, 40, 40), np.uint8)
  params = vt.SpatialParams(False, (0.0, 0.0, 0.0), 1.4)
  image, seg = vt.spatial_transform(volume, label, (10, 10, 10), (20, 20, 20), (20, 20, 20),
                                    params)
  # sample positions (i - 9.5) * 1.4 + 9.5: inside [0, 19] only for i in 3..16
  inside = np.zeros(20, bool)
  inside[3:17] = True
  mask = inside[:, None, None] & inside[None, :, None] & inside[None, None, :]
  np.testing.assert_allclose(image[..., 0][mask], 1.0, atol=1e-6)
  assert np.all(image[..., 0][~mask] == 0) and np.all(seg[~mask] == 0) and np.all(seg[mask] == 1)


# --- whole transform: shapes, dtypes, padding ----------------------------------------------

def test_output_shapes_and_dtypes():
  r = rng(12)
  transform = vt.VolumeTrainTransform((16, 24, 20), p_rotation=1.0, p_scale=1.0)
  label = blob_label((30, 50, 45))
  for image in (r.normal(size=(30, 50, 45, 2)).astype(np.float32),
                r.normal(size=(30, 50, 45)).astype(np.float32)):
    out = transform({"image": image, "label": label, "case": "x"}, r)
    channels = 2 if image.ndim == 4 else 1
    assert out["image"].shape == (16, 24, 20, channels) and out["image"].dtype == np.float32
    assert out["label"].shape == (16, 24, 20) and out["label"].dtype == np.int32
    assert set(np.unique(out["label"])) <= {0, 1, 2}
  with pytest.raises(ValueError):
    transform({"image": np.zeros((30, 50, 45, 1)), "label": label.astype(float)}, r)
  with pytest.raises(ValueError):
    vt.VolumeTrainTransform((16, 24, 20), num_classes=2)({"image": np.zeros((30, 50, 45)),
                                                          "label": label}, r)


def test_same_seed_same_patch():
  r = rng(13)
  image = r.normal(size=(30, 40, 40, 1)).astype(np.float32)
  example = {"image": image, "label": blob_label((30, 40, 40))}
  transform = vt.VolumeTrainTransform((16, 16, 16), p_rotation=0.5, p_scale=0.5)
  a, b = transform(example, rng(99)), transform(example, rng(99))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])


def test_volume_smaller_than_the_patch_is_padded_as_dataloader3d_does():
  r = rng(14)
  image = 1 + r.uniform(size=(10, 12, 40, 1)).astype(np.float32)
  label = np.ones((10, 12, 40), np.uint8)
  transform = vt.VolumeTrainTransform((16, 16, 16), generator_size=(20, 20, 20),
                                      p_rotation=0.0, p_scale=0.0, mirror_axes=(),
                                      oversample_foreground=0.0)
  for seed in range(5):
    g = rng(seed)
    plan = transform.plan(label, g)
    # axis 0: need 20 - 10 = 10, start -5; axis 1: need 8, start -4 (both fixed);
    # final index = volume index - start - (20 - 16) // 2
    assert plan.start[:2] == (-5, -4) and -2 <= plan.start[2] <= 22
    out = transform.apply({"image": image, "label": label}, plan)
    z = plan.start[2] + 2
    expected = vt.crop_padded(image, (-3, -2, z), (16, 16, 16))
    np.testing.assert_array_equal(out["image"], expected)
    assert np.all(out["image"][:3] == 0) and np.all(out["image"][13:] == 0)
    assert np.all(out["image"][:, :2] == 0) and np.all(out["image"][:, 14:] == 0)
    assert np.all(out["image"][3:13, 2:14] >= 1)
    np.testing.assert_array_equal(out["label"] == 1, out["image"][..., 0] > 0)


# --- deep supervision ----------------------------------------------------------------------

def test_deep_supervision_labels_by_hand():
  label = np.arange(8 ** 3).reshape(8, 8, 8)
  full, half, quarter = vt.deep_supervision_labels(label, 3)
  assert full is label
  np.testing.assert_array_equal(half, label[1::2, 1::2, 1::2])
  np.testing.assert_array_equal(quarter, label[2::4, 2::4, 2::4])
  # odd sizes: m = round(n / 2) (2.5 -> 2, 3.5 -> 4), index floor((o + 0.5) * n / m)
  label = np.arange(5 * 6 * 7).reshape(5, 6, 7)
  _, half = vt.deep_supervision_labels(label, 2)
  np.testing.assert_array_equal(half, label[np.ix_([1, 3], [1, 3, 5], [0, 2, 4, 6])])
  # anisotropic pooling (nnU-Net's cumulative pool kernels)
  label = np.arange(4 * 8 * 8).reshape(4, 8, 8)
  out = vt.deep_supervision_labels(label, 3, pool_factors=[(1, 2, 2), (2, 2, 2)])
  assert [o.shape for o in out] == [(4, 8, 8), (4, 4, 4), (2, 2, 2)]
  np.testing.assert_array_equal(out[1], label[:, 1::2, 1::2])
  np.testing.assert_array_equal(out[2], label[1::2, 2::4, 2::4])


def test_deep_supervision_offset_is_the_strided_slice():
  assert [vt.deep_supervision_offset(f) for f in (1, 2, 4, 8)] == [0, 1, 2, 4]
  label = rng(16).integers(0, 9, size=(16, 32, 24))
  for i, out in enumerate(vt.deep_supervision_labels(label, 4)):
    f, o = 2**i, vt.deep_supervision_offset(2**i)
    np.testing.assert_array_equal(out, label[o::f, o::f, o::f])


@pytest.mark.parametrize("shape", [(16, 20, 22), (9, 13, 7)])
def test_deep_supervision_labels_match_skimage_resize_order0(shape):
  resize = pytest.importorskip("skimage.transform").resize
  label = rng(15).integers(0, 14, size=shape).astype(np.uint8)
  outputs = vt.deep_supervision_labels(label, 3)
  for i, out in enumerate(outputs[1:], start=1):
    size = tuple(np.round(np.array(shape) / 2 ** i).astype(int))
    expected = resize(label.astype(float), size, order=0, mode="edge", clip=True,
                      anti_aliasing=False).astype(np.uint8)
    assert out.shape == size
    np.testing.assert_array_equal(out, expected)
