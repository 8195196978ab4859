"""Attention maps in image coordinates (swin_jax.visualize) and the visualisation command.

The stitching tests plant attention patterns by hand (identity; one-hot to a known key slot)
and check where the mass lands, with the expected pixel worked out from the window layout,
so they fail if the shift direction, the window order or the padding are wrong. That the
sown probabilities equal a reference from q, k, bias and mask is tested in test_model.py.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from swin_jax.models.swin import SwinTransformer
from swin_jax.visualize import attention_maps as am
from swin_jax.visualize import plots

# 8x8 tokens, window 4, shift 2: four windows, none padded.
SHIFTED = am.BlockGeometry(grid=(8, 8), window=(4, 4), shift=(2, 2), cell=4)
UNSHIFTED = am.BlockGeometry(grid=(8, 8), window=(4, 4), shift=(0, 0), cell=4)
# 6x6 tokens padded to 8x8 (after the roll): the bottom/right windows hold padding.
PADDED_SHIFTED = am.BlockGeometry(grid=(6, 6), window=(4, 4), shift=(2, 2), cell=4)
GEOMETRIES = [SHIFTED, UNSHIFTED, PADDED_SHIFTED,
              am.BlockGeometry(grid=(5, 7), window=(4, 4), shift=(0, 0), cell=8)]
TINY = dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
            window_size=4, num_classes=10, drop_path_rate=0.0)


def planted(geometry, heads, pattern):
  """Probabilities ``(nW, heads, N, N)`` with ``pattern`` ``(N, N)`` in every window/head."""
  return np.broadcast_to(pattern, (geometry.num_windows, heads) + pattern.shape).copy()


def one_hot(n, query_slot, key_slot):
  """Identity everywhere except ``query_slot``, which puts all its mass on ``key_slot``."""
  pattern = np.eye(n, dtype=np.float32)
  pattern[query_slot] = 0.0
  pattern[query_slot, key_slot] = 1.0
  return pattern


def one_hot_in_window(geometry, heads, window, query_slot, key_slot):
  """Identity attention in every window except ``window``, which gets ``one_hot``: a wrong
  window order or shift direction moves the query out of the planted window."""
  probs = planted(geometry, heads, np.eye(16, dtype=np.float32))
  probs[window] = one_hot(16, query_slot, key_slot)
  return probs


def random_probs(geometry, heads, seed=0):
  logits = np.random.default_rng(seed).normal(size=(geometry.num_windows, heads, 16, 16))
  return np.asarray(jax.nn.softmax(logits, -1), np.float32)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_every_real_token_sits_in_exactly_one_window_slot(geometry):
  slots = am.slot_tokens(geometry)
  assert slots.shape == (geometry.num_windows, 16)
  real = np.sort(slots[slots >= 0])
  np.testing.assert_array_equal(real, np.arange(geometry.num_tokens))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_identity_attention_lands_on_the_query_itself(geometry):
  probs = planted(geometry, 2, np.eye(16, dtype=np.float32))
  h, w = geometry.grid
  for y in range(h):
    for x in range(w):
      expected = np.zeros((2, h, w), np.float32)
      expected[:, y, x] = 1.0
      np.testing.assert_array_equal(am.query_attention(probs, geometry, (y, x)), expected)
  np.testing.assert_array_equal(am.dense_attention(probs, geometry),
                                np.broadcast_to(np.eye(h * w), (2, h * w, h * w)))


def test_unshifted_one_hot_lands_on_the_key_slots_pixel():
  # Token (5, 2): window (1, 0) = index 2, slot 1*4 + 2 = 6. Key slot 3 = window row 0,
  # column 3: token (4, 3).
  probs = one_hot_in_window(UNSHIFTED, 1, 2, 6, 3)
  out = am.query_attention(probs, UNSHIFTED, (5, 2))[0]
  assert out[4, 3] == 1.0 and out.sum() == 1.0


def test_shifted_one_hot_at_the_wrapped_corner_window():
  # Shift 2 on 8x8: token (0, 0) sits at shifted (6, 6) -> window (1, 1) = 3, slot
  # 2*4 + 2 = 10. Key slot 0 is shifted (4, 4) = original (6, 6); key slot 15 is shifted
  # (7, 7) = original (1, 1). The wrapped window joins the image's far corner to (0, 0).
  for key_slot, expected in ((0, (6, 6)), (15, (1, 1)), (11, (0, 1))):
    probs = one_hot_in_window(SHIFTED, 2, 3, 10, key_slot)
    out = am.query_attention(probs, SHIFTED, (0, 0))
    assert out[:, expected[0], expected[1]].tolist() == [1.0, 1.0], key_slot
    assert out.sum() == 2.0
    dense = am.dense_attention(probs, SHIFTED)
    assert dense[0, 0, expected[0] * 8 + expected[1]] == 1.0


def test_shifted_one_hot_in_an_interior_window():
  # Token (3, 4): shifted (1, 2) -> window 0, slot 1*4 + 2 = 6; key slot 13 = shifted (3, 1)
  # = original (5, 3).
  probs = one_hot_in_window(SHIFTED, 1, 0, 6, 13)
  out = am.query_attention(probs, SHIFTED, (3, 4))[0]
  assert out[5, 3] == 1.0 and out.sum() == 1.0


def test_padded_keys_are_dropped_and_reported_as_padding_mass():
  # 6x6 with shift 2 padded to 8x8: token (0, 0) sits at shifted (4, 4) -> window 3, slot 0.
  # Key slot 5 is shifted (5, 5) = original (1, 1); key slot 2 is shifted (4, 6): padding.
  to_real = one_hot_in_window(PADDED_SHIFTED, 1, 3, 0, 5)
  out = am.query_attention(to_real, PADDED_SHIFTED, (0, 0))[0]
  assert out[1, 1] == 1.0 and out.sum() == 1.0
  to_padding = one_hot_in_window(PADDED_SHIFTED, 1, 3, 0, 2)
  assert am.query_attention(to_padding, PADDED_SHIFTED, (0, 0)).sum() == 0.0
  mass = am.padding_mass(to_padding, PADDED_SHIFTED)[0]
  assert mass[0, 0] == 1.0 and mass.sum() == 1.0


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_received_and_padding_maps_agree_with_the_dense_matrix(geometry):
  probs = random_probs(geometry, 3)
  dense = am.dense_attention(probs, geometry)
  h, w = geometry.grid
  np.testing.assert_allclose(am.received_attention(probs, geometry),
                             dense.mean(1).reshape(3, h, w), atol=1e-6)
  np.testing.assert_allclose(am.padding_mass(probs, geometry),
                             1.0 - dense.sum(-1).reshape(3, h, w), atol=1e-6)
  for y, x in ((0, 0), (h - 1, w - 1), (h // 2, 1)):
    np.testing.assert_array_equal(am.query_attention(probs, geometry, (y, x)),
                                  dense[:, y * w + x].reshape(3, h, w))


def test_to_pixels_repeats_each_token_over_its_cell_and_crops():
  token_map = np.arange(6, dtype=np.float32).reshape(2, 3)
  pixels = am.to_pixels(token_map, 4, (7, 12))
  assert pixels.shape == (7, 12)
  assert pixels[0, 0] == 0 and pixels[3, 11] == 2 and pixels[6, 4] == 4


def test_merge_matrix_averages_each_parents_real_children():
  m = am.merge_matrix((3, 3))  # padded to 4x4 by the merge: parents have 4, 2, 2, 1 children
  assert m.shape == (4, 9)
  np.testing.assert_allclose(m.sum(-1), 1.0)
  np.testing.assert_allclose(m[0].reshape(3, 3), [[.25, .25, 0], [.25, .25, 0], [0, 0, 0]])
  np.testing.assert_allclose(m[3].reshape(3, 3), [[0, 0, 0], [0, 0, 0], [0, 0, 1]])


def test_rollout_of_identity_attention_is_the_merge_chain():
  grids = [(4, 4), (2, 2), (1, 1)]
  eye = {(s, b): np.eye(g[0] * g[1], dtype=np.float32) for s, g in enumerate(grids)
         for b in range(2)}
  rollout = am.model_rollout(eye, grids)
  np.testing.assert_allclose(rollout, np.full((1, 16), 1 / 16), atol=1e-7)
  within = am.model_rollout(eye, grids, last_stage=1)
  np.testing.assert_allclose(within, am.merge_matrix((4, 4)), atol=1e-7)


def test_stage_rollout_is_the_product_of_residual_factors_and_rows_match():
  geometry = SHIFTED
  dense = [am.dense_attention(random_probs(geometry, 1, seed), geometry)[0] for seed in (1, 2)]
  stage = am.stage_rollout(dense)
  eye = np.eye(64)
  expected = (0.5 * dense[1] + 0.5 * eye) @ (0.5 * dense[0] + 0.5 * eye)
  np.testing.assert_allclose(stage, expected, atol=1e-6)
  np.testing.assert_allclose(stage.sum(-1), 1.0, atol=1e-5)
  rows = am.model_rollout({(0, 0): dense[0], (0, 1): dense[1]}, [(8, 8)], rows=[0, 63])
  np.testing.assert_allclose(rows, stage[[0, 63]], atol=1e-6)


# ------------------------------------------------------------------------------------------
# A tiny random model end to end
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
  model = SwinTransformer(**TINY)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  return model, params


@pytest.fixture(scope="module", params=[32, 40], ids=["32px", "40px-padded"])
def tiny_attention(request, tiny):
  model, params = tiny
  size = request.param
  images = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  _, probs = am.collect_attention(model, params, images)
  return size, probs, am.model_geometry(model, (size, size))


def test_geometry_follows_the_runtime_grid(tiny_attention):
  size, probs, geometries = tiny_attention
  assert geometries[0, 1].grid == (size // 4, size // 4)
  assert geometries[0, 1].shift == (2, 2) and geometries[1, 1].shift == (0, 0)
  for key, p in probs.items():
    assert p.shape[:2] == (2, geometries[key].num_windows)


def test_stitched_rows_sum_to_one_minus_padding_mass(tiny_attention):
  _, probs, geometries = tiny_attention
  for key, p in probs.items():
    for b in range(2):
      dense = am.dense_attention(p[b], geometries[key])
      pad = am.padding_mass(p[b], geometries[key]).reshape(dense.shape[0], -1)
      np.testing.assert_allclose(dense.sum(-1), 1.0 - pad, atol=1e-5)


def test_shifted_corner_query_sees_only_its_own_region(tiny_attention):
  # Window 4, shift 2. 32px: 8x8 tokens; token (0, 0) sits at shifted (6, 6) and shares
  # its wrapped window with the far corner. 40px: 10x10 tokens rolled, then padded to 12x12;
  # token (0, 0) sits at shifted (8, 8), its window also holds padding (rows/columns 10-11).
  # Either way the mask keeps its attention inside its 2x2 region {0, 1} x {0, 1}.
  _, probs, geometries = tiny_attention
  out = am.query_attention(probs[0, 1][0], geometries[0, 1], (0, 0))[0]
  np.testing.assert_allclose(out[:2, :2].sum(), 1.0, atol=1e-5)
  assert out[:2, :2].min() > 1e-6
  out[:2, :2] = 0.0
  assert out.max() < 1e-20


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------


def test_command_writes_the_three_figures(tmp_path, monkeypatch, tiny):
  command = importlib.import_module("swin_jax.visualize.__main__")
  model, params = tiny
  monkeypatch.setattr(command, "load_model",
                      lambda *args, **kwargs: (model, params, "random init (test)"))
  flags = command.FLAGS
  saved = flags.flag_values_dict()
  try:
    flags(["visualize", "--image", "chelsea", "--out", str(tmp_path), "--query", "3,30",
           "--stage", "0", "--block", "1"])
    command.main(["visualize"])
  finally:
    for name, value in saved.items():
      flags[name].value = value
  expected = {"query_s0_b1.png": plots.figure_size_px(1, 1 + 1),  # 1 head in stage 0
              "blocks.png": plots.figure_size_px(2, 2),           # 2 stages x 2 blocks
              "rollout.png": plots.figure_size_px(1, 4)}
  for name, size in expected.items():
    path = tmp_path / name
    assert path.stat().st_size > 1000, name
    with Image.open(path) as image:
      assert image.format == "PNG" and image.size == size, name
      assert np.asarray(image.convert("L")).std() > 5, name  # not blank


# ------------------------------------------------------------------------------------------
# A backbone nested in a task model
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan_blocks", [False, True], ids=["per-block", "scanned"])
def test_attention_of_a_nested_backbone_equals_the_same_swin_at_the_root(scan_blocks):
  from nested_models import tiny_nested_model  # pylint: disable=import-outside-toplevel
  # The scanned case also runs the fused kernel, which collect_attention must swap out in
  # the nested Swin (it sows no probabilities).
  impl = "dot_product" if scan_blocks else "explicit"
  model = tiny_nested_model(scan_blocks=scan_blocks, attention_impl=impl)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
  # Random values of the params' shapes: compiling the init would cost more than the test.
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: np.float32(0.1) * rng.standard_normal(s.shape, np.float32),
                        shapes)
  assert set(params) == {"backbone", "head"}

  logits, nested = am.collect_attention(model, params, images)
  # The same Swin at the root, on the same params: it has no final norm in the task model,
  # so run its stage outputs ('features') rather than its classifier.
  features, root = am.collect_attention(model.backbone, params["backbone"], images,
                                        method="features")
  assert logits.shape == (2, 10) and len(features) == 3
  assert sorted(nested) == sorted(root) == [(s, b) for s in range(3) for b in range(2)]
  for key in root:
    np.testing.assert_array_equal(nested[key], root[key], err_msg=str(key))
  # The geometry helpers find the backbone too; an explicit path must name a Swin.
  assert am.find_backbone(model, "backbone") == (("backbone",), model.backbone)
  assert am.model_geometry(model, (64, 64)) == am.model_geometry(model.backbone, (64, 64))
  with pytest.raises(ValueError, match="no Swin backbone at head"):
    am.collect_attention(model, params, images, backbone_path="head")
