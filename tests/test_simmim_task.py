"""SimMIM on the task seam: the recipes' numbers, the masks the transforms draw, the eval
loss, a tiny run through the one loop (figure, exact resume) and its fine-tune into a
classifier."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import swin_jax
from swin_jax import tasks
from swin_jax.data import demo_dataset
from swin_jax.models.simmim import masked_l1_loss, upsample_mask
from swin_jax.tasks import simmim as simmim_task
from swin_jax.train import config as config_lib
from swin_jax.train import init_from
from swin_jax.train import loop
from swin_jax.train import optimizer as opt_lib
from train_runs import (REPO, assert_same_state, compilation_cache_dir,
                        persistent_compilation_cache, resume_from_checkpoint, train_losses)

# The tests of one tiny run (and its data) on one xdist worker: the run is built once.
pytestmark = pytest.mark.xdist_group("simmim_task")

IMAGENET_TRAIN = 1281167


def load(name: str):
  path = os.path.join(REPO, "configs", "simmim", name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config_lib.validate_config(config)
  return config


def schedule_of(config):
  per_epoch = IMAGENET_TRAIN // config.batch_size
  total = int(config.num_epochs * per_epoch)
  _, schedule = opt_lib.make_optimizer(config, total, per_epoch)
  return schedule, per_epoch, total


# --- recipes -----------------------------------------------------------------------------


def test_pretrain_100ep_lr_is_the_official_rule_at_batch_2048():
  config = load("swin_b_192_100ep.py")
  assert config.model.name == "simmim_swin_base_window6_192"
  assert config.batch_size == 2048 and config.optimizer.clip_grad_norm == 5.0
  schedule, per_epoch, total = schedule_of(config)
  scale = 2048 / 512   # BASE_LR * batch / 512 for all three rates
  warmup = 10 * per_epoch
  lr_min, lr_max, lr_warm = 1e-5 * scale, 2e-4 * scale, 1e-6 * scale
  # SimMIM's CosineLRScheduler(t_initial=num_steps, warmup_t=W, t_in_epochs=False): timm
  # without warmup_prefix, written out per iteration.
  def official(t):
    if t < warmup:
      return lr_warm + t * (lr_max - lr_warm) / warmup
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + np.cos(np.pi * t / total))
  for t in (0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, total // 2, total - 1):
    assert float(schedule(t)) == pytest.approx(official(t), rel=1e-9), t
  assert float(schedule(warmup)) < lr_max


def test_pretrain_800ep_is_multistep_at_epoch_700():
  config = load("swin_b_192_800ep.py")
  schedule, per_epoch, _ = schedule_of(config)
  scale = 2048 / 512
  assert float(schedule(0)) == pytest.approx(5e-7 * scale)
  assert float(schedule(10 * per_epoch)) == pytest.approx(1e-4 * scale)
  # MultiStepLRScheduler: gamma ** bisect_right(milestones, t), milestones in absolute
  # iterations (700 * iterations per epoch).
  assert float(schedule(700 * per_epoch - 1)) == pytest.approx(1e-4 * scale)
  assert float(schedule(700 * per_epoch)) == pytest.approx(1e-5 * scale)


@pytest.mark.parametrize("name,decay", [("swin_b_224_ft_100ep.py", 0.9),
                                        ("swin_b_224_ft_800ep.py", 0.8)])
def test_finetune_recipes_scale_each_layer_like_the_official_get_layer_id(name, decay):
  config = load(name)
  assert config.optimizer.layer_decay == decay
  assert config.model.overrides.drop_path_rate == 0.1
  assert config.task.aug.randaugment == "rand-m9-mstd0.5-inc1"
  assert (config.task.mixup.mixup_alpha, config.task.mixup.cutmix_alpha) == (0.8, 1.0)
  schedule, per_epoch, _ = schedule_of(config)
  assert float(schedule(0)) == pytest.approx(2.5e-7 * 4)
  warmup, total = 20 * per_epoch, 100 * per_epoch
  lr_end, lr_max = 2.5e-7 * 4, 1.25e-3 * 4
  assert float(schedule(warmup)) == pytest.approx(
      lr_end + 0.5 * (lr_max - lr_end) * (1 + np.cos(np.pi * warmup / total)), rel=1e-9)
  # The scale of a few official names of Swin-B (depths 2-2-18-2, 24 layers, top id 25),
  # written from the official rule: block j of stage i -> sum(depths[:i]) + j + 1, a
  # stage's downsample -> sum(depths[:i + 1]), patch embed 0, the rest 25.
  model = swin_jax.create_model(config.model.name, **config_lib.model_overrides(config))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  scales = opt_lib.layer_decay_scales(params["params"], decay)
  stage2 = scales["layers_2"]["block_pairs"]["block1"]["mlp"]["fc1"]["kernel"]
  # Stacked pair m of stage 2 holds block 2m + 1: id 4 + 2m + 1 + 1.
  expected = [decay ** (25 - (4 + 2 * m + 2)) for m in range(9)]
  np.testing.assert_allclose(np.asarray(stage2).ravel(), expected, rtol=1e-6)
  assert scales["patch_embed"]["proj"]["kernel"] == pytest.approx(decay ** 25)
  assert scales["layers_1"]["downsample"]["reduction"]["kernel"] == pytest.approx(
      decay ** (25 - 4))
  assert scales["head"]["kernel"] == scales["norm"]["scale"] == 1.0


# --- masks and transforms ----------------------------------------------------------------


def test_train_transform_draws_the_official_masks_and_crops():
  config = load("swin_b_192_100ep.py")
  transform = tasks.get_task(config).train_transform()
  image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  rng = np.random.default_rng(1)
  masks = []
  for _ in range(400):
    out = transform({"image": image, "label": 3}, rng)
    assert out["image"].shape == (192, 192, 3) and out["image"].dtype == np.float32
    masks.append(out["patch_mask"])
  masks = np.stack(masks)
  assert masks.shape == (400, 48, 48)
  cells = masks[:, ::8, ::8]                       # one value per 32 px cell
  # Constant on each 8 x 8 block of model patches; exactly ceil(36 * 0.6) = 22 cells.
  np.testing.assert_array_equal(np.repeat(np.repeat(cells, 8, 1), 8, 2), masks)
  np.testing.assert_array_equal(cells.reshape(400, -1).sum(-1), 22)
  # A uniform random permutation: every cell is masked with probability 22/36.
  frequency = cells.mean(0)
  assert np.abs(frequency - 22 / 36).max() < 0.1
  # The same generator state gives the same example (masks come from the example's rng).
  a = transform({"image": image}, np.random.default_rng(7))
  b = transform({"image": image}, np.random.default_rng(7))
  np.testing.assert_array_equal(a["patch_mask"], b["patch_mask"])
  np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_masks_are_fixed_per_image():
  config = load("swin_b_192_100ep.py")
  transform = tasks.get_task(config).eval_transform()
  rng = np.random.default_rng(0)
  one, two = (rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2))
  np.testing.assert_array_equal(transform({"image": one})["patch_mask"],
                                transform({"image": one.copy()})["patch_mask"])
  assert not np.array_equal(transform({"image": one})["patch_mask"],
                            transform({"image": two})["patch_mask"])


def test_eval_sums_give_the_official_loss_over_the_real_examples():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
  recon = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
  mask = jnp.asarray(rng.integers(0, 2, (4, 4, 4)), jnp.int32)
  real = jnp.asarray([1.0, 1.0, 1.0, 0.0])
  sums = simmim_task.masked_l1_sums(images, recon, mask, 4, real)
  official = masked_l1_loss(images[:3], recon[:3], upsample_mask(mask[:3], 4))
  # The official loss adds 1e-5 to the pixel count; at 16 x 16 x 3 that is < 1e-7 relative.
  assert float(sums["loss"] / sums["count"]) == pytest.approx(float(official), rel=1e-6)


def test_model_and_data_mismatches_are_named():
  config = load("demo.py")
  config.dataset.image_size = 48
  with pytest.raises(ValueError, match="built for 32 px images but dataset.image_size is 48"):
    tasks.get_task(config).build_model()
  config = load("demo.py")
  config.model.overrides.encoder_stride = 32
  with pytest.raises(ValueError, match="encoder_stride 32 must be the encoder's total "
                                       "downsampling 8"):
    tasks.get_task(config).build_model()
  config = load("demo.py")
  config.task.mask_patch_size = 5
  with pytest.raises(ValueError, match="not divisible by mask_patch_size 5"):
    tasks.get_task(config).build_model()
  config = load("demo.py")
  config.model.name = "swin_tiny_patch4_window7_224"
  config.model.overrides.encoder_stride = None      # a SimMIM field
  with pytest.raises(ValueError, match="needs a SimMIM model"):
    tasks.get_task(config).build_model()


# --- the loop ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  demo_dataset.ensure_demo_dataset(path)
  return path


def tiny_demo(data_dir, total_steps=2):
  config = load("demo.py")
  config.model.overrides.update(dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                                     patch_size=4, encoder_stride=8))
  config.dataset.data_dir = data_dir
  config.dataset.read_threads = 2
  config.dataset.eval_split = "test[:16]"
  config.task.num_figure_images = 3
  config.batch_size = 8
  config.eval_batch_size = 8
  config.total_steps = total_steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1
  return config


@pytest.fixture(scope="module")
def demo_run(data_dir, tmp_path_factory):
  """Two steps of the demo recipe on a tiny encoder (2 stages, stride 8), a checkpoint
  after each."""
  workdir = str(tmp_path_factory.mktemp("simmim_run"))
  with persistent_compilation_cache(compilation_cache_dir(tmp_path_factory)):
    result = loop.train_and_evaluate(tiny_demo(data_dir), workdir)
  return workdir, result


def test_demo_recipe_trains_evaluates_and_draws_its_reconstructions(demo_run):
  workdir, result = demo_run
  losses = train_losses(workdir)
  assert [s for s, _ in losses] == [1, 2]
  assert all(np.isfinite(l) and l > 0 for _, l in losses)
  assert 0 < result.metrics["eval/loss"] < 10
  with Image.open(os.path.join(workdir, "reconstructions", "step_2.png")) as png:
    # 3 rows of 3 panels, 32 px digits enlarged x3 to 96 px, 4 px gaps.
    assert png.size == (3 * 96 + 2 * 4, 3 * 96 + 2 * 4)
    pixels = np.asarray(png.convert("RGB"))
  # Column 3 is the original digit, column 1 the same digit with grey patches.
  original = pixels[:96, 2 * 100:2 * 100 + 96]
  masked = pixels[:96, :96]
  grey = np.all(masked == round(0.5 * 255), axis=-1)
  assert 0.3 < grey.mean() < 0.9
  np.testing.assert_array_equal(masked[~grey], original[~grey])


def test_resumed_run_draws_the_same_masks_and_ends_bit_for_bit(demo_run, data_dir,
                                                               tmp_path_factory):
  workdir, result = demo_run
  resumed = str(tmp_path_factory.mktemp("simmim_resumed"))
  again = resume_from_checkpoint(workdir, 1, resumed, tiny_demo(data_dir),
                                 compilation_cache_dir(tmp_path_factory))
  assert dict(train_losses(resumed)) == {s: l for s, l in train_losses(workdir) if s > 1}
  assert_same_state(result.state, again.state)


def test_a_simmim_run_initialises_the_demo_classifier(demo_run, data_dir):
  workdir, _ = demo_run
  with open(os.path.join(workdir, "config.json")) as f:
    overrides = json.load(f)["model"]["overrides"]
  encoder = {k: overrides[k] for k in ("embed_dim", "depths", "num_heads", "patch_size")}
  # Window 8 where the SimMIM encoder has 4 (W6 -> W7 officially): stage 0's bias tables
  # are remapped (stage 1's 4 x 4 tokens clamp the window to 4 on both sides).
  model = swin_jax.create_model("swin_tiny_patch4_window7_224", img_size=32, num_classes=10,
                                window_size=8, **{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in encoder.items()})
  params, report = init_from.load_initial(workdir, model)
  sd = init_from.source_state_dict(workdir)
  np.testing.assert_array_equal(params["patch_embed"]["proj"]["bias"],
                                sd["encoder.patch_embed.proj.bias"])
  remapped = [key for key, how in report.adapted if "geometric" in how]
  assert remapped and all(key.startswith("layers.0.") for key in remapped), report.adapted
  assert all(name.startswith("head.") for name in report.left_at_init)
  assert "mask_token" not in params
