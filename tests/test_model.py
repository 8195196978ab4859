"""The SwinTransformer model and registry against the spec (sections 1 and 2).

Big models are only traced (``jax.eval_shape``); everything that runs uses tiny configs.
Expected values come from the spec tables or are re-derived here in numpy/torch.
"""

from __future__ import annotations

import itertools
import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swin_jax
from swin_jax.models import SwinTransformer
from swin_jax.models import layers


def key(seed):
  # rbg keys: the same initialisers, but CPU compiles an init about twice as fast as threefry.
  return jax.random.key(seed, impl="rbg")


KEY = key(0)

# A 2-stage model: stage 1 is 8x8 tokens (window 4, shift 2), stage 2 is 4x4 (= window,
# so no shift). Heads (2, 4): head_dim 8.
TINY = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
            num_classes=10)
TINY_WINDOW = (4, 4)
# (stage, block) -> shift, from the spec: odd blocks shift by window // 2 unless the stage
# resolution is no larger than the window.
TINY_SHIFTS = {(0, 0): (0, 0), (0, 1): (2, 2), (1, 0): (0, 0), (1, 1): (0, 0)}


def images(batch, height, width, channels=3, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).standard_normal((batch, height, width, channels)),
      jnp.float32)


def param_count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_variables(model, size):
  """Variables' shapes only (no compute), for a square ``size`` input."""
  return jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


@pytest.fixture(scope="module")
def tiny():
  model = SwinTransformer(**TINY)
  variables = jax.jit(model.init)(KEY, jnp.zeros((2, 32, 32, 3)))
  return model, variables


@pytest.fixture(scope="module")
def tiny_apply(tiny):
  model, _ = tiny
  return jax.jit(lambda v, x: model.apply(v, x))


@pytest.fixture(scope="module")
def swin_t():
  model = swin_jax.create_model("swin_tiny_patch4_window7_224")
  return model, abstract_variables(model, 224)


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------

OFFICIAL_NAMES = [
    "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
    "swin_base_patch4_window7_224",
    "swin_base_patch4_window12_384",
    "swin_large_patch4_window7_224",
    "swin_large_patch4_window12_384",
]
ALIASES = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
           "swin_b": "swin_base_patch4_window7_224", "swin_l": "swin_large_patch4_window7_224"}


def test_list_models_has_the_official_names_and_aliases():
  names = swin_jax.list_models()
  for name in OFFICIAL_NAMES + list(ALIASES):
    assert name in names


@pytest.mark.parametrize("alias,name", sorted(ALIASES.items()))
def test_alias_is_the_full_model(alias, name):
  assert swin_jax.models.model_config(alias) == swin_jax.models.model_config(name)


# Spec section 1 ("params (README / exact)"), 1000 classes.
@pytest.mark.parametrize("name,size,expected", [
    ("swin_tiny_patch4_window7_224", 224, 28_288_354),
    ("swin_small_patch4_window7_224", 224, 49_606_258),
    ("swin_base_patch4_window7_224", 224, 87_768_224),
    ("swin_base_patch4_window12_384", 384, 87_903_584),
    ("swin_large_patch4_window7_224", 224, 196_532_476),
    ("swin_large_patch4_window12_384", 384, 196_735_516),
])
def test_exact_parameter_count(name, size, expected):
  model = swin_jax.create_model(name)
  variables = abstract_variables(model, size)
  assert set(variables) == {"params"}  # index and mask are constants, not variables
  assert param_count(variables["params"]) == expected


# Spec section 1, "dpr (cfg)" of the ImageNet-1K configs (L: its 22K/22K->1K rate).
@pytest.mark.parametrize("name,rate", [
    ("swin_tiny_patch4_window7_224", 0.2),
    ("swin_small_patch4_window7_224", 0.3),
    ("swin_base_patch4_window7_224", 0.5),
    ("swin_base_patch4_window12_384", 0.5),
    ("swin_large_patch4_window7_224", 0.2),
])
def test_drop_path_rate_is_the_official_config(name, rate):
  assert swin_jax.create_model(name).drop_path_rate == pytest.approx(rate)


def test_unknown_model_name_raises_naming_it():
  with pytest.raises(ValueError, match="swin_huge_patch4"):
    swin_jax.create_model("swin_huge_patch4")


def test_unknown_override_raises_naming_it():
  with pytest.raises(ValueError, match="windowsize"):
    swin_jax.create_model("swin_t", windowsize=12)


def test_dtype_string_override():
  assert swin_jax.create_model("swin_t", dtype="bfloat16").dtype == jnp.bfloat16
  assert swin_jax.create_model("swin_t", dtype="float32").dtype == jnp.float32
  with pytest.raises(ValueError, match="int8"):
    swin_jax.create_model("swin_t", dtype="int8")


