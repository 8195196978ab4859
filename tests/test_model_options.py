"""The performance options ``scan_blocks``, ``remat`` and ``attention_impl``: the scanned
param layout and its conversions, the options' errors, and that no option changes what the
model computes or what visualisation reads.

(Parity with timm with the options on is in tests/test_parity_perf_options.py.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swin_jax
from swin_jax.convert import export_torch_state_dict, load_torch_checkpoint
from swin_jax.models import scan_layout
from swin_jax.visualize import attention_maps

# The module fixtures (params, the plain model's references) are built once: on one worker.
pytestmark = pytest.mark.xdist_group("model_options")

# Stages of 2 and 4 blocks: one and two pairs per scanned stage.
SMALL = dict(img_size=32, embed_dim=16, depths=(2, 4), num_heads=(2, 4), window_size=4,
             num_classes=5, drop_path_rate=0.2)


# XLA's CPU backend at optimisation level 0 (LLVM's; the HLO passes still run): these tests
# compare the numbers of programs, not their speed, and this halves their compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def images(batch=2, size=32, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 3))


@pytest.fixture(scope="module")
def plain_and_scanned():
  plain = swin_jax.SwinTransformer(**SMALL)
  scanned = swin_jax.SwinTransformer(scan_blocks=True, **SMALL)
  # Jitted: one compile instead of one dispatch per op.
  params = jit(plain.init)(jax.random.PRNGKey(0), images())["params"]
  return plain, scanned, params


def logits_and_grads(model, params, x, **apply_kw):
  """``(logits, grads of sum(logits ** 2))`` of ``model`` in one jitted program."""
  def loss(p):
    out = model.apply({"params": p}, x, **apply_kw)
    return jnp.sum(out ** 2), out

  (_, out), grads = jit(jax.value_and_grad(loss, has_aux=True))(params)
  return out, grads


@pytest.fixture(scope="module")
def plain_attention(plain_and_scanned):
  """``(images, the plain model's sown attention)``: the reference of two tests."""
  plain, _, params = plain_and_scanned
  x = images(seed=3)
  return x, attention_maps.collect_attention(plain, params, x)[1]


def test_scanned_tree_is_the_blocks_stacked_per_pair(plain_and_scanned):
  plain, scanned, params = plain_and_scanned
  stacked = scan_layout.stack_blocks(params, plain.depths)
  init = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), images())["params"]
  assert jax.tree.structure(stacked) == jax.tree.structure(init)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, init)
  pairs = stacked["layers_1"]["block_pairs"]
  assert pairs["block1"]["attn"]["qkv"]["kernel"].shape == (2, 32, 96)
  for j in range(4):  # blocks_j is block{j % 2}[j // 2]
    np.testing.assert_array_equal(pairs[f"block{j % 2}"]["mlp"]["fc1"]["kernel"][j // 2],
                                  params["layers_1"][f"blocks_{j}"]["mlp"]["fc1"]["kernel"])
  assert scan_layout.is_scanned(stacked) and not scan_layout.is_scanned(params)


def test_unstack_inverts_stack(plain_and_scanned):
  plain, _, params = plain_and_scanned
  back = scan_layout.unstack_blocks(scan_layout.stack_blocks(params, plain.depths), plain.depths)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_scanned_model_computes_the_same_logits_and_gradients(plain_and_scanned):
  plain, scanned, params = plain_and_scanned
  stacked = scan_layout.stack_blocks(params, plain.depths)
  x = images(seed=1)
  logits, grads = logits_and_grads(scanned, stacked, x)
  expected_logits, expected_grads = logits_and_grads(plain, params, x)
  np.testing.assert_allclose(logits, expected_logits, atol=1e-5)
  expected = scan_layout.stack_blocks(expected_grads, plain.depths)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, expected)


def test_scanned_training_applies_drop_path_per_block(plain_and_scanned):
  """With rate 0.2 for the last blocks, some samples' residual branches are dropped: the
  train-mode output differs from eval and depends on the dropout RNG."""
  plain, scanned, params = plain_and_scanned
  stacked = scan_layout.stack_blocks(params, plain.depths)
  x = images(batch=8, seed=2)
  # One compiled program for every seed.
  train_fn = jit(lambda p, key: scanned.apply({"params": p}, x, train=True,
                                              rngs={"dropout": key}))

  def train(seed):
    return train_fn(stacked, jax.random.PRNGKey(seed))

  assert not np.allclose(train(0), jit(scanned.apply)({"params": stacked}, x))
  assert not np.allclose(train(0), train(1))
  np.testing.assert_array_equal(train(0), train(0))


def test_converter_loads_and_exports_the_scanned_layout(plain_and_scanned):
  plain, scanned, params = plain_and_scanned
  state_dict = export_torch_state_dict(params, plain)
  loaded = load_torch_checkpoint(state_dict, scanned)
  jax.tree.map(np.testing.assert_array_equal, loaded,
               scan_layout.stack_blocks(params, plain.depths))
  exported = export_torch_state_dict(loaded, scanned)
  assert exported.keys() == state_dict.keys()
  for k in state_dict:
    np.testing.assert_array_equal(exported[k], state_dict[k])


