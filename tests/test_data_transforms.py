"""Host-side augmentation: random resized crop, flip, RandAugment, normalisation, erasing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from swin_jax.data import images as images_lib
from swin_jax.data import randaugment as ra
from swin_jax.data import transforms
from swin_jax.train.config import base_config


@pytest.fixture(scope="module")
def cat() -> Image.Image:
  """A real photo, 64x48, squeezed into [5, 250] so that no op is a no-op by accident."""
  photo = images_lib.load_image("chelsea").resize((64, 48), Image.BICUBIC)
  pixels = np.asarray(photo, np.float32)
  pixels = 5 + (pixels - pixels.min()) * (245 / (pixels.max() - pixels.min()))
  return Image.fromarray(pixels.round().astype(np.uint8))


def example(image: Image.Image | np.ndarray, label: int = 7) -> dict:
  return {"image": np.asarray(image), "label": np.int64(label)}


def rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


# --- geometry and format ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(48, 64, 3), (30, 20, 1), (25, 25)])
def test_train_output_shape_and_dtype(shape):
  image = rng().integers(0, 256, size=shape, dtype=np.uint8)
  transform = transforms.TrainTransform(
      image_size=24, randaugment=ra.RandAugment(ra.parse_randaugment("rand-m9-mstd0.5-inc1")),
      reprob=0.5)
  out = transform(example(image), rng(1))
  assert out["image"].shape == (24, 24, 3) and out["image"].dtype == np.float32
  assert out["label"] == 7 and out["label"].dtype == np.int32


def test_grayscale_is_repeated_to_three_channels():
  grey = rng().integers(0, 256, size=(5, 6, 1), dtype=np.uint8)
  rgb = np.asarray(transforms.to_pil_rgb(grey))
  assert rgb.shape == (5, 6, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], grey[..., 0])


def test_train_transform_is_deterministic_given_the_generator(cat):
  transform = transforms.train_transform(_config("rand-m9-mstd0.5-inc1", reprob=0.5))
  a = transform(example(cat), rng(5))["image"]
  np.testing.assert_array_equal(a, transform(example(cat), rng(5))["image"])
  assert not np.array_equal(a, transform(example(cat), rng(6))["image"])


def test_crop_area_and_ratio_respect_the_bounds():
  scale, ratio = (0.3, 0.5), (3 / 4, 4 / 3)
  g = rng()
  for _ in range(200):
    top, left, h, w = transforms.random_resized_crop_box(g, 400, 300, scale, ratio)
    assert 0 <= top <= 400 - h and 0 <= left <= 300 - w
    # Rounding each side to whole pixels moves the area by at most about one row + column.
    slack = (h + w + 1) / (400 * 300)
    assert scale[0] - slack <= h * w / (400 * 300) <= scale[1] + slack
    assert ratio[0] - 1 / min(h, w) <= w / h <= ratio[1] + 1 / min(h, w)


def test_crop_falls_back_to_a_centre_crop_when_nothing_fits():
  # Aspect 3..4 never fits a 100x100 image at 90-100% area: centre crop with ratio 3.
  box = transforms.random_resized_crop_box(rng(), 100, 100, (0.9, 1.0), (3.0, 4.0))
  assert box == ((100 - 33) // 2, 0, 33, 100)


def test_flip_probability_zero_and_one(cat):
  kept = transforms.TrainTransform(image_size=32, hflip=0.0)(example(cat), rng(2))["image"]
  flipped = transforms.TrainTransform(image_size=32, hflip=1.0)(example(cat), rng(2))["image"]
  np.testing.assert_array_equal(flipped, kept[:, ::-1])


def test_eval_geometry_without_random_crop_matches_the_eval_transform(cat):
  for crop in (True, False):
    out = transforms.TrainTransform(image_size=32, random_resized_crop=False, eval_crop=crop,
                                    hflip=0.0)(example(cat), rng())["image"]
    np.testing.assert_array_equal(out, images_lib.eval_transform(cat, 32, crop))
    eval_out = transforms.EvalTransform(32, crop)(example(cat))
    np.testing.assert_array_equal(eval_out["image"], out)


def test_normalisation_uses_imagenet_mean_and_std():
  image = Image.new("RGB", (2, 2), (255, 0, 128))
  mean, std = images_lib.IMAGENET_MEAN, images_lib.IMAGENET_STD
  expected = (np.array([1.0, 0.0, 128 / 255]) - mean) / std
  np.testing.assert_allclose(transforms.normalize(image)[0, 0], expected, rtol=1e-6)


def test_config_wiring():
  transform = transforms.train_transform(_config("rand-m7-n3", reprob=0.25))
  assert transform.randaugment.spec.magnitude == 7 and transform.randaugment.spec.num_ops == 3
  assert transform.randaugment.fill == (124, 116, 104)  # timm's img_mean for ImageNet
  assert transform.reprob == 0.25 and transform.image_size == 40
  assert transforms.train_transform(_config("")).randaugment is None


def _config(randaugment: str, reprob: float = 0.0):
  config = base_config()
  config.dataset.image_size = 40
  config.task.aug.randaugment = randaugment
  config.task.aug.reprob = reprob
  return config


# --- RandAugment --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ra.OPS))
def test_each_op_changes_the_image(cat, name):
  out = ra.apply_op(name, cat, 9.0, rng(), fill=transforms.MEAN_FILL)
  assert out.size == cat.size and out.mode == "RGB"
  assert not np.array_equal(np.asarray(out), np.asarray(cat))


@pytest.mark.parametrize("name", [
    "Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing"])
def test_magnitude_zero_is_identity_for_graded_ops(cat, name):
  # (Posterize keeps 4 bits at m=0 and AutoContrast/Equalize/Invert ignore m, as in timm.)
  out = ra.apply_op(name, cat, 0.0, rng(), fill=transforms.MEAN_FILL)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(cat))


def test_geometric_ops_fill_with_the_mean_colour(cat):
  out = np.asarray(ra.apply_op("TranslateXRel", cat, 10.0, rng(), fill=(1, 2, 3)))
  # 45% of the width is uncovered on one side.
  edge = out[:, :20] if (out[:, :20] == (1, 2, 3)).all() else out[:, -20:]
  assert (edge == (1, 2, 3)).all()


def test_parse_the_swin_spec():
  spec = ra.parse_randaugment("rand-m9-mstd0.5-inc1")
  assert spec == ra.RandAugmentSpec(magnitude=9, num_ops=2, magnitude_std=0.5,
                                    magnitude_max=10, increasing=True, prob=0.5)
  assert spec.ops == ra.INCREASING_OPS and len(spec.ops) == 15
  assert ra.parse_randaugment("rand-n3-m5-p1.0-mmax12-inc0") == ra.RandAugmentSpec(
      magnitude=5, num_ops=3, magnitude_max=12, prob=1.0)
  assert ra.parse_randaugment("rand-m9-mstd101").magnitude_std == math.inf
  assert ra.parse_randaugment("") is None


@pytest.mark.parametrize("spec, bad", [
    ("auto-m9", "'auto'"), ("rand-m9-x3", "'x3'"), ("rand-m9.5", "'m9.5'"),
    ("rand-mstdabc", "'mstdabc'"), ("rand-m", "'m'"), ("rand-tweights", "'tweights'")])
def test_spec_errors_name_the_bad_token(spec, bad):
  with pytest.raises(ValueError) as info:
    ra.parse_randaugment(spec)
  assert bad in str(info.value)


def test_randaugment_is_deterministic_and_samples_ops(cat):
  augment = ra.RandAugment(ra.parse_randaugment("rand-m9-mstd0.5-inc1-p1.0"))
  a = np.asarray(augment(cat, rng(1)))
  np.testing.assert_array_equal(a, np.asarray(augment(cat, rng(1))))
  assert not np.array_equal(a, np.asarray(cat))
  outputs = {np.asarray(augment(cat, rng(s))).tobytes() for s in range(8)}
  assert len(outputs) > 4


def test_magnitude_noise_is_clipped_to_the_range():
  augment = ra.RandAugment(ra.parse_randaugment("rand-m9-mstd5"))
  magnitudes = [augment._magnitude(g) for g in [rng(s) for s in range(200)]]
  assert min(magnitudes) >= 0 and max(magnitudes) <= 10
  assert 0 in magnitudes and 10 in magnitudes
  uniform = ra.RandAugment(ra.parse_randaugment("rand-m6-mstd200"))
  assert all(0 <= uniform._magnitude(rng(s)) <= 6 for s in range(50))


# --- random erasing -----------------------------------------------------------------------

def test_erasing_fills_exactly_one_box_with_noise():
  image = np.full((64, 48, 3), 7.0, np.float32)
  erased_any = False
  for seed in range(20):
    out = transforms.random_erasing(image, rng(seed), prob=1.0)
    changed = (out != 7.0).any(-1)
    if not changed.any():
      continue  # all 10 tries can miss (tall boxes); then nothing is erased
    erased_any = True
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    box = changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    assert box.all() and changed.sum() == box.size  # one filled rectangle, nothing else
    assert 0.02 * 0.9 <= box.size / (64 * 48) <= 1 / 3 * 1.1
    noise = out[changed]
    assert abs(noise.mean()) < 0.5 and 0.6 < noise.std() < 1.4
  assert erased_any
  np.testing.assert_array_equal(image, 7.0)  # input untouched


def test_erasing_probability_zero_is_identity():
  image = rng().standard_normal((16, 16, 3)).astype(np.float32)
  assert transforms.random_erasing(image, rng(), prob=0.0) is image
