"""predict: class names for 1K/22K heads, top-k, loading weights from each source, and the
segmentation overlay (colours, blend, the command on a tiny Swin-Unet run and converted dir)."""

from __future__ import annotations


import jax
import numpy as np
import pytest

from swin_jax import predict
from swin_jax.convert import params_dir
from swin_jax.convert.torch_checkpoint import export_torch_state_dict, init_params, init_variables
from swin_jax.data import class_names, images
from swin_jax.models import registry
from swin_jax.visualize import overlay
from train_runs import fake_segmentation_run, finish, start_predict

# The tests of each command fixture on one xdist worker: its subprocesses run once.
pytestmark = pytest.mark.xdist_group("predict")

TINY = dict(img_size=32, embed_dim=8, depths=(2, 2), num_heads=(1, 1), window_size=4,
            num_classes=1000)


def test_imagenet_1k_names_follow_the_standard_class_order():
  names = class_names.class_names(1000)
  assert len(names) == 1000
  assert names[0].startswith("tench") and names[281].startswith("tabby")


def test_22k_names_cover_every_head_row_and_other_heads_are_numbered():
  assert len(class_names.class_names(21841)) == 21841
  assert class_names.class_names(3) == ["class 0", "class 1", "class 2"]


def test_top_classes_are_sorted_probabilities_with_names():
  logits = np.full(1000, -5.0, np.float32)
  logits[281], logits[285] = 4.0, 3.0
  top = predict.top_classes(logits, 3)
  assert [index for index, _, _ in top][:2] == [281, 285]
  assert top[0][1].startswith("tabby") and top[1][1].startswith("Egyptian cat")
  expected = np.exp(4.0) / (np.exp(4.0) + np.exp(3.0) + 998 * np.exp(-5.0))
  assert top[0][2] == pytest.approx(expected, rel=1e-5)


def test_weights_load_from_a_converted_dir_and_a_state_dict_file(tmp_path):
  model = registry.create_model("swin_t", **TINY)
  params = init_params(model, seed=3)
  params_dir.save_params_dir(str(tmp_path / "converted"), params, "swin_t", TINY)
  _, loaded, source = predict.load_model_and_params("ignored", str(tmp_path / "converted"))
  assert source.endswith("converted")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.savez(tmp_path / "weights.npz", **export_torch_state_dict(params, model))
  _, from_file, _ = predict.load_model_and_params("swin_t", str(tmp_path / "weights.npz"),
                                                  **TINY)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(from_file)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bundled_image_goes_through_the_official_eval_transform():
  pixels = images.eval_transform(images.load_image("chelsea"), 224)
  assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
  assert abs(float(pixels.mean())) < 2.0
  with pytest.raises(FileNotFoundError, match="no_such.jpg"):
    images.load_image("no_such.jpg")


# ----------------------------------------------------------------------------------------
# Segmentation: the overlay helpers, then the command on a tiny Swin-Unet.


def test_class_colours_are_fixed_distinct_and_skip_the_background():
  colors = overlay.class_colors(11)
  assert colors.shape == (11, 3) and colors.dtype == np.uint8
  assert tuple(colors[0]) == (0, 0, 0)            # the background is never drawn
  assert tuple(colors[1]) == (31, 119, 180)       # class 1 is tab10 blue in every figure
  assert len({tuple(c) for c in colors[1:]}) == 10
  np.testing.assert_array_equal(overlay.class_colors(30)[:11], colors)  # by index only
  assert len({tuple(c) for c in overlay.class_colors(150)[1:]}) == 149


def test_blend_colours_planted_classes_and_leaves_the_background():
  image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
  labels = np.zeros((6, 8), np.int64)
  labels[1:3, 2:5], labels[4:, 6:] = 1, 3
  colors = overlay.class_colors(4)
  out = overlay.blend(image, labels, colors, alpha=0.25)
  for k in (1, 3):
    where = labels == k
    expected = np.rint(0.75 * image[where] + 0.25 * colors[k].astype(np.float64))
    np.testing.assert_array_equal(out[where], expected.astype(np.uint8))
    assert not np.array_equal(out[where], image[where])
  np.testing.assert_array_equal(out[labels == 0], image[labels == 0])
  with pytest.raises(ValueError, match="differ in size"):
    overlay.blend(image, labels[:, :5], colors)


def test_upsample_labels_is_nearest_by_pixel_centre():
  labels = np.arange(6).reshape(2, 3)
  np.testing.assert_array_equal(overlay.upsample_labels(labels, (4, 6)),
                                np.kron(labels, np.ones((2, 2), int)))
  odd = overlay.upsample_labels(labels, (5, 7))
  assert odd.shape == (5, 7) and set(odd[:, 0]) == {0, 3} and set(odd[0]) == {0, 1, 2}