def test_overrides_replace_config_fields():
  model = swin_jax.create_model("swin_b", num_classes=21841, drop_path_rate=0.1)
  assert (model.num_classes, model.drop_path_rate, model.embed_dim) == (21841, 0.1, 128)


# ----------------------------------------------------------------------------------------
# Window clamp, shifts, drop-path schedule
# ----------------------------------------------------------------------------------------


def bias_table_shape(params, stage, block):
  return params[f"layers_{stage}"][f"blocks_{block}"]["attn"][
      "relative_position_bias_table"].shape


def test_swin_t_bias_tables_are_window7_in_every_stage(swin_t):
  _, variables = swin_t
  params = variables["params"]
  for stage, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
    for block in range(depth):
      assert bias_table_shape(params, stage, block) == (13 * 13, heads)


@pytest.mark.parametrize("img_size,last_stage_window", [
    (24, (3, 3)),  # last stage 3x3 tokens < window 4 -> window 3 -> table (2*3-1)^2
    (16, (2, 2)),  # last stage 2x2 -> window 2 -> table 3^2
    ((24, 40), (3, 4)),  # last stage 3x5: clamped per dimension (timm) -> table 5*7
])
def test_a_stage_smaller_than_the_window_gets_a_smaller_bias_table(img_size, last_stage_window):
  model = SwinTransformer(**{**TINY, "img_size": img_size})
  h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
  variables = jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
  wh, ww = last_stage_window
  for block in range(2):
    assert bias_table_shape(variables["params"], 0, block) == (7 * 7, 2)
    assert bias_table_shape(variables["params"], 1, block) == ((2 * wh - 1) * (2 * ww - 1), 4)


def blocks_of(model, variables):
  bound = model.bind(variables)
  return [[block for block in stage.blocks] for stage in bound.layers]


def test_swin_t_stage_resolutions(swin_t):
  model, _ = swin_t
  assert model.stage_resolutions() == [(56, 56), (28, 28), (14, 14), (7, 7)]


def test_swin_t_blocks_alternate_shift_except_the_7x7_stage(swin_t):
  model, variables = swin_t
  stages = blocks_of(model, variables)
  expected_shifts = [
      [(0, 0), (3, 3)],
      [(0, 0), (3, 3)],
      [(0, 0), (3, 3)] * 3,
      [(0, 0), (0, 0)],  # resolution 7 == window 7: one window, nothing to shift
  ]
  assert [[block.shift for block in stage] for stage in stages] == expected_shifts
  assert all(block.window == (7, 7) for stage in stages for block in stage)


def test_swin_b_384_window12_has_shift_6_and_an_unshifted_last_stage():
  model = swin_jax.create_model("swin_base_patch4_window12_384")
  stages = blocks_of(model, abstract_variables(model, 384))
  assert model.stage_resolutions() == [(96, 96), (48, 48), (24, 24), (12, 12)]
  assert [[block.shift for block in stage] for stage in stages] == [
      [(0, 0), (6, 6)], [(0, 0), (6, 6)], [(0, 0), (6, 6)] * 9, [(0, 0), (0, 0)]]
  assert all(block.window == (12, 12) for stage in stages for block in stage)


@pytest.fixture(scope="module")
def torch_module():
  return pytest.importorskip("torch")


def test_drop_path_rates_are_linspace_over_all_blocks_in_order(swin_t, torch_module):
  model, variables = swin_t
  rates = [block.drop_path.rate for stage in blocks_of(model, variables) for block in stage]
  expected = torch_module.linspace(0, 0.2, 12).tolist()  # official: torch.linspace(0, dpr, 12)
  np.testing.assert_allclose(rates, expected, rtol=0, atol=1e-7)



# ----------------------------------------------------------------------------------------
# Input validation and input sizes
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,message", [
    ((1, 250, 32, 3), "height 250 is not divisible by patch size 4"),
    ((1, 32, 30, 3), "width 30 is not divisible by patch size 4"),
    ((1, 2, 32, 3), "smaller than one patch"),
    ((1, 32, 32, 1), "expected 3 input channels"),
    ((1, 3, 32, 32), "NHWC"),  # an NCHW batch
    ((32, 32, 3), r"\(B, H, W, 3\)"),
])
def test_bad_input_shapes_raise_a_clear_value_error(tiny, shape, message):
  model, variables = tiny
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("height,width", [
    (36, 36),  # 9x9 tokens: not a window multiple, odd before the merge
    (44, 28),  # 11x7 tokens, non-square
    (20, 20),  # 5x5 tokens: padded to one 8x8 grid of windows
])
def test_any_multiple_of_the_patch_size_works(tiny, tiny_apply, height, width):
  _, variables = tiny
  logits = tiny_apply(variables, images(2, height, width))
  assert logits.shape == (2, 10)
  assert logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


