"""Swin-Unet: numerical parity with a PyTorch reference, param counts, conversion, load_from.

The reference (``swin_jax.oracles.torch_swin_unet``, also what the bench measures) mirrors
the official ``SwinTransformerSys`` (HuCaoFighting/Swin-Unet) module by module so that its
state dict has the official keys: timm's ``SwinTransformerBlock`` and ``PatchMerging`` (same
math and parameter names as the official ones) for the Swin parts, plain torch for
PatchExpand, FinalPatchExpand_X4 (checked here against ``einops.rearrange``, the official
op), the skip concatenation, the norms and the 1x1 conv.
Every tensor holds seeded random values (``torch_oracle.randomize_``). float32 on CPU;
logits within 1e-4, gradients within ``1e-4 * max(1, max |reference|)`` per tensor.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import swin_jax  # noqa: E402
from swin_jax import convert  # noqa: E402
from swin_jax.convert import swin_unet as swin_unet_convert  # noqa: E402
from swin_jax.oracles import torch_swin_unet  # noqa: E402

import torch_oracle as oracle  # noqa: E402

ATOL = 1e-4
NAME = "swin_unet_tiny_patch4_window7_224"
# Every code path of the full model at a fraction of the cost: maps 16, 8, 4, 2 under a
# window of 4, so stage 2 runs one unshifted window and stage 3 a clamped 2x2 window.
TINY = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2),
            num_heads=(1, 2, 2, 4), window_size=4, num_classes=5, drop_path_rate=0.0)


def reference(cfg: dict, seed: int, **kw) -> torch.nn.Module:
  """The reference for ``cfg`` (SwinUnet fields), every tensor seeded random, eval mode."""
  return oracle.randomize_(torch_swin_unet.build(cfg, **kw).eval(), seed)


official_config = torch_swin_unet.official_config


def max_abs_diff(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


_FORWARDS: dict = {}


def jax_logits(model, params, images) -> np.ndarray:
  """Eval-mode logits; one jitted function per model, so tests share its compilation."""
  if model not in _FORWARDS:
    _FORWARDS[model] = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  return np.asarray(_FORWARDS[model](params, jnp.asarray(images)))


def zeros_like_params(model) -> dict:
  """A cheap ``fallback_params`` (no init to compile): zeros of every param's shape."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, model.img_size, model.img_size, 3)))["params"]
  return jax.tree.map(lambda x: np.zeros(x.shape, np.float32), shapes)


def torch_logits(ref, images) -> np.ndarray:
  """NHWC numpy images (1 or 3 channels) -> NHWC numpy logits."""
  with torch.no_grad():
    return oracle.nchw_to_nhwc(ref(oracle.nhwc_to_nchw(images)))


def param_count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------
# Model and param counts.


def test_registry_and_shapes():
  model = swin_jax.create_model(NAME, num_classes=9)
  assert isinstance(model, swin_jax.models.SwinUnet)
  assert NAME in swin_jax.list_models()
  assert swin_jax.models.registry.model_class(NAME) is swin_jax.models.SwinUnet
  assert swin_jax.models.SwinUnet in swin_jax.models.registry.model_classes()
  assert (model.depths, model.num_heads, model.window_size) == ((2, 2, 2, 2), (3, 6, 12, 24), 7)
  assert model.drop_path_rate == pytest.approx(0.2)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  for channels in (3, 1):  # grayscale is repeated to 3 channels
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((2, 224, 224, channels), jnp.float32))
    assert out.shape == (2, 224, 224, 9) and out.dtype == jnp.float32
  with pytest.raises(ValueError, match="multiple of 32"):
    jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                   jax.ShapeDtypeStruct((1, 208, 208, 3), jnp.float32))


