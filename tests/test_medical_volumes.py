"""The MSD / nnU-Net raw-layout builder (nnU-Net v1 preprocessing), on tiny NIfTI volumes.

Every expected value is computed here from the rule's definition (numpy on the arrays the
test wrote), never copied from a run of the builder.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from swin_jax.data import medical_volumes as mv  # noqa: E402
from swin_jax.data import sources  # noqa: E402


# --- writing raw folders -------------------------------------------------------------------

def save(path, zyx, spacing_zyx, dtype=np.float32):
  """Writes a (z, y, x) or (C, z, y, x) array as NIfTI (nibabel's (x, y, z[, C]) order)."""
  data = np.asarray(zyx, dtype)
  data = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  nib.save(nib.Nifti1Image(data, np.diag([*np.asarray(spacing_zyx, float)[::-1], 1.0])),
           str(path))


def write_dataset_json(root, name, modality, labels, case_ids, **extra):
  spec = {"name": name, "modality": {str(i): m for i, m in enumerate(modality)},
          "labels": {str(k): v for k, v in labels.items()},
          "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                       for c in case_ids], **extra}
  (root / "dataset.json").write_text(json.dumps(spec))


def ellipsoid(shape, lo, hi):
  """Boolean ellipsoid inscribed in the voxel box [lo, hi) of a (z, y, x) grid."""
  grid = np.indices(shape).astype(float)
  centre = [(a + b - 1) / 2 for a, b in zip(lo, hi)]
  radius = [(b - a) / 2 for a, b in zip(lo, hi)]
  return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1.0


def box(shape, lo, hi):
  mask = np.zeros(shape, bool)
  mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
  return mask


def nonzero_box(image):
  """(start, stop) per spatial axis of the voxels nonzero in any channel of (C, z, y, x)."""
  hit = np.nonzero(np.any(image != 0, axis=0))
  return tuple((int(h.min()), int(h.max()) + 1) for h in hit)


def crop(array, bbox):
  return array[(Ellipsis,) + tuple(slice(a, b) for a, b in bbox)]


def open_split(data_dir, name, split):
  config = ml_collections.ConfigDict({"name": f"medical_volumes/{name}", "data_dir": data_dir})
  return sources.open_source(config, split)


# --- reading -------------------------------------------------------------------------------

def test_nifti_axes_and_spacing_come_as_z_y_x(tmp_path):
  xyz = np.arange(20 * 24 * 16, dtype=np.float32).reshape(20, 24, 16)
  nib.save(nib.Nifti1Image(xyz, np.diag([0.7, 0.8, 3.0, 1.0])), str(tmp_path / "a.nii.gz"))
  array, spacing = mv.read_nifti(str(tmp_path / "a.nii.gz"))
  assert array.shape == (16, 24, 20) and array.dtype == np.float32
  np.testing.assert_array_equal(array, xyz.transpose(2, 1, 0))
  assert array[3, 5, 7] == xyz[7, 5, 3]
  np.testing.assert_allclose(spacing, [3.0, 0.8, 0.7], rtol=1e-6)

  # A 4-D MSD file (x, y, z, modality) and the same modalities as nnU-Net's _0000/_0001.
  xyzc = np.stack([xyz, -2 * xyz + 1], axis=-1)
  nib.save(nib.Nifti1Image(xyzc, np.diag([0.7, 0.8, 3.0, 1.0])), str(tmp_path / "m.nii.gz"))
  array4, spacing4 = mv.read_nifti(str(tmp_path / "m.nii.gz"))
  assert array4.shape == (2, 16, 24, 20)
  assert array4[1, 3, 5, 7] == xyzc[7, 5, 3, 1]
  np.testing.assert_allclose(spacing4, [3.0, 0.8, 0.7], rtol=1e-6)
  for c in range(2):
    nib.save(nib.Nifti1Image(xyzc[..., c], np.diag([0.7, 0.8, 3.0, 1.0])),
             str(tmp_path / f"n_{c:04d}.nii.gz"))
  label_xyz = (xyz % 3).astype(np.uint8)
  nib.save(nib.Nifti1Image(label_xyz, np.diag([0.7, 0.8, 3.0, 1.0])), str(tmp_path / "l.nii.gz"))
  msd = mv.Case("m", (str(tmp_path / "m.nii.gz"),), str(tmp_path / "l.nii.gz"), four_d=True)
  nnunet = mv.Case("n", tuple(str(tmp_path / f"n_{c:04d}.nii.gz") for c in range(2)),
                   str(tmp_path / "l.nii.gz"), four_d=False)
  image_a, label_a, _ = mv.load_case(msd, 2, (0, 1, 2))
  image_b, label_b, spacing_b = mv.load_case(nnunet, 2, (0, 1, 2))
  np.testing.assert_array_equal(image_a, image_b)
  np.testing.assert_array_equal(image_a, xyzc.transpose(3, 2, 1, 0))
  np.testing.assert_array_equal(label_b, label_xyz.transpose(2, 1, 0))
  np.testing.assert_allclose(spacing_b, [3.0, 0.8, 0.7], rtol=1e-6)


def test_raw_folder_finds_both_namings(tmp_path):
  spacing = (2.0, 1.0, 1.0)
  for case, naming in (("b_1", "msd"), ("a_2", "nnunet")):
    image = np.ones((2, 4, 5, 6))
    if naming == "msd":
      save(tmp_path / "imagesTr" / f"{case}.nii.gz", image, spacing)
    else:
      for c in range(2):
        save(tmp_path / "imagesTr" / f"{case}_{c:04d}.nii.gz", image[c], spacing)
    save(tmp_path / "labelsTr" / f"{case}.nii.gz", np.zeros((4, 5, 6)), spacing, np.uint8)
  write_dataset_json(tmp_path, "Brain Tumour!", ["FLAIR", "T1w"], {0: "bg", 1: "tumour"},
                     ["b_1", "a_2"])
  raw = mv.read_raw_dataset(str(tmp_path))
  assert [c.case_id for c in raw.cases] == ["a_2", "b_1"]          # sorted by id
  assert raw.cases[0].image_files == tuple(
      str(tmp_path / "imagesTr" / f"a_2_{c:04d}.nii.gz") for c in range(2))
  assert raw.cases[1].image_files == (str(tmp_path / "imagesTr" / "b_1.nii.gz"),)
  assert raw.modalities == ("FLAIR", "T1w") and raw.labels == {0: "bg", 1: "tumour"}
  assert mv.config_name(raw.name) == "brain_tumour"

  # nnU-Net v2's dataset.json: channel_names, labels {name: id}, cases = the label files.
  (tmp_path / "dataset.json").write_text(json.dumps({
      "channel_names": {"0": "FLAIR", "1": "T1w"}, "labels": {"background": 0, "tumour": 1},
      "file_ending": ".nii.gz", "numTraining": 2}))
  v2 = mv.read_raw_dataset(str(tmp_path))
  assert v2.cases == raw.cases and v2.labels == {0: "background", 1: "tumour"}
  assert v2.modalities == raw.modalities


# --- cropping, planning, resampling ----------------------------------------------------------

def test_crop_box_is_the_filled_nonzero_union_of_all_modalities():
  shape = (16, 24, 20)
  block0, block1 = box(shape, (2, 4, 3), (9, 15, 10)), box(shape, (5, 10, 8), (12, 20, 18))
  image = np.zeros((2,) + shape, np.float32)
  image[0][block0], image[1][block1] = 5.0, -3.0
  image[0, 5, 6, 5] = 0.0        # an enclosed hole (inside block 0, outside block 1)
  label = np.zeros(shape, np.int16)
  label[2, 19, 3] = 1            # a labelled voxel outside the nonzero mask
  label[6, 12, 9] = 2
  cropped, seg, bbox = mv.crop_to_nonzero(image, label)
  assert bbox == ((2, 12), (4, 20), (3, 18))                       # the union's box
  np.testing.assert_array_equal(cropped, image[:, 2:12, 4:20, 3:18])
  inside = (block0 | block1)[2:12, 4:20, 3:18]                     # holes filled: hole inside
  expected = np.where(inside, label[2:12, 4:20, 3:18], -1)
  expected[0, 15, 0] = 1                                           # labels are never marked
  np.testing.assert_array_equal(seg, expected)


def test_target_spacing_median_and_anisotropy_rule():
  # Isotropic enough: the per-axis median.
  spacings = [(1.5, 0.8, 0.8), (2.0, 0.7, 0.9), (2.5, 1.0, 0.75)]
  sizes = [(50, 100, 100)] * 3
  np.testing.assert_allclose(mv.target_spacing(spacings, sizes), np.median(spacings, axis=0))

  # z spacing > 3x the others and z has < 1/3 of their voxels: z -> 10th percentile.
  z = np.array([5.0, 6.0, 8.0, 10.0, 4.0])
  spacings = [(s, 1.0, 1.0) for s in z]
  few_slices = [(10, 200, 200)] * 5
  target = mv.target_spacing(spacings, few_slices)
  assert target[0] == pytest.approx(np.percentile(z, 10))
  assert target[0] != pytest.approx(np.median(z))
  np.testing.assert_allclose(target[1:], [1.0, 1.0])
  # ... but only then: with as many slices the median stays.
  many_slices = [(100, 200, 200)] * 5
  assert mv.target_spacing(spacings, many_slices)[0] == pytest.approx(np.median(z))
  # The 10th percentile may not fall below the in-plane spacing.
  z = np.array([0.5, 0.5] + [5.0] * 8)
  assert np.median(z) > 3 * 1.0 and np.percentile(z, 10) < 1.0
  target = mv.target_spacing([(s, 1.0, 1.0) for s in z], [(10, 200, 200)] * 10)
  assert target[0] == pytest.approx(1.0 + 1e-5)


def test_separate_axis_rule():
  assert mv.separate_axis((3.0, 0.7, 0.8), (1.5, 0.7, 0.8)) == 0       # from the case
  assert mv.separate_axis((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)) == 2       # from the target
  assert mv.separate_axis((1.0, 1.1, 0.9), (1.2, 1.0, 1.0)) is None    # isotropic enough
  assert mv.separate_axis((0.25, 1.25, 1.25), (1.0, 1.0, 1.0)) is None  # two coarse axes


def test_separate_axis_is_resampled_by_nearest_slice():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(1, 8, 20, 20)).astype(np.float32)
  out = mv.resample_image(image, (4.0, 1.0, 1.0), (2.0, 1.0, 1.0))
  assert out.shape == (1, 16, 20, 20) and out.dtype == np.float32
  # Order 0 across z: every output slice is one input slice (in-plane size unchanged).
  source = [int(np.argmin(np.abs(image[0] - s).max(axis=(1, 2)))) for s in out[0]]
  for k, s in enumerate(out[0]):
    np.testing.assert_allclose(s, image[0, source[k]], atol=1e-5)
  assert source == sorted(source) and all(source.count(i) == 2 for i in range(8))


@pytest.mark.parametrize("spacing,new_spacing", [
    ((3.0, 0.8, 0.8), (1.5, 1.2, 1.0)),     # anisotropic: separate z
    ((1.0, 0.8, 0.9), (1.3, 1.1, 0.7)),     # all axes at once
])
def test_label_resampling_keeps_values_and_volumes(spacing, new_spacing):
  shape = (16, 24, 20)
  seg = np.zeros(shape, np.int16)
  seg[ellipsoid(shape, (2, 3, 2), (14, 15, 12))] = 1
  seg[box(shape, (4, 14, 11), (12, 22, 18))] = 3
  seg[:, :, 0] = -1   # the outside mark is just another value
  out = mv.resample_label(seg, spacing, new_spacing)
  expected_shape = tuple(int(v) for v in np.round(np.array(spacing) / new_spacing * shape))
  assert out.shape == expected_shape
  assert set(np.unique(out)) <= {-1, 0, 1, 3}
  for value in (1, 3):
    before = (seg == value).sum() * np.prod(spacing)
    after = (out == value).sum() * np.prod(new_spacing)
    assert after == pytest.approx(before, rel=0.15), value
  image = np.stack([seg.astype(np.float32), np.ones(shape, np.float32)])
  assert mv.resample_image(image, spacing, new_spacing).shape == (2,) + expected_shape


# --- CT: statistics and the TFDS round trip ------------------------------------------------

def write_ct(root, num_cases=6, spacing=(2.5, 0.8, 0.8)):
  rng = np.random.default_rng(1)
  shape, ids, cases = (16, 24, 20), [], {}
  for k in range(num_cases):
    case_id = f"ct_{k:03d}"
    lo = (1 + k % 3, 2 + k % 2, 1 + k % 4)
    hi = (shape[0] - 1 - k % 2, shape[1] - 1 - k % 3, shape[2] - 2)
    body = box(shape, lo, hi)
    image = np.where(body, rng.normal(40, 300, shape), 0).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[ellipsoid(shape, (lo[0] + 1, 5, 4), (lo[0] + 9, 15, 13))] = 1
    if k % 2 == 0:
      label[box(shape, (lo[0] + 2, 16, 12), (lo[0] + 7, 21, 17))] = 2
    image[label == 1] += 200     # brighter organ, so the foreground has its own statistics
    save(root / "imagesTr" / f"{case_id}.nii.gz", image, spacing)
    save(root / "labelsTr" / f"{case_id}.nii.gz", label, spacing, np.uint8)
    ids.append(case_id)
    cases[case_id] = (image[None], label)
  write_dataset_json(root, "Toy CT", ["CT"], {0: "background", 1: "liver", 2: "spleen"}, ids)
  return cases


def test_ct_build_round_trip_statistics_and_split_rule(tmp_path, capsys):
  root = tmp_path / "Task01_ToyCT"
  cases = write_ct(root)
  data_dir = str(tmp_path / "tfds")
  mv.main(["--manual_dir", str(root), "--data_dir", data_dir])
  out = capsys.readouterr()
  assert "'medical_volumes/toy_ct'" in out.out
  for case_id in cases:   # one progress line per case (planning and writing)
    assert sum(case_id in line and "plan [" in line for line in out.err.splitlines()) == 1
    assert sum(case_id in line and "] " + case_id + ":" in line and "plan" not in line
               for line in out.err.splitlines()) == 1

  # CT statistics from the definition: every 10th foreground voxel of each cropped case.
  pooled, crops = [], {}
  for case_id, (image, label) in cases.items():
    bbox = nonzero_box(image)
    crops[case_id] = (crop(image, bbox)[0], crop(label, bbox))
    pooled.append(crops[case_id][0][crops[case_id][1] > 0][::10])
  pooled = np.concatenate(pooled).astype(np.float64)
  lower, upper = np.percentile(pooled, [0.5, 99.5])
  mean, std = pooled.mean(), pooled.std()

  import tensorflow_datasets as tfds
  builder = tfds.builder("medical_volumes/toy_ct", data_dir=data_dir)
  plan = mv.Plan.from_metadata(builder.info.metadata)
  assert plan.modalities == ("CT",) and plan.normalization == ("CT",)
  assert plan.use_nonzero_mask == (False,)
  assert plan.labels == {0: "background", 1: "liver", 2: "spleen"}
  stats = plan.intensity[0]
  assert stats["lower"] == pytest.approx(lower, rel=1e-6)
  assert stats["upper"] == pytest.approx(upper, rel=1e-6)
  assert stats["mean"] == pytest.approx(mean, rel=1e-6)
  assert stats["std"] == pytest.approx(std, rel=1e-6)
  np.testing.assert_allclose(plan.target_spacing, (2.5, 0.8, 0.8), rtol=1e-6)
  assert builder.info.metadata["cases"]["ct_001"]["crop_box"] == [
      list(b) for b in nonzero_box(cases["ct_001"][0])]

  # The schema.
  spec = builder.info.features
  assert spec["image"].shape == (None, None, None, 1) and spec["image"].dtype == np.float32
  assert spec["label"].shape == (None, None, None) and spec["label"].dtype == np.uint8
  assert spec["spacing"].shape == (3,) and spec["spacing"].dtype == np.float32
  assert isinstance(spec["case_id"], tfds.features.Text)

  # Split rule: every 5th case by sorted id (the 1st, 6th, ...) is validation.
  ids = sorted(cases)
  train, validation = (open_split(data_dir, "toy_ct", s) for s in ("train", "validation"))
  assert [validation[i]["case_id"].decode() for i in range(len(validation))] == ids[::5]
  assert [train[i]["case_id"].decode() for i in range(len(train))] == [
      c for k, c in enumerate(ids) if k % 5]
  for source in (train, validation):
    for i in range(len(source)):
      example = source[i]
      image, label = crops[example["case_id"].decode()]
      # Same spacing everywhere -> no resampling: exactly clip + z-score of the crop.
      expected = (np.clip(image.astype(np.float64), lower, upper) - mean) / std
      assert example["image"].shape == image.shape + (1,)
      np.testing.assert_allclose(example["image"][..., 0], expected, rtol=1e-4, atol=1e-4)
      np.testing.assert_array_equal(example["label"], label)
      np.testing.assert_allclose(example["spacing"], (2.5, 0.8, 0.8), rtol=1e-6)


# --- MR: two modalities, nnU-Net naming, anisotropic, nonzero mask -------------------------

def test_mr_build_resamples_and_z_scores_inside_the_mask(tmp_path):
  root = tmp_path / "raw"
  rng = np.random.default_rng(2)
  shape = (10, 36, 32)
  z_spacings, y_spacings = [3.0, 3.5, 4.0, 4.5], [0.8, 0.9, 1.0, 1.1]
  ids, cases = [], {}
  for k, (sz, sy) in enumerate(zip(z_spacings, y_spacings)):
    case_id = f"mr_{k}"
    head = ellipsoid(shape, (1, 3, 2), (9, 33, 30))
    flair = np.where(head, rng.normal(300, 50, shape), 0)
    t1 = np.where(head & (np.indices(shape)[1] > 12), rng.normal(80, 20, shape), 0)
    label = np.zeros(shape, np.uint8)
    label[ellipsoid(shape, (2, 8, 7), (8, 22, 20))] = 1
    label[box(shape, (3, 22, 12), (7, 29, 22))] = 2
    spacing = (sz, sy, 0.9)
    for c, channel in enumerate((flair, t1)):
      save(root / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", channel, spacing)
    save(root / "labelsTr" / f"{case_id}.nii.gz", label, spacing, np.uint8)
    ids.append(case_id)
    cases[case_id] = (np.stack([flair, t1]), label, spacing)
  write_dataset_json(root, "ignored", ["FLAIR", "T1w"], {0: "bg", 1: "edema", 2: "tumour"},
                     ids)
  (root / "splits.json").write_text(json.dumps({"validation": ["mr_2"]}))
  data_dir = str(tmp_path / "tfds")
  path = mv.build(str(root), data_dir, name="BraTS-toy", progress=None)
  assert path.endswith(os.path.join("medical_volumes", "brats_toy", "1.0.0"))

  # The plan from the definitions.
  crop_sizes = [np.array(nonzero_box(image))[:, 1] - np.array(nonzero_box(image))[:, 0]
                for image, _, _ in cases.values()]
  spacings = np.array([s for _, _, s in cases.values()], float)
  reductions = [np.prod(s) / np.prod(shape) for s in crop_sizes]
  assert np.median(reductions) < 0.75        # so nnU-Net normalises inside the mask
  median_spacing, median_size = np.median(spacings, 0), np.median(crop_sizes, 0)
  assert median_spacing[0] > 3 * median_spacing[1:].max()
  assert median_size[0] * 3 < median_size[1:].min()      # -> z target: 10th percentile
  expected_target = np.array([np.percentile(spacings[:, 0], 10), *median_spacing[1:]])

  import tensorflow_datasets as tfds
  builder = tfds.builder("medical_volumes/brats_toy", data_dir=data_dir)
  plan = mv.Plan.from_metadata(builder.info.metadata)
  np.testing.assert_allclose(plan.target_spacing, expected_target, rtol=1e-6)
  assert plan.use_nonzero_mask == (True, True) and plan.normalization == ("nonCT", "nonCT")
  assert plan.intensity == (None, None)
  assert builder.info.features["image"].shape == (None, None, None, 2)

  train, validation = (open_split(data_dir, "brats_toy", s) for s in ("train", "validation"))
  assert [validation[i]["case_id"].decode() for i in range(len(validation))] == ["mr_2"]
  assert [train[i]["case_id"].decode() for i in range(len(train))] == ["mr_0", "mr_1", "mr_3"]
  for source in (train, validation):
    for i in range(len(source)):
      example = source[i]
      image, label, spacing = cases[example["case_id"].decode()]
      crop_shape = [b - a for a, b in nonzero_box(image)]
      expected_shape = np.round(np.array(spacing) / expected_target * crop_shape).astype(int)
      out = example["image"]
      assert out.shape == tuple(expected_shape) + (2,)
      # Outside the mask both channels are 0; inside, each is z-scored.
      inside = out[..., 0] != 0
      assert 0.1 < 1 - inside.mean() < 0.6       # the crop's corners lie outside the head
      np.testing.assert_array_equal(out[..., 1] != 0, inside)
      for c in range(2):
        assert abs(out[..., c][inside].mean()) < 1e-4
        assert out[..., c][inside].std() == pytest.approx(1.0, abs=1e-3)
      # Labels: no new values, volumes (mm^3) roughly kept.
      assert set(np.unique(example["label"])) <= {0, 1, 2}
      for value in (1, 2):
        before = (label == value).sum() * np.prod(spacing)
        after = (example["label"] == value).sum() * np.prod(expected_target)
        assert after == pytest.approx(before, rel=0.2), value


def test_msd_4d_mr_without_mask_is_z_scored_over_the_whole_volume(tmp_path):
  rng = np.random.default_rng(3)
  shape, ids = (8, 20, 18), []
  for k in range(3):
    image = rng.normal([[[[100.0]]], [[[20.0]]]], 10.0, (2,) + shape)
    image[:, :, 0, :] = 0          # a thin zero border: the crop removes < 1/4
    label = np.zeros(shape, np.uint8)
    label[2:6, 5:12, 4:10] = 1
    save(tmp_path / "imagesTr" / f"m{k}.nii.gz", image, (1.0 + 0.2 * k, 1.2, 1.0))
    save(tmp_path / "labelsTr" / f"m{k}.nii.gz", label, (1.0 + 0.2 * k, 1.2, 1.0), np.uint8)
    ids.append(f"m{k}")
  write_dataset_json(tmp_path, "Prostate", ["T2", "ADC"], {0: "bg", 1: "gland"}, ids)
  raw = mv.read_raw_dataset(str(tmp_path))
  assert all(c.four_d for c in raw.cases)
  plan, properties = mv.plan_dataset(raw)
  assert plan.name == "prostate" and plan.use_nonzero_mask == (False, False)
  assert properties["m1"]["crop_box"] == [[0, 8], [1, 20], [0, 18]]
  for case in raw.cases:
    image, label, spacing = mv.load_case(case, 2)
    out = mv.preprocess(image, spacing, plan, label)
    assert out.image.shape[0] == 2 and out.seg.shape == out.image.shape[1:]
    for c in range(2):
      assert abs(out.image[c].mean()) < 1e-4
      assert out.image[c].std() == pytest.approx(1.0, abs=1e-3)
  # Inference: no label; the plan as read back from metadata JSON.
  again = mv.Plan.from_metadata(json.loads(json.dumps(plan.to_metadata())))
  assert again == plan
  image, _, spacing = mv.load_case(raw.cases[0], 2)
  unlabelled = mv.preprocess(image, spacing, again)
  np.testing.assert_array_equal(unlabelled.image,
                                mv.preprocess(image, spacing, plan, None).image)
  assert set(np.unique(unlabelled.label)) == {0}


# --- errors ----------------------------------------------------------------------------------

def test_clear_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
    mv.read_raw_dataset(str(tmp_path / "nowhere"))
  root = tmp_path / "raw"
  root.mkdir()
  with pytest.raises(FileNotFoundError, match="dataset.json is missing"):
    mv.build(str(root), str(tmp_path / "tfds"))

  spacing, shape = (2.0, 1.0, 1.0), (4, 6, 5)
  save(root / "imagesTr" / "a_0000.nii.gz", np.ones(shape), spacing)
  labels = {0: "bg", 1: "x"}
  write_dataset_json(root, "t", ["MRI", "T2"], labels, ["a"])
  with pytest.raises(FileNotFoundError, match=r"label file .*labelsTr/a.nii.gz"):
    mv.read_raw_dataset(str(root))
  save(root / "labelsTr" / "a.nii.gz", np.zeros(shape), spacing, np.uint8)
  with pytest.raises(FileNotFoundError, match=r"lacks modality .*a_0001.nii.gz"):
    mv.read_raw_dataset(str(root))
  write_dataset_json(root, "t", ["MRI"], labels, ["a", "b"])
  save(root / "labelsTr" / "b.nii.gz", np.zeros(shape), spacing, np.uint8)
  with pytest.raises(FileNotFoundError, match=r"no image of case 'b'.*imagesTr/b.nii.gz"):
    mv.build(str(root), str(tmp_path / "tfds"))

  for bad, message in (({"0": ""}, "unknown modality"), ({"0": 3}, "unknown modality"),
                       ({"0": "CT", "2": "CT"}, "channels 0..1"), ({}, "'modality'")):
    spec = json.loads((root / "dataset.json").read_text())
    spec["modality"] = bad
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(mv.MedicalVolumesError, match=message):
      mv.read_raw_dataset(str(root))

  # Shapes that disagree; a 4-D MSD file with more modalities than declared; unknown ids.
  write_dataset_json(root, "t", ["MRI"], labels, ["a"])
  raw = mv.read_raw_dataset(str(root))
  save(root / "labelsTr" / "a.nii.gz", np.zeros((4, 6, 6)), spacing, np.uint8)
  with pytest.raises(mv.MedicalVolumesError, match=r"label .*a.nii.gz has shape \(4, 6, 6\)"):
    mv.load_case(raw.cases[0], 1)
  save(root / "labelsTr" / "a.nii.gz", np.full(shape, 3), spacing, np.uint8)
  with pytest.raises(mv.MedicalVolumesError, match=r"holds ids \[3\]"):
    mv.load_case(raw.cases[0], 1, (0, 1))
  save(root / "imagesTr" / "c.nii.gz", np.ones((3,) + shape), spacing)
  save(root / "labelsTr" / "c.nii.gz", np.zeros(shape), spacing, np.uint8)
  write_dataset_json(root, "t", ["T1", "T2"], labels, ["c"])
  with pytest.raises(mv.MedicalVolumesError, match="holds 3 modalities but 'modality'.* 2"):
    mv.load_case(mv.read_raw_dataset(str(root)).cases[0], 2)

  # splits.json naming a case that is not there; a split that would be empty.
  write_dataset_json(root, "t", ["MRI"], labels, ["a"])
  (root / "splits.json").write_text(json.dumps({"validation": ["zz"]}))
  with pytest.raises(mv.MedicalVolumesError, match=r"\['zz'\] are not training cases"):
    mv.split_case_ids(mv.read_raw_dataset(str(root)))
  os.remove(root / "splits.json")
  with pytest.raises(mv.MedicalVolumesError, match="'train' would be empty"):
    mv.build(str(root), str(tmp_path / "tfds"))
  assert not os.path.exists(tmp_path / "tfds" / "medical_volumes")