# ----------------------------------------------------------------------------------------
# features()
# ----------------------------------------------------------------------------------------

# 4 stages at 64x64: 16x16, 8x8, 4x4, 2x2 tokens.
FOUR_STAGE = dict(img_size=64, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                  window_size=4, num_classes=0)


def numpy_layer_norm(x, eps=1e-5):
  x = np.asarray(x, np.float64)
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean)**2).mean(-1, keepdims=True) + eps)


@pytest.fixture(scope="module")
def four_stage():
  """feature_norm=True: (variables, features); feature_norm=False: (features, pooled output).

  Both models share the variables (initialised through both __call__ and features()).
  """
  model = SwinTransformer(**FOUR_STAGE, feature_norm=True)
  plain = model.clone(feature_norm=False)

  def run(rng, x):
    variables = model.init(rng, x, method=lambda m, x: (m(x), m.features(x)))
    return (variables, model.apply(variables, x, method=model.features),
            plain.apply(variables, x, method=plain.features), plain.apply(variables, x))

  return jax.jit(run)(KEY, images(2, 64, 64))


def test_features_are_four_maps_at_strides_4_to_32(four_stage):
  _, features, plain_features, _ = four_stage
  expected = [(2, 16, 16, 8), (2, 8, 8, 16), (2, 4, 4, 32), (2, 2, 2, 64)]
  assert [f.shape for f in features] == expected
  assert [f.shape for f in plain_features] == expected


def test_feature_norm_has_one_layer_norm_per_stage(four_stage):
  variables, features, plain_features, _ = four_stage
  for i in range(4):
    assert set(variables["params"][f"norm{i}"]) == {"scale", "bias"}
  # At init (scale 1, bias 0) every token is normalised over its channels: zero mean and
  # variance v / (v + eps), just under 1 (after a merge, token variances are ~1e-2).
  for feature, plain in zip(features, plain_features):
    feature = np.asarray(feature, np.float64)
    np.testing.assert_allclose(feature.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(feature.var(-1), 1.0, atol=1e-2)
    np.testing.assert_allclose(feature, numpy_layer_norm(plain), atol=1e-4)


def test_pooled_output_is_layer_norm_of_the_last_feature_map_averaged(four_stage):
  """Spec 2.10: head input = LN(8C) of the last stage, mean over tokens."""
  _, _, plain_features, pooled = four_stage
  assert pooled.shape == (2, 64)
  expected = numpy_layer_norm(plain_features[-1]).mean(axis=(1, 2))
  np.testing.assert_allclose(pooled, expected, atol=1e-4)


def test_default_init_creates_the_feature_norms():
  """model.init (the __call__ path) creates norm0..norm3 so features() can run on them."""
  model = SwinTransformer(**FOUR_STAGE, feature_norm=True)
  variables = abstract_variables(model, 64)
  assert {f"norm{i}" for i in range(4)} <= set(variables["params"])
  images = jnp.zeros((1, 64, 64, 3), jnp.float32)
  outputs = jax.eval_shape(lambda v: model.apply(v, images, method=model.features), variables)
  assert len(outputs) == 4


# ----------------------------------------------------------------------------------------
# Attention probabilities
# ----------------------------------------------------------------------------------------


def loop_windows(x, window):
  """(B, H, W, C) -> (B, nW, N, C): windows row-major over the grid, tokens row-major."""
  b, h, w, c = x.shape
  wh, ww = window
  gh, gw = h // wh, w // ww
  out = np.zeros((b, gh * gw, wh * ww, c), x.dtype)
  for gi, gj, i, j in itertools.product(range(gh), range(gw), range(wh), range(ww)):
    out[:, gi * gw + gj, i * ww + j] = x[:, gi * wh + i, gj * ww + j]
  return out


def reference_attention_probs(x, attn_params, heads, window, shift):
  """Spec 2.5-2.8 in float64 numpy for one block, from its LayerNorm-ed input ``x``.

  timm's order for a map that is not a window multiple: roll, zero-pad bottom/right, then
  the mask is built over the padded grid.
  """
  x = np.asarray(x, np.float64)
  b, h, w, c = x.shape
  wh, ww = window
  sh, sw = shift
  x = np.roll(x, (-sh, -sw), axis=(1, 2))
  hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
  x = np.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  windows = loop_windows(x, window)  # (B, nW, N, C)
  qkv = windows @ np.asarray(attn_params["qkv"]["kernel"], np.float64) + np.asarray(
      attn_params["qkv"]["bias"], np.float64)
  hd = c // heads
  q = qkv[..., :c].reshape(*qkv.shape[:3], heads, hd) * hd**-0.5
  k = qkv[..., c:2 * c].reshape(*qkv.shape[:3], heads, hd)
  logits = np.einsum("bwnhd,bwmhd->bwhnm", q, k)
  table = np.asarray(attn_params["relative_position_bias_table"], np.float64)
  tokens = [(r, s) for r in range(wh) for s in range(ww)]
  bias = np.zeros((heads, wh * ww, wh * ww))
  for (i, (hi, wi)), (j, (hj, wj)) in itertools.product(enumerate(tokens), repeat=2):
    bias[:, i, j] = table[(hi - hj + wh - 1) * (2 * ww - 1) + (wi - wj + ww - 1)]
  logits = logits + bias
  mask = None
  if sh or sw:
    labels = np.zeros((1, hp, wp, 1))
    regions = itertools.product((slice(0, -wh), slice(-wh, -sh), slice(-sh, None)),
                                (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)))
    for label, (rows, cols) in enumerate(regions):
      labels[:, rows, cols] = label
    labels = loop_windows(labels, window)[0, :, :, 0]  # (nW, N)
    mask = np.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
    logits = logits + mask[None, :, None]
  logits = logits - logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  return probs / probs.sum(-1, keepdims=True), mask