def test_param_count_swin_unet_tiny():
  """Spec section 8: 27,168,900 params with 9 classes, and its parts."""
  model = swin_jax.create_model(NAME, num_classes=9)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  params = params["params"]
  assert param_count(params) == 27_168_900
  parts = {}
  for name, subtree in params.items():
    group = name.rstrip("0123456789").rstrip("_") if name[-1].isdigit() else name
    parts[group] = parts.get(group, 0) + param_count(subtree)
  assert parts == {"patch_embed": 4_896, "layers": 20_406_954, "layers_up": 6_219_066,
                   "concat_back_dim": 387_744, "norm": 1_536, "norm_up": 192,
                   "up": 147_648, "output": 864}
  assert sorted(k for k in params if k.startswith("concat_back_dim")) == [
      "concat_back_dim_1", "concat_back_dim_2", "concat_back_dim_3"]
  assert set(params["layers_up_0"]) == {"expand", "norm"}
  assert "upsample" not in params["layers_up_3"]


def test_reference_has_the_official_keys_and_count():
  ref = torch_swin_unet.build(official_config(swin_jax.create_model(NAME)))
  sd = oracle.state_dict_numpy(ref)
  assert sum(v.size for v in sd.values()) == 27_168_900
  for key in ("layers_up.0.expand.weight", "layers_up.1.upsample.norm.bias",
              "layers_up.3.blocks.1.attn.relative_position_bias_table",
              "layers.0.downsample.reduction.weight", "concat_back_dim.3.bias",
              "up.expand.weight", "output.weight", "norm_up.weight"):
    assert key in sd, key


# ----------------------------------------------------------------------------------------
# Parity.


@pytest.mark.slow
def test_swin_unet_tiny_224_logits():
  model = swin_jax.create_model(NAME, num_classes=9)
  ref = reference(official_config(model), seed=0)
  variables = convert.load_torch_variables(oracle.state_dict_numpy(ref), model)
  images = oracle.random_images(1, 224, 224, seed=1)
  expected = torch_logits(ref, images)
  assert 0.1 < float(np.std(expected)) < 100.0
  diff = max_abs_diff(jax_logits(model, variables["params"], images), expected)
  print(f"Swin-Unet-T 224 logits: max |diff| = {diff:.3g} (std {np.std(expected):.3g})")
  assert diff <= ATOL


def test_tiny_logits_grayscale_and_bfloat16():
  model = swin_jax.models.SwinUnet(**TINY)
  ref = reference(TINY, seed=2)
  params = convert.load_torch_variables(oracle.state_dict_numpy(ref), model)["params"]
  gray = oracle.random_images(2, 64, 64, seed=3)[..., :1]
  expected = torch_logits(ref, gray)
  assert 0.1 < float(np.std(expected)) < 100.0
  diff = max_abs_diff(jax_logits(model, params, gray), expected)
  print(f"tiny grayscale logits: max |diff| = {diff:.3g}")
  assert diff <= ATOL
  # bf16 compute (float32 params) runs and stays close to the float32 logits.
  bf16 = jax_logits(model.clone(dtype=jnp.bfloat16), params, gray)
  assert bf16.dtype == np.float32
  assert max_abs_diff(bf16, expected) < 0.1 * max(1.0, float(np.abs(expected).max()))


def test_reference_expand_is_the_official_einops_rearrange():
  """The reference writes the official ``rearrange`` as reshape + permute: the same map, and
  its ``pixel_shuffle_order`` is the ``(c p1 p2)`` split."""
  einops = pytest.importorskip("einops")
  x = torch.randn(2, 3, 5, 4 * 4 * 6, generator=torch.Generator().manual_seed(0))
  for pattern, wrong in (("(p1 p2 c)", False), ("(c p1 p2)", True)):
    expected = einops.rearrange(x, f"b h w {pattern} -> b (h p1) (w p2) c", p1=4, p2=4, c=6)
    assert torch.equal(torch_swin_unet.expand_rearrange(x, 4, 6, wrong), expected), pattern


