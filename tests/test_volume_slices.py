"""Orthogonal slices of a volume with labels overlaid (visualize.volume_slices), and
``python -m swin_jax.predict --volume`` on a tiny nnFormer run (predict_volume)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from swin_jax import predict_volume
from swin_jax.data import medical_volumes
from swin_jax.data import organ_phantoms
from swin_jax.train import init_from
from swin_jax.visualize import overlay
from swin_jax.visualize import volume_slices as vs
from train_runs import compilation_cache_dir, compilation_cache_env, finish, start_predict
from nnformer_runs import GROUP, SIZE

pytestmark = pytest.mark.xdist_group(GROUP)

NAMES = ("background", "a", "b", "c")


def _planted(shape=(6, 8, 10), seed=0):
  rng = np.random.default_rng(seed)
  volume = rng.normal(size=shape).astype(np.float32)
  labels = np.zeros(shape, np.int64)
  labels[1:5, 2:6, 3:7] = 1
  labels[2:4, 3:5, 4:6] = 2
  labels[3, 6:8, 0:2] = 3
  return volume, labels


def _panel(image: Image.Image, box) -> np.ndarray:
  left, top, right, bottom = box
  return np.asarray(image)[top:bottom, left:right]


def test_window_is_the_1st_to_99th_percentile():
  volume = np.random.default_rng(1).normal(size=(5, 6, 7)) * 3 + 2
  lo, hi = np.percentile(volume, [1, 99])
  np.testing.assert_allclose(vs.window(volume), np.clip((volume - lo) / (hi - lo), 0, 1),
                             atol=1e-6)


def test_three_panels_blend_each_class_and_leave_class_0():
  volume, labels = _planted()
  point = (3, 4, 5)
  image = vs.draw_orthogonal_slices(volume, labels, point=point, class_names=NAMES,
                                    pixel_mm=1.0, alpha=0.4)
  layout = vs.slice_layout(volume.shape, rows=("prediction",), pixel_mm=1.0,
                           class_names=NAMES)
  assert image.size == layout.size and image.mode == "RGB"
  assert [view for _, view in layout.boxes] == list(vs.VIEWS)
  assert layout.panel_shapes == {"axial": (8, 10), "coronal": (6, 10), "sagittal": (6, 8)}
  grey = np.rint(vs.window(volume) * 255).astype(np.uint8)
  colors = overlay.class_colors(4)
  seen = set()
  for axis, view in enumerate(vs.VIEWS):
    shown = _panel(image, layout.boxes[("prediction", view)])
    g = np.take(grey, point[axis], axis=axis)
    lab = np.take(labels, point[axis], axis=axis)
    assert shown.shape == (*lab.shape, 3)
    np.testing.assert_array_equal(shown[lab == 0], np.repeat(g[lab == 0][:, None], 3, 1))
    for k in range(1, 4):
      where = lab == k
      seen |= {k} if where.any() else set()
      expected = np.rint(0.6 * g[where][:, None].astype(np.float64) + 0.4 * colors[k])
      np.testing.assert_array_equal(shown[where], expected.astype(np.uint8))
  assert seen == {1, 2, 3}
  # The legend: a swatch of each foreground class in its colour.
  assert [k for k, _, _ in layout.legend_entries] == [1, 2, 3]
  for k, x, y in layout.legend_entries:
    assert tuple(np.asarray(image)[y + vs.LINE // 2, x + 2]) == tuple(colors[k])


def test_default_point_is_the_foreground_centre_else_the_volume_centre():
  volume, labels = _planted()
  only = np.zeros_like(labels)
  only[1:4, 2:7, 5] = 2
  assert vs.foreground_centre(only, only.shape) == (2, 4, 5)
  assert vs.foreground_centre(np.zeros_like(labels), labels.shape) == (3, 4, 5)
  assert vs.foreground_centre(None, (7, 9, 2)) == (3, 4, 1)
  drawn = vs.draw_orthogonal_slices(volume, only, pixel_mm=1.0)
  explicit = vs.draw_orthogonal_slices(volume, only, point=(2, 4, 5), pixel_mm=1.0)
  np.testing.assert_array_equal(np.asarray(drawn), np.asarray(explicit))


def test_anisotropic_spacing_gives_square_millimetre_pixels():
  shape, spacing = (4, 12, 10), (3.0, 1.0, 0.5)
  volume = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  labels = np.zeros(shape, np.int64)
  labels[1, :, :] = 1                       # one D slice: 3 pixel rows at 1 mm pixels
  image = vs.draw_orthogonal_slices(volume, labels, point=(1, 6, 5), spacing=spacing,
                                    pixel_mm=1.0)
  layout = vs.slice_layout(shape, spacing, pixel_mm=1.0, class_names=("x", "y"))
  assert layout.panel_shapes == {"axial": (12, 5), "coronal": (12, 5), "sagittal": (12, 12)}
  assert image.size == layout.size
  coronal = _panel(image, layout.boxes[("prediction", "coronal")])
  coloured = np.any(coronal != coronal[..., :1], axis=-1)    # not grey: blended
  assert np.array_equal(np.flatnonzero(coloured.any(axis=1)), [3, 4, 5])
  # The default zoom: the finest spacing enlarged by an integer factor to MIN_PANEL.
  auto = vs.slice_layout(shape, spacing)
  assert auto.pixel_mm == pytest.approx(0.5 / 7)    # 12 mm = 24 finest pixels, x7 >= 160
  for view, (rows, cols) in auto.panel_shapes.items():
    (n_rows, n_cols), (s_rows, s_cols) = vs.view_planes(shape, spacing)[view]
    assert rows * auto.pixel_mm == pytest.approx(n_rows * s_rows, abs=auto.pixel_mm)
    assert cols * auto.pixel_mm == pytest.approx(n_cols * s_cols, abs=auto.pixel_mm)
  assert max(max(s) for s in auto.panel_shapes.values()) >= vs.MIN_PANEL


def test_ground_truth_row_and_a_plain_image(tmp_path):
  volume, labels = _planted()
  truth = np.zeros_like(labels)
  truth[:, :4] = 3
  path = tmp_path / "sub" / "slices.png"
  vs.write_orthogonal_slices(str(path), volume, labels, ground_truth=truth, point=(3, 4, 5),
                             class_names=NAMES, pixel_mm=1.0)
  image = Image.open(path)
  layout = vs.slice_layout(volume.shape, rows=("prediction", "ground truth"), pixel_mm=1.0,
                           class_names=NAMES)
  assert image.size == layout.size and len(layout.boxes) == 6
  axial_truth = _panel(image, layout.boxes[("ground truth", "axial")])
  assert np.all(axial_truth[4:] == axial_truth[4:, :, :1])   # class 0: grey
  assert not np.any(np.all(axial_truth[:4] == axial_truth[:4, :, :1], axis=-1))
  axial = _panel(image, layout.boxes[("prediction", "axial")])
  assert not np.array_equal(axial, axial_truth)
  plain = vs.draw_orthogonal_slices(volume, None, pixel_mm=1.0)
  plain_layout = vs.slice_layout(volume.shape, rows=("image",), pixel_mm=1.0)
  assert plain.size == plain_layout.size and plain_layout.legend_entries == ()
  axial = _panel(plain, plain_layout.boxes[("image", "axial")])
  assert np.all(axial == axial[..., :1])


def test_drawing_errors_name_the_problem():
  volume, labels = _planted()
  with pytest.raises(ValueError, match="differ in shape"):
    vs.draw_orthogonal_slices(volume, labels[:, :5])
  with pytest.raises(ValueError, match="not a voxel"):
    vs.draw_orthogonal_slices(volume, labels, point=(6, 0, 0))
  with pytest.raises(ValueError, match="outside the 2 classes"):
    vs.draw_orthogonal_slices(volume, labels, class_names=("bg", "x"))
  with pytest.raises(ValueError, match="spacing must be"):
    vs.draw_orthogonal_slices(volume, labels, spacing=(1, 0, 1))


# ----------------------------------------------------------------------------------------
# The command on a tiny nnFormer run.


def _start_predict(cwd, cache_dir, *args):
  return start_predict(cwd, *args, env=compilation_cache_env(cache_dir))


@pytest.fixture(scope="module")
def volume_cli(nnformer_tiny_run, tmp_path_factory):
  """The shared tiny nnFormer run (conftest); the command on eval:0 and, without mirroring,
  on a .npy crop of another volume; --image with --volume; a 3-D run without --volume
  (concurrently; their programs from the session's compilation cache)."""
  tmp = tmp_path_factory.mktemp("volume_cli")
  cache = compilation_cache_dir(tmp_path_factory)
  run = nnformer_tiny_run[0]
  crop = organ_phantoms.make_example("test", 1, size=SIZE)["image"][2:18, 4:40, :]
  np.save(tmp / "crop.npy", crop[..., 0])
  started = {
      "eval": _start_predict(tmp, cache, "--checkpoint", run, "--volume", "eval:0",
                             "--overlay", str(tmp / "out" / "eval0.png")),
      "npy": _start_predict(tmp, cache, "--checkpoint", run, "--volume", "crop.npy",
                            "--no_mirroring"),
      "both": _start_predict(tmp, cache, "--checkpoint", run, "--volume", "eval:0",
                             "--image", "chelsea"),
      "no_volume": _start_predict(tmp, cache, "--checkpoint", run),
  }
  results = {name: finish(process) for name, process in started.items()}
  return dict(results=results, tmp=tmp, run=run, crop=crop)


def _class_rows(stdout: str) -> dict[str, list[str]]:
  rows = {}
  for line in stdout.splitlines():
    fields = line.split()
    if fields and fields[0] in organ_phantoms.CLASS_NAMES and len(fields) >= 4:
      rows[fields[0]] = fields
  return rows


def test_eval_volume_slices_counts_and_dice(volume_cli):
  code, stdout, stderr = volume_cli["results"]["eval"]
  assert code == 0, stderr[-3000:]
  example = organ_phantoms.make_example("test", 0, size=SIZE)
  rows = _class_rows(stdout)
  assert list(rows) == list(organ_phantoms.CLASS_NAMES)
  assert sum(int(r[2]) for r in rows.values()) == np.prod(SIZE)
  truth = np.bincount(example["label"].ravel(), minlength=5)
  assert [int(r[4]) for r in rows.values()] == truth.tolist()
  dices = [float(r[5]) for name, r in rows.items() if name != "background"]
  assert all(0.0 <= d <= 1.0 for d in dices)
  mean = float(re.search(r"mean Dice ([0-9.]+) over classes 1\.\.4", stdout).group(1))
  assert mean == pytest.approx(np.mean(dices), abs=2e-4)
  assert "8 windows of (16, 32, 32)" in stdout and "mirroring over axes (0,)" in stdout

  # Two rows (prediction, ground truth) at the phantoms' (2, 1, 1) mm; the truth row is the
  # label drawn through the printed point.
  point = tuple(int(v) for v in re.search(r"d, h, w = \((\d+), (\d+), (\d+)\)",
                                          stdout).groups())
  written = Image.open(volume_cli["tmp"] / "out" / "eval0.png")
  layout = vs.slice_layout(SIZE, organ_phantoms.SPACING, rows=("prediction", "ground truth"),
                           class_names=organ_phantoms.CLASS_NAMES)
  assert written.size == layout.size
  assert layout.panel_shapes == {"axial": (160, 160), "coronal": (160, 160),
                                 "sagittal": (160, 160)}
  again = vs.draw_orthogonal_slices(example["image"][..., 0], example["label"], point=point,
                                    spacing=organ_phantoms.SPACING,
                                    class_names=organ_phantoms.CLASS_NAMES)
  for view in vs.VIEWS:
    np.testing.assert_array_equal(_panel(written, layout.boxes[("ground truth", view)]),
                                  _panel(again, layout.boxes[("prediction", view)]))


def test_npy_volume_without_mirroring(volume_cli):
  code, stdout, stderr = volume_cli["results"]["npy"]
  assert code == 0, stderr[-3000:]
  crop = volume_cli["crop"]
  rows = _class_rows(stdout)
  assert sum(int(r[2]) for r in rows.values()) == crop[..., 0].size
  assert "4 windows" in stdout and "mirroring over axes none" in stdout
  written = Image.open(volume_cli["tmp"] / "crop_slices.png")   # the default path, cwd
  layout = vs.slice_layout(crop.shape[:3], rows=("prediction",),
                           class_names=organ_phantoms.CLASS_NAMES)
  assert written.size == layout.size


def test_image_and_volume_together_or_a_3d_run_without_volume_is_refused(volume_cli):
  code, _, stderr = volume_cli["results"]["both"]
  assert code == 2 and "error: give --image or --volume, not both" in stderr
  code, _, stderr = volume_cli["results"]["no_volume"]
  assert code == 2 and "is a 3-D volume_segmentation run: give --volume" in stderr
  assert "Traceback" not in stderr


def test_volume_errors_name_the_problem(volume_cli, tmp_path):
  run = volume_cli["run"]
  with pytest.raises(ValueError, match="no --checkpoint given"):
    predict_volume.volume_run_config(None)
  with pytest.raises(ValueError, match="not a training run directory"):
    predict_volume.volume_run_config(str(tmp_path))
  config = init_from.run_config(run)
  other = tmp_path / "seg_run"
  other.mkdir()
  (other / init_from.RUN_CONFIG_FILE).write_text(json.dumps(
      {**config, "task": {**config["task"], "name": "segmentation"}}))
  with pytest.raises(ValueError, match="is a 'segmentation' run"):
    predict_volume.volume_run_config(str(other))
  with pytest.raises(ValueError, match="has 2 volumes"):
    predict_volume.read_volume("eval:2", run, config)
  with pytest.raises(ValueError, match="integer N"):
    predict_volume.read_volume("eval:x", run, config)
  np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
  with pytest.raises(ValueError, match=r"\(D, H, W\) or \(D, H, W, C\)"):
    predict_volume.read_volume(str(tmp_path / "flat.npy"), run, config)
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    predict_volume.read_volume("missing.npy", run, config)
  with pytest.raises(ValueError, match="expected eval:N"):
    predict_volume.read_volume("scan.png", run, config)


def test_nifti_is_z_scored_or_preprocessed_by_the_stored_plan(tmp_path):
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  zyx = rng.normal(5.0, 2.0, size=(6, 10, 12)).astype(np.float32)
  affine = np.diag([0.8, 0.8, 2.5, 1.0])            # x, y, z
  nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), affine), str(tmp_path / "ct.nii.gz"))
  config = {"dataset": {"name": organ_phantoms.dataset_name(), "data_dir": str(tmp_path)}}
  volume = predict_volume.read_volume(str(tmp_path / "ct.nii.gz"), "run", config)
  assert volume.overlay_path == "ct_slices.png"
  assert volume.spacing == pytest.approx((2.5, 0.8, 0.8))
  np.testing.assert_allclose(volume.image[..., 0], (zyx - zyx.mean()) / zyx.std(), atol=1e-4)
  plan = medical_volumes.Plan(name="toy", modalities=("CT",), labels={0: "background"},
                              target_spacing=(2.0, 1.0, 1.0), normalization=("CT",),
                              use_nonzero_mask=(False,),
                              intensity=({"mean": 5.0, "std": 2.0, "lower": 1.0,
                                          "upper": 9.0},))
  data, spacing = medical_volumes.read_nifti(str(tmp_path / "ct.nii.gz"))
  image, shown_spacing, how = predict_volume.nifti_input(data, spacing, plan)
  expected = medical_volumes.preprocess(data[None], spacing, plan).image
  np.testing.assert_array_equal(image, expected.transpose(1, 2, 3, 0))
  assert shown_spacing == (2.0, 1.0, 1.0) and "medical_volumes/toy" in how