@pytest.fixture(scope="module", params=[32, 40], ids=["32px", "40px-padded"])
def sown(request, tiny):
  """(input size, variables, intermediates) of the tiny model, incl. norm1 outputs."""
  model, variables = tiny
  size = request.param
  _, state = jax.jit(lambda v, x: model.apply(
      v, x, mutable=["intermediates"], capture_intermediates=True))(variables,
                                                                    images(2, size, size))
  return size, variables, state["intermediates"]


@pytest.mark.parametrize("stage,block", sorted(TINY_SHIFTS))
def test_attention_probs_are_sown_per_block(sown, stage, block):
  size, _, intermediates = sown
  (probs,) = intermediates[f"layers_{stage}"][f"blocks_{block}"]["attn"]["attn_probs"]
  tokens = size // 4 // 2**stage
  grid = -(-tokens // 4)  # windows per side after padding to the window
  assert probs.shape == (2, grid * grid, TINY["num_heads"][stage], 16, 16)
  assert probs.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("stage,block", sorted(TINY_SHIFTS))
def test_attention_probs_equal_a_numpy_reference(sown, stage, block):
  _, variables, intermediates = sown
  name = f"blocks_{block}"
  (probs,) = intermediates[f"layers_{stage}"][name]["attn"]["attn_probs"]
  (x,) = intermediates[f"layers_{stage}"][name]["norm1"]["__call__"]
  attn_params = variables["params"][f"layers_{stage}"][name]["attn"]
  expected, _ = reference_attention_probs(x, attn_params, TINY["num_heads"][stage],
                                          TINY_WINDOW, TINY_SHIFTS[stage, block])
  np.testing.assert_allclose(probs, expected, rtol=0, atol=2e-6)


def test_shifted_block_puts_no_weight_across_regions(sown):
  _, variables, intermediates = sown
  (probs,) = intermediates["layers_0"]["blocks_1"]["attn"]["attn_probs"]
  (x,) = intermediates["layers_0"]["blocks_1"]["norm1"]["__call__"]
  _, mask = reference_attention_probs(x, variables["params"]["layers_0"]["blocks_1"]["attn"],
                                      2, TINY_WINDOW, (2, 2))
  masked = np.broadcast_to((mask == -100.0)[None, :, None], probs.shape)
  assert masked.any()
  assert np.asarray(probs)[masked].max() < 1e-20
  assert np.asarray(probs)[~masked].min() > 1e-6


# ----------------------------------------------------------------------------------------
# Stochastic depth / dropout
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drop_path_model(tiny):
  """The tiny model with drop_path_rate 0.5; ``run(v, x, rng) -> (train, eval) logits``."""
  model, variables = tiny
  model = model.clone(drop_path_rate=0.5)
  run = jax.jit(lambda v, x, rng: (model.apply(v, x, train=True, rngs={"dropout": rng}),
                                   model.apply(v, x, train=False)))
  return model, variables, run


def test_eval_is_deterministic_without_rngs(tiny, tiny_apply):
  model, variables = tiny
  assert model.drop_path_rate > 0
  x = images(2, 32, 32)
  np.testing.assert_array_equal(tiny_apply(variables, x), tiny_apply(variables, x))


def test_eval_ignores_the_drop_path_rate(tiny, tiny_apply, drop_path_model):
  _, variables = tiny
  _, _, run = drop_path_model
  x = images(2, 32, 32)
  _, eval_logits = run(variables, x, key(1))
  np.testing.assert_array_equal(eval_logits, tiny_apply(variables, x))  # rate 0.5 vs 0.1


def test_training_with_drop_path_requires_the_dropout_rng(drop_path_model):
  model, variables, _ = drop_path_model
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables,
                   jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))