def test_reference_loss_is_the_segmentation_task_loss():
  """The loss the bench trains the reference with (official trainer.py) is swin_jax's."""
  from swin_jax.tasks import segmentation  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 8, 8, 5)).astype(np.float32)
  labels = rng.integers(0, 5, (2, 8, 8)).astype(np.int32)
  expected = 0.4 * float(jnp.mean(segmentation.pixel_cross_entropy(logits, labels))) + (
      0.6 * float(segmentation.dice_loss(logits, labels)))
  got = float(torch_swin_unet.official_loss(oracle.nhwc_to_nchw(logits),
                                            torch.from_numpy(labels)))
  assert got == pytest.approx(expected, rel=1e-5)


def test_reference_drop_path_rates_follow_the_official_dpr():
  ref = torch_swin_unet.build(dict(TINY, depths=(2, 2, 4, 2), drop_path_rate=0.3))
  dpr = np.linspace(0, 0.3, 10)

  def rates(stage):
    return [getattr(b.drop_path1, "drop_prob", 0.0) for b in stage.blocks]

  np.testing.assert_allclose(rates(ref.layers[2]), dpr[4:8], rtol=1e-6)
  np.testing.assert_allclose(rates(ref.layers_up[1]), dpr[4:8], rtol=1e-6)
  np.testing.assert_allclose(rates(ref.layers_up[3]), dpr[0:2], rtol=1e-6)


def test_pixel_shuffle_channel_order_fails_the_comparison():
  """A reference whose expands split channels as (c, p1, p2) (PixelShuffle) gives logits far
  from swin_jax's with the same weights: the parity test would catch a wrong order."""
  model = swin_jax.models.SwinUnet(**TINY)
  right = reference(TINY, seed=4)
  wrong = reference(TINY, seed=4, pixel_shuffle_order=True)
  params = convert.load_torch_variables(oracle.state_dict_numpy(right), model)["params"]
  images = oracle.random_images(2, 64, 64, seed=5)[..., :1]  # the shapes compiled above
  out = jax_logits(model, params, images)
  assert max_abs_diff(out, torch_logits(right, images)) <= ATOL
  diff_wrong = max_abs_diff(out, torch_logits(wrong, images))
  print(f"(c, p1, p2) order: max |diff| = {diff_wrong:.3g}")
  assert diff_wrong > 1000 * ATOL


def test_gradients_tiny():
  """d(sum(logits * w))/d(every parameter) and d/d(images) match torch autograd."""
  model = swin_jax.models.SwinUnet(**TINY)
  ref = reference(TINY, seed=6)
  params = convert.load_torch_variables(oracle.state_dict_numpy(ref), model)["params"]
  images = oracle.random_images(2, 64, 64, seed=7)
  weights = np.random.default_rng(8).standard_normal((2, 64, 64, 5)).astype(np.float32)
  ref_loss, ref_grads, ref_image_grad = oracle.loss_and_grads(
      ref, images, weights.transpose(0, 3, 1, 2))

  def loss_fn(p, x):
    return jnp.sum(model.apply({"params": p}, x, train=False) * weights)

  loss, (param_grads, image_grad) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(
      params, jnp.asarray(images))
  assert abs(float(loss) - ref_loss) <= ATOL * max(1.0, abs(ref_loss))
  grads = swin_unet_convert.export_swin_unet_state_dict(jax.device_get(param_grads), model,
                                                        prefix="")
  oracle.assert_gradients_match(grads, ref_grads, image_grad, ref_image_grad, ATOL)


def test_drop_path_rates_follow_the_official_dpr():
  """Encoder: linspace(0, rate, sum(depths)) split by stage; decoder stage i (official
  ``layers_up[i]``) reuses encoder stage 3-i's slice."""
  model = swin_jax.models.SwinUnet(**dict(TINY, depths=(2, 2, 4, 2), drop_path_rate=0.3))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  bound = model.bind(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes))
  dpr = np.linspace(0, 0.3, 10)
  starts = [0, 2, 4, 8, 10]
  for i in range(4):
    np.testing.assert_allclose(bound.layers[i].drop_path_rates, dpr[starts[i]:starts[i + 1]])
  for i in (1, 2, 3):
    np.testing.assert_allclose(bound.layers_up[i].drop_path_rates,
                               dpr[starts[3 - i]:starts[4 - i]])
  assert len(bound.layers_up[1].windows) == 4  # depths[3 - 1] blocks