def test_legend_lists_predicted_classes_with_colour_and_share():
  labels = np.array([[0, 0, 2, 2], [0, 0, 2, 1]])
  lines = overlay.legend_lines(labels, overlay.class_colors(4), ["bg", "a", "b", "c"])
  text = "\n".join(lines)
  assert "bg" in text and "(none)" in text and "50.00%" in text
  assert "#ff7f0e" in text and "37.50%" in text and "12.50%" in text  # class 2 is tab10[1]
  assert "1 of 4 classes not predicted" in text


def test_segmentation_input_normalisation_follows_the_run():
  assert predict.segmentation_normalization(None) == "imagenet"
  digits = {"task": {"normalize": "auto"}, "dataset": {"name": "digit_scenes/128px"}}
  assert predict.segmentation_normalization(digits) == "imagenet"
  synapse = {"task": {"normalize": "auto"}, "dataset": {"name": "synapse"}}
  assert predict.segmentation_normalization(synapse) == "none"
  pixels = predict.segmentation_input(images.Image.new("RGB", (45, 30), (255, 0, 0)), (32, 32),
                                      "none")
  assert pixels.shape == (32, 32, 3) and pixels.dtype == np.float32
  np.testing.assert_allclose(pixels[..., 0], 1.0, atol=1e-4)


UNET_NAME = "swin_unet_tiny_patch4_window7_224"
UNET = dict(img_size=32, patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
            window_size=4, num_classes=4, drop_path_rate=0.0)
UNET_CLASSES = ("background", "disc", "ring", "bar")