def test_training_output_depends_on_the_dropout_rng_only(drop_path_model):
  _, variables, run = drop_path_model
  x = images(2, 32, 32)
  a, eval_logits = run(variables, x, key(1))
  b, _ = run(variables, x, key(2))
  np.testing.assert_array_equal(a, run(variables, x, key(1))[0])
  assert not np.allclose(a, b)
  assert not np.allclose(a, eval_logits)


def test_drop_path_drops_whole_samples_and_rescales_the_kept_ones():
  rate = 0.25
  x = jnp.ones((4000, 3, 2))
  out = np.asarray(layers.DropPath(rate).apply({}, x, train=True,
                                               rngs={"dropout": key(3)}))
  per_sample = out.reshape(4000, -1)
  kept = per_sample[:, 0] != 0
  np.testing.assert_allclose(per_sample[kept], 1 / (1 - rate), rtol=1e-6)
  np.testing.assert_array_equal(per_sample[~kept], 0.0)
  assert abs(kept.mean() - (1 - rate)) < 0.03  # 4.4 standard errors
  np.testing.assert_array_equal(layers.DropPath(rate).apply({}, x, train=False), x)


# ----------------------------------------------------------------------------------------
# bfloat16
# ----------------------------------------------------------------------------------------


def test_bfloat16_model_keeps_float32_params_and_is_close_to_float32(tiny, tiny_apply):
  model, variables = tiny
  bf16 = model.clone(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(bf16.init, KEY, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype("float32")}
  x = images(2, 32, 32)
  logits = jax.jit(bf16.apply)(variables, x)
  reference = tiny_apply(variables, x)
  assert logits.dtype == jnp.float32
  scale = np.abs(np.asarray(reference)).max()
  assert np.abs(np.asarray(logits) - np.asarray(reference)).max() < 5e-2 * scale
  # ... and the computation did run in bfloat16.
  features = jax.eval_shape(lambda v, x: bf16.apply(v, x, method=bf16.features), variables, x)
  assert all(f.dtype == jnp.bfloat16 for f in features)


# ----------------------------------------------------------------------------------------
# Initialisation (spec 2.12)
# ----------------------------------------------------------------------------------------


def flat_params(variables):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])}


def test_linear_kernels_are_normal_std_002_untruncated(tiny):
  params = flat_params(tiny[1])
  kernels = {k: v for k, v in params.items()
             if k.endswith("kernel") and not k.startswith("patch_embed")}
  assert len(kernels) == 2 * 4 * 2 + 1 + 1  # qkv/proj/fc1/fc2 per block, reduction, head
  values = np.concatenate([v.ravel() for v in kernels.values()])
  assert 0.019 < values.std() < 0.021
  assert abs(values.mean()) < 1e-3
  # timm's trunc_normal_ cuts at +-2 absolute (100 sigma), not at +-2 sigma.
  assert np.abs(values).max() > 2.5 * 0.02
  for name, kernel in kernels.items():
    if kernel.size >= 4096:
      assert 0.018 < kernel.std() < 0.022, name


def test_linear_biases_are_zero(tiny):
  params = flat_params(tiny[1])
  biases = {k: v for k, v in params.items() if k.endswith("bias") and
            any(f"{layer}/" in k for layer in ("qkv", "proj", "fc1", "fc2", "head"))
            and not k.startswith("patch_embed")}
  assert len(biases) == 2 * 4 * 2 + 1
  for name, bias in biases.items():
    np.testing.assert_array_equal(bias, 0.0, err_msg=name)


def test_layer_norms_start_at_one_and_zero(tiny):
  params = flat_params(tiny[1])
  norms = [k.rsplit("/", 1)[0] for k in params if k.endswith("scale")]
  assert len(norms) == 2 * 2 * 2 + 1 + 1 + 1  # norm1/norm2 per block, merge, final, embed
  for norm in norms:
    np.testing.assert_array_equal(params[f"{norm}/scale"], 1.0, err_msg=norm)
    np.testing.assert_array_equal(params[f"{norm}/bias"], 0.0, err_msg=norm)


def test_relative_position_bias_tables_are_normal_std_002(tiny):
  params = flat_params(tiny[1])
  tables = np.concatenate([v.ravel() for k, v in params.items()
                           if k.endswith("relative_position_bias_table")])
  assert tables.size == 2 * 49 * 2 + 2 * 49 * 4
  assert 0.017 < tables.std() < 0.023
  assert abs(tables.mean()) < 0.004