def test_exporting_per_block_params_with_a_scanned_model_says_so(plain_and_scanned):
  _, scanned, params = plain_and_scanned
  with pytest.raises(ValueError, match="scan_blocks=True but the params are per block"):
    export_torch_state_dict(params, scanned)


def test_scanned_model_sows_the_same_attention(plain_and_scanned, plain_attention):
  plain, scanned, params = plain_and_scanned
  stacked = scan_layout.stack_blocks(params, plain.depths)
  x, expected = plain_attention
  _, probs = attention_maps.collect_attention(scanned, stacked, x)
  assert probs.keys() == expected.keys() == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)}
  for key in expected:
    np.testing.assert_allclose(probs[key], expected[key], atol=1e-6)


REMAT_KW = dict(train=True, rngs={"dropout": jax.random.PRNGKey(5)})


@pytest.fixture(scope="module")
def plain_train_reference(plain_and_scanned):
  """The plain model's train-mode logits and gradients: the reference of every policy."""
  plain, _, params = plain_and_scanned
  return logits_and_grads(plain, params, images(seed=4), **REMAT_KW)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_outputs_and_gradients(plain_and_scanned, plain_train_reference, remat):
  _, _, params = plain_and_scanned
  model = swin_jax.SwinTransformer(remat=remat, **SMALL)
  logits, grads = logits_and_grads(model, params, images(seed=4), **REMAT_KW)
  expected_logits, expected_grads = plain_train_reference
  # The loss is sum(logits ** 2): equal logits give equal losses.
  np.testing.assert_allclose(jnp.sum(logits ** 2), jnp.sum(expected_logits ** 2), rtol=1e-5)
  np.testing.assert_allclose(logits, expected_logits, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, expected_grads)


def test_unknown_remat_policy_names_the_choices():
  model = swin_jax.SwinTransformer(remat="everything", **SMALL)
  with pytest.raises(ValueError, match=r"remat must be one of \['none', 'full', 'dots'"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), images())   # traced, not run


def test_scan_needs_even_depths():
  model = swin_jax.SwinTransformer(scan_blocks=True, **{**SMALL, "depths": (2, 3)})
  with pytest.raises(ValueError, match="even depth per stage; this stage has 3 blocks"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), images())


def test_fused_attention_model_still_gives_visualisation_its_probabilities(
    plain_and_scanned, plain_attention):
  plain, _, params = plain_and_scanned
  fused = plain.clone(attention_impl="dot_product")
  x, expected = plain_attention
  np.testing.assert_allclose(jit(fused.apply)({"params": params}, x),
                             jit(plain.apply)({"params": params}, x), atol=1e-5)
  _, probs = attention_maps.collect_attention(fused, params, x)
  for key in expected:
    np.testing.assert_allclose(probs[key], expected[key], atol=1e-6)


def test_fused_attention_falls_back_for_attention_dropout(plain_and_scanned):
  """jax.nn.dot_product_attention has no dropout: with attn_drop_rate > 0 training takes the
  explicit path (same RNG use, same result); evaluation stays fused."""
  _, _, params = plain_and_scanned   # attention dropout adds no params
  kw = dict(SMALL, attn_drop_rate=0.3)
  explicit = swin_jax.SwinTransformer(**kw)
  fused = swin_jax.SwinTransformer(attention_impl="dot_product", **kw)
  x = images(seed=7)
  rngs = {"dropout": jax.random.PRNGKey(8)}

  def train(model):
    return jit(lambda p: model.apply({"params": p}, x, train=True, rngs=rngs))(params)

  np.testing.assert_array_equal(train(fused), train(explicit))


def test_unknown_attention_impl_names_the_choices():
  model = swin_jax.SwinTransformer(attention_impl="flash", **SMALL)
  with pytest.raises(ValueError, match=r"attention_impl must be one of \('explicit', 'dot_product'\)"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), images())


def test_bfloat16_scanned_model_trains_in_bfloat16(plain_and_scanned):
  """The traced drop-path rate inside the scan must keep bf16 activations bf16."""
  plain, _, params = plain_and_scanned
  model = swin_jax.SwinTransformer(scan_blocks=True, remat="dots_no_batch", dtype="bfloat16",
                                   **SMALL)
  stacked = scan_layout.stack_blocks(params, plain.depths)

  def loss(p):
    out = model.apply({"params": p}, images(seed=9), train=True,
                      rngs={"dropout": jax.random.PRNGKey(10)})
    return jnp.sum(out ** 2)

  grads = jit(jax.grad(loss))(stacked)
  assert all(g.dtype == jnp.float32 and bool(jnp.isfinite(g).all())
             for g in jax.tree.leaves(grads))