def test_train_mode_runs_two_stages():
  """train=True (stochastic depth from the ``dropout`` stream), on a two-stage model."""
  model = swin_jax.models.SwinUnet(img_size=32, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                                   window_size=4, num_classes=3, drop_path_rate=0.5)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  variables = jax.tree.map(
      lambda x: 0.1 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32),
      shapes)
  apply = jax.jit(lambda v, x, rng: model.apply(v, x, train=True, rngs={"dropout": rng}))
  images = jnp.ones((4, 32, 32, 3))
  first, again = (np.asarray(apply(variables, images, jax.random.PRNGKey(k))) for k in (1, 2))
  assert first.shape == (4, 32, 32, 3) and np.all(np.isfinite(first))
  assert max_abs_diff(first, again) > 0  # stochastic depth draws per key


# ----------------------------------------------------------------------------------------
# Conversion.


@pytest.mark.parametrize("prefix", ["swin_unet.", ""])
def test_converter_round_trip(prefix):
  """Official keys (the ViT_seg wrapper's ``swin_unet.`` prefix or none, with buffers) ->
  params -> the same state dict, bit for bit; buffers are dropped and re-exported."""
  model = swin_jax.models.SwinUnet(**TINY)
  ref = reference(TINY, seed=9)
  sd = oracle.state_dict_numpy(ref)
  buffers = swin_unet_convert.buffers(model)
  checkpoint = {prefix + k: v for k, v in {**sd, **buffers}.items()}
  variables = convert.load_torch_variables(checkpoint, model)
  assert set(variables) == {"params"}
  assert param_count(variables["params"]) == sum(v.size for v in sd.values())

  exported = swin_unet_convert.export_swin_unet_state_dict(variables["params"], model,
                                                           prefix=prefix)
  assert set(exported) == {prefix + k for k in sd}
  for key, value in sd.items():
    np.testing.assert_array_equal(exported[prefix + key], value, err_msg=key)
  # export_torch_state_dict gives the bare (unprefixed) keys.
  bare = convert.export_torch_state_dict(variables["params"], model)
  assert set(bare) == set(sd)

  with_buffers = swin_unet_convert.export_swin_unet_state_dict(
      variables["params"], model, prefix=prefix, include_buffers=True, to_torch=True)
  assert set(with_buffers) == set(checkpoint)
  # The recomputed buffers are timm's (== the official ones at these sizes).
  compared = 0
  for key, value in buffers.items():
    module_name, name = key.rsplit(".", 1)
    theirs = getattr(ref.get_submodule(module_name), name, None)
    if theirs is not None and name == "relative_position_index":
      np.testing.assert_array_equal(value, theirs.numpy(), err_msg=key)
      compared += 1
  assert compared == sum(k.endswith("relative_position_index") for k in buffers) > 0
  assert any(k.endswith("attn_mask") and "layers_up" in k for k in buffers)