def test_patch_embed_conv_has_the_pytorch_default_init(tiny):
  params = tiny[1]["params"]["patch_embed"]["proj"]
  bound = 1 / math.sqrt(3 * 4 * 4)  # kaiming_uniform(a=sqrt(5)) == uniform(+-1/sqrt(fan_in))
  kernel, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
  assert kernel.shape == (4, 4, 3, 16)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  assert abs(kernel.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0


# ----------------------------------------------------------------------------------------
# Swin V2 (spec sections 1 and 3): the version=2 variant of the same model
# ----------------------------------------------------------------------------------------

# Exact counts of timm's SwinTransformerV2 for the same names (pretrained=False).
V2_PARAM_COUNTS = {
    "swinv2_tiny_window8_256": 28_347_154,
    "swinv2_tiny_window16_256": 28_347_154,
    "swinv2_small_window8_256": 49_728_418,
    "swinv2_small_window16_256": 49_728_418,
    "swinv2_base_window8_256": 87_918_816,
    "swinv2_base_window16_256": 87_918_816,
    "swinv2_base_window12_192": 109_280_841,  # 21,841 classes
    "swinv2_base_window12to16_192to256": 87_918_816,
    "swinv2_base_window12to24_192to384": 87_918_816,
    "swinv2_large_window12_192": 228_772_549,  # 21,841 classes
    "swinv2_large_window12to16_192to256": 196_739_932,
    "swinv2_large_window12to24_192to384": 196_739_932,
}
# name -> (img_size, window, drop path, classes, pretrained windows)
V2_CONFIGS = {
    "swinv2_tiny_window8_256": (256, 8, 0.2, 1000, (0, 0, 0, 0)),
    "swinv2_tiny_window16_256": (256, 16, 0.2, 1000, (0, 0, 0, 0)),
    "swinv2_small_window8_256": (256, 8, 0.3, 1000, (0, 0, 0, 0)),
    "swinv2_small_window16_256": (256, 16, 0.3, 1000, (0, 0, 0, 0)),
    "swinv2_base_window8_256": (256, 8, 0.5, 1000, (0, 0, 0, 0)),
    "swinv2_base_window16_256": (256, 16, 0.5, 1000, (0, 0, 0, 0)),
    "swinv2_base_window12_192": (192, 12, 0.2, 21841, (0, 0, 0, 0)),
    "swinv2_base_window12to16_192to256": (256, 16, 0.2, 1000, (12, 12, 12, 6)),
    "swinv2_base_window12to24_192to384": (384, 24, 0.2, 1000, (12, 12, 12, 6)),
    "swinv2_large_window12_192": (192, 12, 0.2, 21841, (0, 0, 0, 0)),
    "swinv2_large_window12to16_192to256": (256, 16, 0.2, 1000, (12, 12, 12, 6)),
    "swinv2_large_window12to24_192to384": (384, 24, 0.2, 1000, (12, 12, 12, 6)),
}


@pytest.mark.parametrize("name", sorted(V2_PARAM_COUNTS))
def test_v2_exact_parameter_count(name):
  model = swin_jax.create_model(name)
  variables = abstract_variables(model, model.img_size)
  assert set(variables) == {"params"}  # index, coords table and mask are constants
  assert param_count(variables["params"]) == V2_PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(V2_CONFIGS))
def test_v2_registry_config(name):
  model = swin_jax.create_model(name)
  img_size, window, rate, classes, pretrained = V2_CONFIGS[name]
  assert name in swin_jax.list_models()
  assert model.version == 2
  assert (model.img_size, model.window_size, model.num_classes) == (img_size, window, classes)
  assert model.drop_path_rate == pytest.approx(rate)
  assert tuple(model.pretrained_window_sizes) == pretrained
  assert [model.pretrained_window(i) for i in range(4)] == [(p, p) for p in pretrained]


def test_v1_models_are_version_1():
  for name in OFFICIAL_NAMES:
    assert swin_jax.create_model(name).version == 1


def test_v2_12to16_pretrained_windows_are_the_clamped_192_windows():
  """(12, 12, 12, 6) is the W12 model at 192 px: its stage-4 map (6) clamps the window."""
  pretraining = swin_jax.create_model("swinv2_base_window12_192")
  finetuned = swin_jax.create_model("swinv2_base_window12to16_192to256")
  assert [pretraining.block_geometry(i, 0)[0] for i in range(4)] == [
      finetuned.pretrained_window(i) for i in range(4)]
  assert [finetuned.block_geometry(i, 0)[0] for i in range(4)] == [(16, 16)] * 3 + [(8, 8)]


