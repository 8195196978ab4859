"""SimMIM: the model's definition, its mask generator, and its checkpoint conversion
(both ways, and the official fine-tune path with the geometric bias-table remap).

Parity with a PyTorch reference is in test_parity_simmim.py; these tests need no torch.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import interpolate

import swin_jax
from swin_jax import convert
from swin_jax.convert import simmim as simmim_convert
from swin_jax.convert import torch_checkpoint
from swin_jax.data.simmim_mask import MaskGenerator
from swin_jax.models.simmim import norm_targets, pixel_shuffle

from random_variables import random_variables

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4,
            img_size=64, drop_path_rate=0.0)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------
# The model.


def test_parameter_count_of_the_official_swin_b_pretraining_model():
  model = swin_jax.create_model("simmim_swin_base_window6_192")
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32))["params"]
  assert count(shapes) == 89_874_104
  assert count(shapes["encoder"]) == 86_725_304
  assert count(shapes["decoder_0"]) == 3_148_800
  assert shapes["encoder"]["mask_token"].shape == (1, 1, 128)
  assert "head" not in shapes["encoder"]


@pytest.mark.parametrize("name", ["simmim_swin_tiny_window6_192",
                                  "simmim_swin_base_window6_192",
                                  "simmim_swin_large_window12_192",
                                  "simmim_swinv2_base_window12_192"])
def test_registered_models_hold_a_masked_encoder_without_head(name):
  model = swin_jax.create_model(name)
  assert name in swin_jax.list_models()
  assert model.encoder.use_mask_token and model.encoder.num_classes == 0
  assert model.encoder.img_size == 192 and model.encoder_stride == 32
  # Only the V2 recipe (Swin-Transformer configs/simmim) normalises its target.
  assert model.norm_target_patch_size == (47 if model.encoder.version == 2 else 0)
  assert model.encoder.drop_path_rate == (0.1 if model.encoder.version == 2 else 0.0)


def test_pixel_shuffle_uses_pytorch_channel_order():
  # Channel c*r*r + i*r + j of token (y, x) goes to pixel (y*r + i, x*r + j), channel c.
  r, c = 4, 3
  x = np.arange(2 * 2 * 3 * c * r * r, dtype=np.float32).reshape(2, 2, 3, c * r * r)
  out = np.asarray(pixel_shuffle(jnp.asarray(x), r))
  assert out.shape == (2, 2 * r, 3 * r, c)
  for (b, y, xx, ch, i, j) in [(0, 0, 0, 0, 0, 1), (1, 1, 2, 2, 3, 0), (0, 1, 0, 1, 2, 3)]:
    assert out[b, y * r + i, xx * r + j, ch] == x[b, y, xx, ch * r * r + i * r + j]


def test_norm_targets_use_the_real_pixels_of_each_neighbourhood():
  # The V2 recipe's 47 x 47 windows on a 60 px image: most windows are cut by the border.
  x = np.random.default_rng(0).standard_normal((1, 60, 60, 2)).astype(np.float32)
  out = np.asarray(norm_targets(jnp.asarray(x), 47))
  for y, xx in [(0, 0), (30, 5), (59, 40)]:
    patch = x[0, max(y - 23, 0):y + 24, max(xx - 23, 0):xx + 24].reshape(-1, 2)
    expected = (x[0, y, xx] - patch.mean(0)) / np.sqrt(patch.var(0, ddof=1) + 1e-6)
    np.testing.assert_allclose(out[0, y, xx], expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="odd"):
    norm_targets(jnp.asarray(x), 4)


@pytest.fixture(scope="module")
def tiny_model_and_variables():
  model = swin_jax.create_model("simmim_swin_tiny_window6_192", **TINY)
  variables = random_variables(model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), 0)
  return model, variables


def test_loss_is_the_masked_l1_per_pixel_and_channel(tiny_model_and_variables):
  model, variables = tiny_model_and_variables
  images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  masks = MaskGenerator(64, 16, 4, 0.6).batch(np.random.default_rng(0), 2)
  apply = jax.jit(lambda v, x, m: model.apply(v, x, m, train=False))
  out = apply(variables, jnp.asarray(images), jnp.asarray(masks))
  rec = np.asarray(out["reconstruction"], np.float64)
  assert rec.shape == images.shape and out["loss"].shape == ()
  pixels = masks.repeat(4, axis=1).repeat(4, axis=2)[..., None]
  expected = (np.abs(images - rec) * pixels).sum() / (pixels.sum() + 1e-5) / 3
  np.testing.assert_allclose(float(out["loss"]), expected, rtol=1e-5)
  # Nothing masked: no loss.
  unmasked = apply(variables, jnp.asarray(images), jnp.asarray(np.zeros_like(masks)))
  assert float(unmasked["loss"]) == 0.0


def test_only_masked_tokens_see_the_mask_token(tiny_model_and_variables):
  model, variables = tiny_model_and_variables
  images = jnp.asarray(np.random.default_rng(1).standard_normal((1, 64, 64, 3)), jnp.float32)
  shifted = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 1.0 if "mask_token" in jax.tree_util.keystr(p) else x, variables)
  embed = lambda v, m: model.apply(v, images, False, m, method=lambda mdl, *a: mdl.encoder
                                   .embed(*a))
  mask = MaskGenerator(64, 16, 4, 0.5).batch(np.random.default_rng(1), 1)
  a, b = np.asarray(embed(variables, jnp.asarray(mask))), np.asarray(embed(shifted,
                                                                           jnp.asarray(mask)))
  np.testing.assert_array_equal(a[mask == 0], b[mask == 0])
  np.testing.assert_allclose(b[mask == 1] - a[mask == 1], 1.0, atol=1e-5)
  # The masked tokens are exactly the token (no position embedding in Swin-T).
  token = np.asarray(variables["params"]["encoder"]["mask_token"]).reshape(-1)
  np.testing.assert_allclose(a[mask == 1], np.broadcast_to(token, a[mask == 1].shape),
                             atol=1e-6)


def test_a_mask_needs_the_mask_token_and_the_patch_grid():
  classifier = swin_jax.create_model("swin_tiny_patch4_window7_224", **TINY, num_classes=0)
  images = jnp.zeros((1, 64, 64, 3))
  with pytest.raises(ValueError, match="use_mask_token"):
    jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0), images, False,
                                           jnp.zeros((1, 16, 16)), method="encode"))
  model = swin_jax.create_model("simmim_swin_tiny_window6_192", **TINY)
  with pytest.raises(ValueError, match="patch grid"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, jnp.zeros((1, 8, 8))))


# ---------------------------------------------------------------------------------------
# The mask generator.


def test_mask_generator_official_defaults():
  gen = MaskGenerator()
  assert (gen.grid_size, gen.scale, gen.token_count, gen.mask_count) == (6, 8, 36, 22)
  masks = gen.batch(np.random.default_rng(0), 16)
  assert masks.shape == (16, 48, 48) and masks.dtype == np.int32
  assert set(np.unique(masks)) == {0, 1}
  cells = masks[:, ::8, ::8]
  # Blocks: every 8x8 model-patch block is one mask patch, repeated.
  np.testing.assert_array_equal(masks, cells.repeat(8, axis=1).repeat(8, axis=2))
  assert np.all(cells.reshape(16, -1).sum(axis=1) == 22)
  assert np.all(masks.reshape(16, -1).sum(axis=1) == 22 * 64)  # 1,408 tokens
  # One permutation per image: images differ.
  assert len({c.tobytes() for c in cells}) == 16


def test_mask_generator_is_deterministic_under_a_seed_and_resumable():
  gen = MaskGenerator()
  np.testing.assert_array_equal(gen.batch(np.random.default_rng(7), 4),
                                gen.batch(np.random.default_rng(7), 4))
  rng = np.random.default_rng(7)
  first = gen.batch(rng, 2)
  state = rng.bit_generator.state
  second = gen.batch(rng, 2)
  resumed = np.random.default_rng(0)
  resumed.bit_generator.state = state
  np.testing.assert_array_equal(gen.batch(resumed, 2), second)
  np.testing.assert_array_equal(np.concatenate([first, second]),
                                gen.batch(np.random.default_rng(7), 4))


def test_mask_generator_rounds_the_count_up_and_checks_sizes():
  assert MaskGenerator(64, 16, 4, 0.6).mask_count == 10  # ceil(16 * 0.6) = ceil(9.6)
  with pytest.raises(ValueError, match="divisible"):
    MaskGenerator(200, 32, 4)
  with pytest.raises(ValueError, match="divisible"):
    MaskGenerator(192, 30, 4)


# ---------------------------------------------------------------------------------------
# The geometric bias-table remap (official remap_pretrained_keys_swin).


def test_geometric_grid_of_the_w6_to_w7_transfer():
  source, target = simmim_convert.geometric_grid(11, 13)
  q = simmim_convert.geometric_ratio(11, 13)
  assert 1.01 < q < 1.5
  assert source.shape == (11,) and source[5] == 0.0
  np.testing.assert_allclose(source[6:], np.cumsum([1, q, q**2, q**3, q**4]))
  np.testing.assert_allclose(source, -source[::-1])
  assert abs(source[-1] - 6.0) < 1e-5  # the outermost offset lands on the target's edge
  np.testing.assert_array_equal(target, np.arange(-6, 7))


def test_remap_keeps_a_table_of_the_same_window():
  table = np.random.default_rng(0).standard_normal((121, 4)).astype(np.float32)
  np.testing.assert_array_equal(simmim_convert.geometric_remap_table(table, 11), table)


def _separable_not_a_knot(z: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """An independent bicubic: 1-D not-a-knot cubic splines along columns, then rows."""
  along_rows = interpolate.CubicSpline(source, z, axis=0, bc_type="not-a-knot")(target)
  return interpolate.CubicSpline(source, along_rows, axis=1, bc_type="not-a-knot")(target)


def test_remap_matches_an_independent_bicubic_spline():
  rng = np.random.default_rng(0)
  table = rng.standard_normal((121, 3)).astype(np.float32)
  out = simmim_convert.geometric_remap_table(table, 13)
  assert out.shape == (169, 3) and out.dtype == np.float32
  source, target = simmim_convert.geometric_grid(11, 13)
  # FITPACK evaluates at the nearest edge outside the source range (|6| vs 5.99999...).
  clipped = np.clip(target, source[0], source[-1])
  for h in range(3):
    expected = _separable_not_a_knot(table[:, h].reshape(11, 11).astype(np.float64), source,
                                     clipped)
    np.testing.assert_allclose(out[:, h].reshape(13, 13), expected, atol=1e-5)
  # The centre (offset 0) is a data point of the interpolating spline: kept exactly.
  np.testing.assert_allclose(out.reshape(13, 13, 3)[6, 6], table.reshape(11, 11, 3)[5, 5],
                             atol=1e-6)


def test_remap_of_a_smooth_table_samples_the_function_at_the_new_offsets():
  # A table that is a smooth function of the (geometric) offsets it sits at; the remap
  # must give that function at the target's integer offsets.
  source, target = simmim_convert.geometric_grid(11, 13)

  def f(dy, dx):
    return np.sin(0.3 * dy) + 0.05 * dx * dy + np.cos(0.2 * dx)

  sy, sx = np.meshgrid(source, source, indexing="ij")
  ty, tx = np.meshgrid(target, target, indexing="ij")
  table = f(sy, sx).reshape(-1, 1).astype(np.float32)
  out = simmim_convert.geometric_remap_table(table, 13).reshape(13, 13)
  np.testing.assert_allclose(out, f(ty, tx), atol=2e-3)
  # Rows are the vertical offset: a function of dy alone stays one.
  rows_only = np.sin(0.3 * sy).reshape(-1, 1)
  out = simmim_convert.geometric_remap_table(rows_only, 13).reshape(13, 13)
  np.testing.assert_allclose(out, np.sin(0.3 * ty), atol=2e-3)


# ---------------------------------------------------------------------------------------
# Conversion: SimMIM both ways, and the fine-tune path to a classifier.

SMALL_192 = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                 drop_path_rate=0.0)


@pytest.fixture(scope="module")
def small_simmim_checkpoint():
  """A SimMIM Swin at 192/W6 with random params, and its official state dict."""
  model = swin_jax.create_model("simmim_swin_tiny_window6_192", **SMALL_192)
  variables = random_variables(model, jax.ShapeDtypeStruct((1, 192, 192, 3), jnp.float32), 1)
  return model, variables, convert.export_torch_state_dict(variables, model)


def test_official_keys_both_ways(small_simmim_checkpoint):
  model, variables, sd = small_simmim_checkpoint
  assert "encoder.mask_token" in sd and sd["encoder.mask_token"].shape == (1, 1, 8)
  assert sd["decoder.0.weight"].shape == (3072, 64, 1, 1)  # Conv2d OIHW
  assert sd["decoder.0.bias"].shape == (3072,)
  assert "encoder.layers.0.downsample.reduction.weight" in sd  # official layout
  assert all(k.startswith(("encoder.", "decoder.0.")) for k in sd)
  loaded = convert.load_torch_variables(sd, model)
  flax_equal = jax.tree.map(np.array_equal, loaded["params"], variables["params"])
  assert all(jax.tree.leaves(flax_equal))
  with_buffers = convert.export_torch_state_dict(variables, model, include_buffers=True)
  assert with_buffers["encoder.layers.0.blocks.0.attn.relative_position_index"].shape == (36,
                                                                                           36)
  assert "encoder.layers.0.blocks.1.attn_mask" in with_buffers
  # An official checkpoint with its buffers loads (they are recomputed, not params).
  convert.load_torch_variables({"model": with_buffers}, model)


def test_scanned_simmim_exports_the_same_keys(small_simmim_checkpoint):
  model, variables, sd = small_simmim_checkpoint
  scanned = swin_jax.create_model("simmim_swin_tiny_window6_192", **SMALL_192,
                                  scan_blocks=True)
  params = convert.load_torch_variables(sd, scanned)["params"]
  assert "block_pairs" in params["encoder"]["layers_0"]
  again = convert.export_torch_state_dict(params, scanned)
  assert set(again) == set(sd)
  for key in sd:
    np.testing.assert_array_equal(again[key], sd[key], err_msg=key)


def test_fine_tune_path_to_a_w7_classifier(small_simmim_checkpoint):
  _, _, sd = small_simmim_checkpoint
  classifier = swin_jax.create_model("swin_tiny_patch4_window7_224", **SMALL_192,
                                     num_classes=10)
  example = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  # Random fallback params (shapes only): no jitted init of the classifier to wait for.
  fallback = random_variables(classifier, example, 2)["params"]
  params, report = simmim_convert.simmim_to_classifier({"model": sd}, classifier,
                                                       fallback_params=fallback)
  flat = {"/".join(p): v for p, v in flax.traverse_util.flatten_dict(params).items()}
  # Head at init; mask token and decoder dropped before the load; every table remapped.
  assert set(report.left_at_init) == {"head.weight", "head.bias"}
  assert report.dropped == ()
  assert "mask_token" not in flat and not any(k.startswith("decoder") for k in flat)
  assert len(report.adapted) == sum(SMALL_192["depths"])
  for stage, depth in enumerate(SMALL_192["depths"]):
    for block in range(depth):
      key = f"layers.{stage}.blocks.{block}.attn.relative_position_bias_table"
      table = flat[f"layers_{stage}/blocks_{block}/attn/relative_position_bias_table"]
      assert table.shape == (169, SMALL_192["num_heads"][stage])
      np.testing.assert_array_equal(
          table, simmim_convert.geometric_remap_table(sd["encoder." + key], 13))
  np.testing.assert_array_equal(flat["patch_embed/proj/kernel"],
                                sd["encoder.patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat["norm/scale"], sd["encoder.norm.weight"])
  np.testing.assert_array_equal(flat["head/kernel"], fallback["head"]["kernel"])
  # A classifier the encoder does not fit is refused.
  wrong = swin_jax.create_model("swin_tiny_patch4_window7_224", **{**SMALL_192,
                                                                 "depths": (2, 2, 4, 2)})
  with pytest.raises(torch_checkpoint.CheckpointMismatchError, match="lacks 26 encoder"):
    simmim_convert.simmim_to_classifier(sd, wrong, fallback_params=random_variables(
        wrong, example, 2)["params"])