def test_scanned_model_converts_and_matches():
  model = swin_jax.models.SwinUnet(**TINY, scan_blocks=True)
  ref = reference(TINY, seed=10)
  sd = oracle.state_dict_numpy(ref)
  params = convert.load_torch_variables(sd, model)["params"]
  assert "block_pairs" in params["layers_up_2"]
  images = oracle.random_images(1, 64, 64, seed=11)
  assert max_abs_diff(jax_logits(model, params, images), torch_logits(ref, images)) <= ATOL
  exported = convert.export_torch_state_dict(params, model)
  assert set(exported) == set(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_load_from_imagenet_swin_mirrors_the_encoder():
  """The official ``load_from``: an ImageNet Swin (timm layout here, a deeper stage 2 and a
  head) fills the encoder, and decoder stage 3-i takes encoder stage i's blocks."""
  cfg = {k: v for k, v in TINY.items() if k != "num_classes"}
  classifier = oracle.timm_swin(dict(cfg, depths=(2, 2, 4, 2), num_classes=10))
  oracle.randomize_(classifier, 12)
  timm_sd = oracle.state_dict_numpy(classifier)
  official = oracle.timm_to_official(timm_sd)

  model = swin_jax.models.SwinUnet(**TINY)
  params, report = swin_unet_convert.load_swin_unet_from_imagenet(
      timm_sd, model, fallback_params=zeros_like_params(model))
  flat = {"/".join(p): v for p, v in flax.traverse_util.flatten_dict(params).items()}

  def torch_value(key, path):
    return convert.keys.torch_to_flax_array(tuple(path.split("/")), official[key])

  # Encoder: as is. Decoder: layers_up.(3-i).blocks.j == layers.i.blocks.j.
  np.testing.assert_array_equal(flat["layers_0/blocks_1/attn/qkv/kernel"],
                                torch_value("layers.0.blocks.1.attn.qkv.weight",
                                            "layers_0/blocks_1/attn/qkv/kernel"))
  for i, up in ((0, 3), (1, 2), (2, 1)):
    for leaf in ("attn/qkv/kernel", "attn/relative_position_bias_table", "norm1/scale",
                 "mlp/fc2/bias"):
      key = f"layers.{i}.blocks.1.{leaf}".replace("/", ".").replace("kernel", "weight")
      key = key.replace("scale", "weight")
      np.testing.assert_array_equal(flat[f"layers_up_{up}/blocks_1/{leaf}"],
                                    torch_value(key, f"layers_up_{up}/blocks_1/{leaf}"),
                                    err_msg=f"layers_up_{up} {leaf}")
  np.testing.assert_array_equal(flat["norm/scale"], official["norm.weight"])

  loaded, left = set(report.loaded), set(report.left_at_init)
  assert "layers_up.1.blocks.0.attn.qkv.weight" in loaded
  assert "patch_embed.proj.weight" in loaded and "layers.2.downsample.reduction.weight" in loaded
  for key in ("layers_up.0.expand.weight", "layers_up.1.upsample.expand.weight",
              "concat_back_dim.1.weight", "norm_up.weight", "up.expand.weight",
              "output.weight"):
    assert key in left, key
  assert not any(".blocks." in key for key in left), sorted(left)
  # Classifier head and the blocks the shallower stage 2 lacks are dropped.
  assert {"head.weight", "head.bias", "layers.2.blocks.3.norm1.weight"} <= set(report.dropped)
  assert not any(key.startswith("layers_up.") for key in report.dropped)
  mirrored = dict(report.adapted)
  assert mirrored["layers_up.3.blocks.0.norm1.weight"].endswith("layers.0.blocks.0.norm1.weight")
  assert len(mirrored) == 3 * 2 * 13  # three decoder stages x 2 blocks x 13 tensors
  assert "mirrored" in report.summary()


def test_load_from_leaves_shape_mismatches_at_init():
  """A checkpoint of another window size: the bias tables do not fit and keep the fallback
  (the official load_from deletes them); everything else loads."""
  cfg = {k: v for k, v in TINY.items() if k != "num_classes"}
  classifier = oracle.randomize_(oracle.timm_swin(dict(cfg, window_size=2, num_classes=10)), 13)
  model = swin_jax.models.SwinUnet(**TINY)
  fallback = jax.tree.map(lambda x: x + 1.0, zeros_like_params(model))
  params, report = swin_unet_convert.load_swin_unet_from_imagenet(
      oracle.state_dict_numpy(classifier), model, fallback_params=fallback)
  tables = [k for k in report.left_at_init if k.endswith("relative_position_bias_table")]
  # Stage 3's 2x2 map clamps the window of 4 to 2 as well: its tables fit.
  # Stages 0-2 and their decoder mirrors, 2 blocks each.
  assert len(tables) == 2 * 6, tables
  np.testing.assert_array_equal(params["layers_up_1"]["blocks_0"]["attn"]
                                ["relative_position_bias_table"],
                                fallback["layers_up_1"]["blocks_0"]["attn"]
                                ["relative_position_bias_table"])