@pytest.mark.parametrize("kwargs,message", [
    (dict(version=3), "version must be 1"),
    (dict(pretrained_window_sizes=(4, 4)), "Swin V2 setting"),
    (dict(version=2, pretrained_window_sizes=(4, 4, 4)), "one entry per stage"),
])
def test_bad_version_settings_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    abstract_variables(SwinTransformer(**{**TINY, **kwargs}), 32)


def test_v2_relative_coords_table_matches_the_spec_example():
  """Spec section 3: 12to16 at 256 divides stage 1-3 offsets by 11, stage 4 (window 8) by 5."""
  from swin_jax.models import window as window_ops
  for window, pretrained, divisor in [((16, 16), (12, 12), 11), ((8, 8), (6, 6), 5),
                                      ((8, 8), (0, 0), 7), ((4, 2), (0, 0), (3, 1))]:
    table = window_ops.relative_coords_table(window, pretrained)
    assert table.shape == (2 * window[0] - 1, 2 * window[1] - 1, 2)
    assert table.dtype == np.float32
    div = np.broadcast_to(np.asarray(divisor, np.float64), (2,))
    dh = np.arange(-(window[0] - 1), window[0]) / div[0] * 8
    dw = np.arange(-(window[1] - 1), window[1]) / div[1] * 8
    expected_h = np.sign(dh) * np.log2(np.abs(dh) + 1) / 3
    expected_w = np.sign(dw) * np.log2(np.abs(dw) + 1) / 3
    np.testing.assert_allclose(table[:, :, 0], np.broadcast_to(expected_h[:, None],
                                                               table.shape[:2]), rtol=1e-6)
    np.testing.assert_allclose(table[:, :, 1], np.broadcast_to(expected_w[None, :],
                                                               table.shape[:2]), rtol=1e-6)
  # Offsets are scaled to [-8, 8], so the log map's extremes are +-log2(9) / log2(8).
  table = window_ops.relative_coords_table((8, 8))
  assert table[-1, -1, 0] == pytest.approx(math.log2(9) / 3)
  assert table[0, 0, 1] == pytest.approx(-math.log2(9) / 3)
  assert np.all(table[7, 7] == 0)


TINY_V2 = dict(TINY, version=2)


@pytest.fixture(scope="module")
def tiny_v2():
  model = SwinTransformer(**TINY_V2)
  variables = jax.jit(model.init)(KEY, jnp.zeros((2, 32, 32, 3)))
  return model, variables


def test_v2_param_names_mirror_the_official_keys(tiny_v2):
  params = flat_params(tiny_v2[1])
  attn = sorted(k.split("/", 3)[3] for k in params if k.startswith("layers_0/blocks_1/attn/"))
  assert attn == ["cpb_mlp_0/bias", "cpb_mlp_0/kernel", "cpb_mlp_2/kernel", "logit_scale",
                  "proj/bias", "proj/kernel", "q_bias", "qkv/kernel", "v_bias"]
  assert params["layers_0/blocks_1/attn/logit_scale"].shape == (2, 1, 1)
  assert params["layers_0/blocks_1/attn/cpb_mlp_0/kernel"].shape == (2, 512)
  assert params["layers_0/blocks_1/attn/cpb_mlp_2/kernel"].shape == (512, 2)
  assert params["layers_0/blocks_1/attn/q_bias"].shape == (16,)
  # PatchMergingV2: reduction 4C -> 2C, then LayerNorm(2C).
  assert params["layers_0/downsample/reduction/kernel"].shape == (64, 32)
  assert params["layers_0/downsample/norm/scale"].shape == (32,)
  assert not any("relative_position_bias_table" in k for k in params)
  # Without qkv_bias there is no q_bias / v_bias (and qkv never has a bias in V2).
  no_bias = flat_params(abstract_variables(SwinTransformer(**TINY_V2, qkv_bias=False), 32))
  assert not any(k.endswith(("q_bias", "v_bias", "qkv/bias")) for k in no_bias)