@pytest.fixture(scope="module")
def segment_cli(tmp_path_factory):
  """The command on a tiny Swin-Unet: a run dir at the model's size, a converted dir at
  another size, a missing image and a file that is not an image (all four at once)."""
  tmp = tmp_path_factory.mktemp("segment")
  model = registry.create_model(UNET_NAME, **UNET)
  params = init_params(model, seed=5)
  run = fake_segmentation_run(tmp / "run", params, UNET_NAME, UNET, UNET_CLASSES)
  params_dir.save_params_dir(str(tmp / "converted"), params, UNET_NAME, UNET)
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  images.Image.fromarray(image).save(tmp / "scene.png")
  images.Image.fromarray(rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(
      tmp / "wide.png")
  (tmp / "notes.png").write_text("not an image")
  processes = {
      "run": start_predict(tmp, "--checkpoint", run, "--image", str(tmp / "scene.png"),
                           "--overlay", str(tmp / "out" / "scene_mask.png")),
      "converted": start_predict(tmp, "--checkpoint", str(tmp / "converted"), "--image",
                                 "wide.png"),
      "missing": start_predict(tmp, "--checkpoint", run, "--image", "missing.png"),
      "not_image": start_predict(tmp, "--checkpoint", run, "--image", "notes.png")}
  results = {k: finish(p) for k, p in processes.items()}
  return dict(results=results, tmp=tmp, model=model, params=params, image=image)


def test_run_dir_overlay_colours_each_predicted_class(segment_cli):
  code, stdout, stderr = segment_cli["results"]["run"]
  assert code == 0, stderr[-3000:]
  model, params, image = segment_cli["model"], segment_cli["params"], segment_cli["image"]
  # The prediction, independently: ImageNet mean/std (the run's 'auto' on uint8 scenes).
  pixels = (image / np.float32(255.0) - images.IMAGENET_MEAN) / images.IMAGENET_STD
  logits = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(
      params, pixels[None].astype(np.float32)))[0]
  labels = logits.argmax(-1)
  top2 = np.sort(logits, -1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-4   # skip near-ties another program may flip
  foreground = [k for k in range(1, 4) if np.any(clear & (labels == k))]
  assert len(foreground) >= 2, "the planted check needs at least two foreground classes"

  written = np.asarray(images.Image.open(segment_cli["tmp"] / "out" / "scene_mask.png"))
  assert written.shape == (32, 32, 3)
  colors = overlay.class_colors(4)
  for k in range(4):
    where = clear & (labels == k)
    expected = image[where] if k == 0 else np.rint(
        0.5 * image[where] + 0.5 * colors[k].astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(written[where], expected, err_msg=UNET_CLASSES[k])
  assert "segmentation" in stdout and "scene_mask.png" in stdout
  for k in foreground:  # the run's class names, colours and pixel shares
    line = next(l for l in stdout.splitlines() if l.strip().startswith(UNET_CLASSES[k]))
    assert overlay.hex_color(colors[k]) in line
    assert f"{np.mean(labels == k):.2%}" in line


def test_converted_dir_overlay_has_the_input_size(segment_cli):
  code, stdout, stderr = segment_cli["results"]["converted"]
  assert code == 0, stderr[-3000:]
  written = images.Image.open(segment_cli["tmp"] / "wide_segmentation.png")
  assert written.size == (45, 30)
  assert "45x30 image -> 32x32 model input" in stdout
  assert "class 1" in stdout or "class 2" in stdout or "class 3" in stdout


def test_bad_images_give_one_line_errors(segment_cli):
  code, stdout, stderr = segment_cli["results"]["missing"]
  assert code == 1 and "error: image missing.png not found" in stderr
  assert "Traceback" not in stderr
  code, stdout, stderr = segment_cli["results"]["not_image"]
  assert code == 1 and "error: notes.png is not an image file" in stderr
  assert "Traceback" not in stderr


UPERNET_NAME = "upernet_swin_tiny_patch4_window7_512"
UPERNET = dict(img_size=32, patch_size=2, embed_dim=8, depths=(1, 1, 1), num_heads=(1, 1, 1),
               window_size=4, num_classes=4, channels=8, aux_channels=4, pool_scales=(1, 2),
               drop_path_rate=0.0)


def _planted_batch_stats(batch_stats, seed: int):
  """Running means and variances far from init (0 and 1), so ignoring them shows."""
  leaves, treedef = jax.tree.flatten_with_path(batch_stats)
  rng = np.random.default_rng(seed)
  planted = [rng.normal(0, 0.5, x.shape).astype(np.float32) if path[-1].key == "mean" else
             rng.uniform(0.3, 3.0, x.shape).astype(np.float32) for path, x in leaves]
  return jax.tree.unflatten(treedef, planted)


@pytest.fixture(scope="module")
def upernet_cli(tmp_path_factory):
  """The command on a tiny UperNet whose BatchNorm statistics are planted: from a run dir
  (train state ``model_state``) and a converted dir (``model_state/``), side by side."""
  tmp = tmp_path_factory.mktemp("upernet")
  model = registry.create_model(UPERNET_NAME, **UPERNET)
  variables = init_variables(model, seed=2)
  params = variables["params"]
  model_state = {"batch_stats": _planted_batch_stats(variables["batch_stats"], seed=4)}
  run = fake_segmentation_run(tmp / "run", params, UPERNET_NAME, UPERNET, UNET_CLASSES,
                              model_state)
  params_dir.save_params_dir(str(tmp / "converted"), params, UPERNET_NAME, UPERNET,
                             model_state=model_state)
  image = np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  images.Image.fromarray(image).save(tmp / "scene.png")
  processes = {source: start_predict(tmp, "--checkpoint", str(tmp / source), "--image",
                                      "scene.png", "--overlay", f"{source}.png")
               for source in ("run", "converted")}
  return dict(results={k: finish(p) for k, p in processes.items()}, tmp=tmp, model=model,
              params=params, model_state=model_state, image=image,
              init_stats=variables["batch_stats"])


def test_upernet_overlay_uses_the_saved_batchnorm_statistics(upernet_cli):
  model, image = upernet_cli["model"], upernet_cli["image"]
  pixels = ((image / np.float32(255.0) - images.IMAGENET_MEAN) /
            images.IMAGENET_STD)[None].astype(np.float32)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  logits = np.asarray(forward({"params": upernet_cli["params"], **upernet_cli["model_state"]},
                              pixels))[0]
  labels = logits.argmax(-1)
  top2 = np.sort(logits, -1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-4
  # The planted statistics matter: init statistics predict other classes.
  other = np.asarray(forward({"params": upernet_cli["params"],
                              "batch_stats": upernet_cli["init_stats"]},
                             pixels))[0].argmax(-1)
  assert np.mean(other[clear] != labels[clear]) > 0.1
  colors = overlay.class_colors(4)
  for source in ("run", "converted"):
    code, stdout, stderr = upernet_cli["results"][source]
    assert code == 0, stderr[-3000:]
    assert "upernet_swin_tiny_patch4_window7_512 (window 4" in stdout
    written = np.asarray(images.Image.open(upernet_cli["tmp"] / f"{source}.png"))
    for k in range(4):
      where = clear & (labels == k)
      expected = image[where] if k == 0 else np.rint(
          0.5 * image[where] + 0.5 * colors[k].astype(np.float64)).astype(np.uint8)
      np.testing.assert_array_equal(written[where], expected, err_msg=f"{source}: class {k}")