def test_v2_init(tiny_v2):
  """timm/official V2 init: post-norms (0, 0); logit_scale log(10); q/v bias 0; the CPB MLP
  like every Linear (normal .02, zero bias); other norms (1, 0)."""
  params = flat_params(tiny_v2[1])
  block_norms = [k for k in params if re.search(r"blocks_\d+/norm[12]/", k)]
  assert len(block_norms) == 4 * 2 * 2
  for name in block_norms:
    np.testing.assert_array_equal(params[name], 0.0, err_msg=name)
  for norm in ("layers_0/downsample/norm", "norm", "patch_embed/norm"):
    np.testing.assert_array_equal(params[f"{norm}/scale"], 1.0, err_msg=norm)
    np.testing.assert_array_equal(params[f"{norm}/bias"], 0.0, err_msg=norm)
  scales = [v for k, v in params.items() if k.endswith("logit_scale")]
  assert len(scales) == 4
  for value in scales:
    np.testing.assert_allclose(value, math.log(10.0), rtol=1e-7)
  for name, value in params.items():
    if name.endswith(("q_bias", "v_bias", "cpb_mlp_0/bias")):
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
  cpb = np.concatenate([v.ravel() for k, v in params.items()
                        if re.search(r"cpb_mlp_\d/kernel", k)])
  assert cpb.size == 2 * (2 * 512 + 512 * 2) + 2 * (2 * 512 + 512 * 4)
  assert 0.018 < cpb.std() < 0.022 and abs(cpb.mean()) < 2e-3


def test_v2_blocks_start_as_the_identity(tiny_v2):
  """Zero post-norms: at init every block returns its input, so stage 1's output is the
  patch embedding."""
  model, variables = tiny_v2
  features, embedded = jax.jit(lambda v, x: (
      model.apply(v, x, method=model.features)[0],
      model.apply(v, x, False, method=model.embed)))(variables, images(2, 32, 32))
  np.testing.assert_array_equal(features, embedded)


def test_v2_weight_decay_keywords_are_in_the_param_names(tiny_v2):
  from swin_jax.train import optimizer
  params = tiny_v2[1]["params"]
  names = set(flat_params(tiny_v2[1]))
  for keyword in ("cpb_mlp", "logit_scale"):
    assert keyword in optimizer.NO_DECAY_KEYWORDS
    assert any(keyword in name for name in names), keyword
  mask = {"/".join(str(k.key) for k in path): bool(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(optimizer.weight_decay_mask(params))}
  for name, decays in mask.items():
    no_decay = any(k in name for k in ("cpb_mlp", "logit_scale", "bias", "norm"))
    assert decays == (not no_decay), name


def test_v2_logit_scale_clamp_gradient_is_torch_clamp():
  """exp(clamp(logit_scale, max=log 100)): above the clamp no gradient; at it (a tie) and
  below, the gradient passes, as torch.clamp's."""
  from swin_jax.models import attention
  module = attention.WindowAttention(18, 3, (4, 4), version=2)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, 16, 18)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((1, 16, 18)), jnp.float32)
  variables = module.init(KEY, x, None, 1, False)
  scale = np.array([math.log(200.0), math.log(100.0), math.log(5.0)], np.float32)
  params = dict(variables["params"], logit_scale=jnp.asarray(scale.reshape(3, 1, 1)))
  grad = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, x, None, 1, False) * weights))(
      params)["logit_scale"].ravel()
  assert grad[0] == 0.0
  assert grad[1] != 0.0 and grad[2] != 0.0


@pytest.mark.parametrize("version", [1, 2])
def test_padded_input_gradients_are_finite_at_init(version):
  """40 px: the 10x10 stage-1 map is zero-padded to 12x12. In V2 the padded tokens' keys
  (and, with the zero-initialised q_bias, queries) are exactly zero; their normalisation
  must give torch's finite gradient, not NaN."""
  model = SwinTransformer(**{**TINY, "version": version})
  x = images(2, 40, 40)
  variables = jax.jit(model.init)(KEY, x)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(
      variables["params"])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)


def test_v2_attention_probs_are_sown(tiny_v2):
  model, variables = tiny_v2
  _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(
      variables, images(2, 32, 32))
  (probs,) = state["intermediates"]["layers_0"]["blocks_1"]["attn"]["attn_probs"]
  assert probs.shape == (2, 4, 2, 16, 16)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)


def test_v2_bfloat16_keeps_float32_params_and_is_close_to_float32(tiny_v2):
  model, variables = tiny_v2
  # Unit post-norms, so that the blocks are not the identity.
  flat = flax.traverse_util.flatten_dict(variables["params"])
  params = flax.traverse_util.unflatten_dict({
      path: jnp.ones_like(v) if path[-2] in ("norm1", "norm2") and path[-1] == "scale" else v
      for path, v in flat.items()})
  assert np.array_equal(params["layers_1"]["blocks_1"]["norm2"]["scale"], np.ones(32))
  bf16 = model.clone(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(bf16.init, KEY, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype("float32")}
  x = images(2, 32, 32)
  logits = jax.jit(bf16.apply)({"params": params}, x)
  reference = jax.jit(model.apply)({"params": params}, x)
  assert logits.dtype == jnp.float32
  scale = np.abs(np.asarray(reference)).max()
  assert np.abs(np.asarray(logits) - np.asarray(reference)).max() < 5e-2 * scale
