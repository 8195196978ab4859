"""Window operations against the official Swin definitions (spec section 2, items 5-8).

Every expectation comes from an independent source: the official PyTorch construction
(``view/permute``, ``torch.roll``, the ``img_mask`` slice loop, the ``meshgrid`` index),
re-typed here, or an element-by-element numpy loop that states the definition directly.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.models import window as window_ops


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


# ----------------------------------------------------------------------------------------
# Independent references.
# ----------------------------------------------------------------------------------------


def loop_partition(x: np.ndarray, window: tuple[int, int]) -> np.ndarray:
  """The definition: windows batch-major then row-major over the grid, tokens row-major."""
  b, h, w, _ = x.shape
  wh, ww = window
  windows = []
  for n in range(b):
    for gi in range(h // wh):
      for gj in range(w // ww):
        windows.append([x[n, gi * wh + i, gj * ww + j] for i in range(wh) for j in range(ww)])
  return np.asarray(windows)


def official_partition(torch, x: np.ndarray, window: tuple[int, int]) -> np.ndarray:
  """Official ``window_partition`` (generalised to ``(wh, ww)``, as timm)."""
  t = torch.from_numpy(x)
  b, h, w, c = t.shape
  wh, ww = window
  t = t.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5).contiguous()
  return t.view(-1, wh * ww, c).numpy()


def official_reverse(torch, windows: np.ndarray, window: tuple[int, int], h: int,
                     w: int) -> np.ndarray:
  """Official ``window_reverse``."""
  t = torch.from_numpy(windows)
  wh, ww = window
  c = t.shape[-1]
  t = t.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).contiguous()
  return t.view(-1, h, w, c).numpy()


def official_shift_mask(torch, h: int, w: int, window: tuple[int, int],
                        shift: tuple[int, int]) -> np.ndarray:
  """The official ``attn_mask``: label the 3x3 slice regions, compare labels per window."""
  wh, ww = window
  sh, sw = shift
  img_mask = torch.zeros((1, h, w, 1))
  h_slices = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None))
  w_slices = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None))
  cnt = 0
  for hs in h_slices:
    for ws in w_slices:
      img_mask[:, hs, ws, :] = cnt
      cnt += 1
  labels = loop_partition(img_mask.numpy(), window)[..., 0]  # (nW, N)
  num_windows, n = labels.shape
  mask = np.zeros((num_windows, n, n), np.float32)
  for k, i, j in itertools.product(range(num_windows), range(n), range(n)):
    mask[k, i, j] = 0.0 if labels[k, i] == labels[k, j] else -100.0
  return mask


def official_relative_position_index(torch, window: tuple[int, int]) -> np.ndarray:
  """Official ``relative_position_index`` (meshgrid, +(w-1), *(2w-1), sum)."""
  wh, ww = window
  coords = torch.stack(torch.meshgrid([torch.arange(wh), torch.arange(ww)], indexing="ij"))
  coords_flatten = torch.flatten(coords, 1)
  relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
  relative_coords = relative_coords.permute(1, 2, 0).contiguous()
  relative_coords[:, :, 0] += wh - 1
  relative_coords[:, :, 1] += ww - 1
  relative_coords[:, :, 0] *= 2 * ww - 1
  return relative_coords.sum(-1).numpy()


def random_nhwc(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------
# window_partition / window_reverse
# ----------------------------------------------------------------------------------------

WINDOWS = [(4, 4), (2, 2), (4, 2), (1, 3)]


@pytest.mark.parametrize("window", WINDOWS)
def test_partition_order_is_the_official_one(torch, window):
  x = random_nhwc((2, 8, 12, 3))
  got = np.asarray(window_ops.window_partition(jnp.asarray(x), window))
  np.testing.assert_array_equal(got, official_partition(torch, x, window))
  np.testing.assert_array_equal(got, loop_partition(x, window))


@pytest.mark.parametrize("window", WINDOWS)
def test_partition_shape(window):
  x = jnp.zeros((2, 8, 12, 3))
  n_windows = 2 * (8 // window[0]) * (12 // window[1])
  assert window_ops.window_partition(x, window).shape == (n_windows, window[0] * window[1], 3)


@pytest.mark.parametrize("window", WINDOWS)
def test_reverse_is_the_inverse_of_partition(window):
  x = jnp.asarray(random_nhwc((2, 8, 12, 3), seed=1))
  windows = window_ops.window_partition(x, window)
  np.testing.assert_array_equal(window_ops.window_reverse(windows, window, 8, 12), x)
  w = jnp.asarray(random_nhwc(windows.shape, seed=2))
  np.testing.assert_array_equal(
      window_ops.window_partition(window_ops.window_reverse(w, window, 8, 12), window), w)


@pytest.mark.parametrize("window", WINDOWS)
def test_reverse_matches_the_official_reverse(torch, window):
  windows = random_nhwc((2 * (8 // window[0]) * (12 // window[1]), window[0] * window[1], 3))
  got = np.asarray(window_ops.window_reverse(jnp.asarray(windows), window, 8, 12))
  np.testing.assert_array_equal(got, official_reverse(torch, windows, window, 8, 12))


def test_window_ops_jit_to_the_eager_result():
  x = jnp.asarray(random_nhwc((2, 8, 12, 3)))
  eager = window_ops.window_partition(x, (4, 2))
  jitted = jax.jit(window_ops.window_partition, static_argnums=1)(x, (4, 2))
  np.testing.assert_array_equal(jitted, eager)
  back = jax.jit(window_ops.window_reverse, static_argnums=(1, 2, 3))(jitted, (4, 2), 8, 12)
  np.testing.assert_array_equal(back, x)


# ----------------------------------------------------------------------------------------
# Cyclic shift
# ----------------------------------------------------------------------------------------

SHIFTS = [(3, 3), (2, 1), (0, 2)]


@pytest.mark.parametrize("shift", SHIFTS)
def test_cyclic_shift_is_torch_roll_by_minus_shift(torch, shift):
  x = random_nhwc((2, 7, 9, 3))
  got = np.asarray(window_ops.cyclic_shift(jnp.asarray(x), shift))
  expected = torch.roll(torch.from_numpy(x), shifts=(-shift[0], -shift[1]), dims=(1, 2))
  np.testing.assert_array_equal(got, expected.numpy())


@pytest.mark.parametrize("shift", SHIFTS)
def test_cyclic_shift_moves_pixel_i_plus_s_to_i(shift):
  x = random_nhwc((1, 7, 9, 2))
  got = np.asarray(window_ops.cyclic_shift(jnp.asarray(x), shift))
  for i, j in itertools.product(range(7), range(9)):
    np.testing.assert_array_equal(got[0, i, j], x[0, (i + shift[0]) % 7, (j + shift[1]) % 9])


@pytest.mark.parametrize("shift", SHIFTS)
def test_reverse_cyclic_shift_undoes_the_shift(shift):
  x = jnp.asarray(random_nhwc((2, 7, 9, 3)))
  shifted = window_ops.cyclic_shift(x, shift)
  np.testing.assert_array_equal(window_ops.reverse_cyclic_shift(shifted, shift), x)


# ----------------------------------------------------------------------------------------
# Shift mask
# ----------------------------------------------------------------------------------------

# (padded H, padded W, window, shift)
MASK_CASES = [
    (14, 14, (7, 7), (3, 3)),
    (56, 56, (7, 7), (3, 3)),
    (16, 16, (8, 8), (4, 4)),
    (21, 14, (7, 7), (3, 3)),  # a padded, non-square map (e.g. 18x14 padded to 21x14)
    (12, 8, (4, 2), (2, 1)),  # non-square window
]
UNPADDED_MASK_CASES = [c for c in MASK_CASES if c[0] % c[2][0] == 0 and c[1] % c[2][1] == 0]


@pytest.mark.parametrize("h,w,window,shift", MASK_CASES)
def test_shift_mask_equals_the_official_construction(torch, h, w, window, shift):
  got = window_ops.shift_mask(h, w, window, shift)
  np.testing.assert_array_equal(got, official_shift_mask(torch, h, w, window, shift))


@pytest.mark.parametrize("h,w,window,shift", MASK_CASES)
def test_shift_mask_shape_values_and_symmetry(h, w, window, shift):
  mask = np.asarray(window_ops.shift_mask(h, w, window, shift))
  n = window[0] * window[1]
  assert mask.shape == ((h // window[0]) * (w // window[1]), n, n)
  assert mask.dtype == np.float32
  assert set(np.unique(mask).tolist()) == {0.0, -100.0}
  np.testing.assert_array_equal(mask, mask.transpose(0, 2, 1))
  np.testing.assert_array_equal(np.diagonal(mask, axis1=1, axis2=2), 0.0)
  # The top-left window is far from the wrapped border: nothing in it is masked.
  np.testing.assert_array_equal(mask[0], 0.0)


@pytest.mark.parametrize("h,w,window,shift", UNPADDED_MASK_CASES)
def test_shift_mask_separates_exactly_the_wrapped_tokens(h, w, window, shift):
  """After the roll, token (i, j) came from ((i+s) % H, (j+s) % W); two tokens of one window
  may attend to each other iff both or neither wrapped, in each dimension."""
  sh, sw = shift
  wrapped = np.zeros((1, h, w, 2), np.float32)
  for i, j in itertools.product(range(h), range(w)):
    wrapped[0, i, j] = (i + sh >= h, j + sw >= w)
  flags = loop_partition(wrapped, window)  # (nW, N, 2)
  same = (flags[:, :, None, :] == flags[:, None, :, :]).all(-1)
  expected = np.where(same, 0.0, -100.0)
  np.testing.assert_array_equal(window_ops.shift_mask(h, w, window, shift), expected)


# ----------------------------------------------------------------------------------------
# Relative position index
# ----------------------------------------------------------------------------------------


def test_relative_position_index_window7_shape_range_and_diagonal():
  index = np.asarray(window_ops.relative_position_index((7, 7)))
  assert index.shape == (49, 49)
  np.testing.assert_array_equal(np.unique(index), np.arange(169))  # exactly 0..168
  np.testing.assert_array_equal(np.diagonal(index), 84)


def test_relative_position_index_nonsquare_shape_range_and_diagonal():
  index = np.asarray(window_ops.relative_position_index((3, 5)))
  assert index.shape == (15, 15)
  np.testing.assert_array_equal(np.unique(index), np.arange(5 * 9))
  np.testing.assert_array_equal(np.diagonal(index), (3 - 1) * (2 * 5 - 1) + (5 - 1))


@pytest.mark.parametrize("window", [(7, 7), (3, 5), (12, 12), (2, 4)])
def test_relative_position_index_equals_the_official_construction(torch, window):
  got = np.asarray(window_ops.relative_position_index(window))
  np.testing.assert_array_equal(got, official_relative_position_index(torch, window))


@pytest.mark.parametrize("window", [(7, 7), (3, 5)])
def test_relative_position_index_is_a_function_of_the_offset(window):
  wh, ww = window
  index = np.asarray(window_ops.relative_position_index(window))
  tokens = [(r, c) for r in range(wh) for c in range(ww)]  # row-major
  for (a, (hi, wi)), (b, (hj, wj)) in itertools.product(enumerate(tokens), repeat=2):
    assert index[a, b] == (hi - hj + wh - 1) * (2 * ww - 1) + (wi - wj + ww - 1)


# ----------------------------------------------------------------------------------------
# Window clamp
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution,window,shift,expected", [
    ((7, 7), (7, 7), (3, 3), ((7, 7), (0, 0))),  # resolution == window: no shift
    ((6, 6), (7, 7), (3, 3), ((6, 6), (0, 0))),  # smaller: the window shrinks
    ((14, 14), (7, 7), (3, 3), ((7, 7), (3, 3))),  # larger: unchanged
    ((14, 14), (7, 7), (0, 0), ((7, 7), (0, 0))),  # an unshifted block stays unshifted
    ((7, 14), (7, 7), (3, 3), ((7, 7), (0, 3))),  # per dimension
    ((3, 5), (4, 4), (2, 2), ((3, 4), (0, 2))),
])
def test_clamp_window(resolution, window, shift, expected):
  assert window_ops.clamp_window(resolution, window, shift) == expected


# ----------------------------------------------------------------------------------------
# Constants: cached, read-only
# ----------------------------------------------------------------------------------------


def test_constants_are_built_once_per_shape():
  assert window_ops.relative_position_index((7, 7)) is window_ops.relative_position_index((7, 7))
  assert (window_ops.shift_mask(14, 14, (7, 7), (3, 3))
          is window_ops.shift_mask(14, 14, (7, 7), (3, 3)))


@pytest.mark.parametrize("make", [
    lambda: window_ops.relative_position_index((7, 7)),
    lambda: window_ops.shift_mask(14, 14, (7, 7), (3, 3)),
])
def test_constants_are_read_only(make):
  constant = make()
  assert not constant.flags.writeable
  with pytest.raises(ValueError):
    constant[0, 0] = 1


# ----------------------------------------------------------------------------------------
# Padding (timm: zeros at the bottom/right up to a window multiple)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,multiple,expected", [(14, 7, 0), (15, 7, 6), (10, 4, 2),
                                                    (3, 4, 1)])
def test_padding_to_multiple(size, multiple, expected):
  assert window_ops.padding_to_multiple(size, multiple) == expected


def test_pad_bottom_right_appends_zeros():
  x = random_nhwc((2, 5, 6, 3))
  got = np.asarray(window_ops.pad_bottom_right(jnp.asarray(x), 3, 2))
  assert got.shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(got[:, :5, :6], x)
  np.testing.assert_array_equal(got[:, 5:], 0.0)
  np.testing.assert_array_equal(got[:, :, 6:], 0.0)


# ---------------------------------------------------------------------------------------
# The same functions in 3D (nnFormer's volumes), against hand-computed small cases.


def test_3d_partition_orders_windows_and_tokens_row_major_and_reverses():
  # (1, 2, 2, 4, 1) with windows (1, 2, 2): 2 x 1 x 2 = 4 windows of 4 voxels.
  x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4, 1)
  windows = window_ops.window_partition(x, (1, 2, 2))[..., 0]
  # Voxel (d, h, w) holds 8 d + 4 h + w; window (gd, gw) holds d = gd, w in 2 gw + {0, 1}.
  np.testing.assert_array_equal(windows, [[0, 1, 4, 5], [2, 3, 6, 7],
                                          [8, 9, 12, 13], [10, 11, 14, 15]])
  np.testing.assert_array_equal(window_ops.window_reverse(windows[..., None], (1, 2, 2), 2, 2, 4),
                                x)
  big = np.random.default_rng(0).normal(size=(2, 4, 6, 8, 3)).astype(np.float32)
  back = window_ops.window_reverse(window_ops.window_partition(jnp.asarray(big), (2, 3, 4)),
                                   (2, 3, 4), 4, 6, 8)
  np.testing.assert_array_equal(np.asarray(back), big)


def test_3d_cyclic_shift_rolls_all_three_spatial_axes():
  x = np.random.default_rng(1).normal(size=(1, 4, 4, 6, 2)).astype(np.float32)
  shifted = np.asarray(window_ops.cyclic_shift(jnp.asarray(x), (1, 2, 3)))
  assert shifted[0, 0, 0, 0, 0] == x[0, 1, 2, 3, 0]
  np.testing.assert_array_equal(shifted, np.roll(x, (-1, -2, -3), axis=(1, 2, 3)))
  np.testing.assert_array_equal(
      np.asarray(window_ops.reverse_cyclic_shift(jnp.asarray(shifted), (1, 2, 3))), x)
  padded = window_ops.pad_bottom_right(jnp.asarray(x), 0, 1, 2)
  assert padded.shape == (1, 4, 5, 8, 2) and float(jnp.abs(padded[:, :, 4:]).sum()) == 0


def test_3d_relative_position_index_is_the_row_major_offset_table():
  index = window_ops.relative_position_index((2, 2, 2))
  assert index.shape == (8, 8) and index.dtype == np.int32
  # Offsets (dd, dh, dw) + 1 in {0, 1, 2}: 9 dd + 3 dh + dw; the diagonal is the centre 13.
  np.testing.assert_array_equal(np.diag(index), 13)
  assert index[0, 7] == 0 and index[7, 0] == 26       # (0,0,0)-(1,1,1) and the reverse
  assert index[1, 2] == 9 * 1 + 3 * 0 + 2             # (0,0,1) vs (0,1,0): (0, -1, +1)
  # The 2D index is the rank-2 case: a 1-deep window repeats it.
  np.testing.assert_array_equal(window_ops.relative_position_index((1, 3, 2)),
                                window_ops.relative_position_index((3, 2)))


def test_nnformer_index_keeps_the_official_colliding_strides():
  index = window_ops.nnformer_relative_position_index((4, 4, 4))
  # (dd + 3) * 11 + (dh + 3) * 7 + (dw + 3): from 0 ((0,0,0) vs (3,3,3)) to 6*11+6*7+6 = 114.
  assert index[0, 63] == 0 and index[63, 0] == 114 and index.max() == 114
  assert len(np.unique(index)) == 115          # of the 7 * 7 * 7 = 343 table rows
  # The depth stride 11 is less than the 49 (dh, dw) offsets: offset (+1, 0, 0) gives
  # 44 + 21 + 3 = 68, and so does (0, +2, -3): 33 + 35 + 0.
  d = lambda z, y, x: z * 16 + y * 4 + x  # noqa: E731  (token id of voxel (z, y, x))
  assert index[d(1, 0, 0), d(0, 0, 0)] == index[d(0, 2, 0), d(0, 0, 3)] == 68
  with pytest.raises(ValueError, match="nnFormer windows are 3D"):
    window_ops.nnformer_relative_position_index((4, 4))


def test_3d_shift_mask_separates_the_wrapped_regions():
  mask = window_ops.shift_mask(4, 4, 4, (2, 2, 2), (1, 1, 1))
  assert mask.shape == (8, 8, 8)
  np.testing.assert_array_equal(mask[0], 0.0)        # window (0, 0, 0): one region
  # The far corner window: each axis holds positions 2 and 3, which are different regions
  # (slices [-2, -1) and [-1, 4)), so its 8 voxels are 8 regions.
  np.testing.assert_array_equal(mask[7], window_ops.MASK_FILL * (1 - np.eye(8)))
  # Window (0, 0, 1): only the w position splits it; tokens t = 4 d + 2 h + w.
  same_w = np.array([[(i % 2) == (j % 2) for j in range(8)] for i in range(8)])
  np.testing.assert_array_equal(mask[1], np.where(same_w, 0.0, window_ops.MASK_FILL))
  # The 2D mask is the rank-2 case: a depth-1 grid and window repeat it.
  np.testing.assert_array_equal(window_ops.shift_mask(1, 8, 8, (1, 4, 4), (0, 2, 2)),
                                window_ops.shift_mask(8, 8, (4, 4), (2, 2)))


def test_3d_block_geometry_shifts_odd_blocks_and_makes_small_stages_global():
  # nnFormer Synapse: windows (4, 4, 8, 4) over stages of 32^3, 16^3, 8^3, 4^3.
  assert window_ops.block_geometry((32, 32, 32), 4, 1) == ((4, 4, 4), (2, 2, 2))
  assert window_ops.block_geometry((8, 8, 8), 8, 1) == ((8, 8, 8), (0, 0, 0))   # GV-MSA
  assert window_ops.block_geometry((4, 4, 4), 4, 0) == ((4, 4, 4), (0, 0, 0))
  assert window_ops.block_geometry((14, 40, 40), (3, 5, 5), 1) == ((3, 5, 5), (1, 2, 2))


def test_3d_window_attention_has_a_prod_2w_minus_1_table_read_by_the_chosen_index():
  from swin_jax.models import attention  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 64, 8)), jnp.float32)
  for kind in ("swin", "nnformer"):
    module = attention.WindowAttention(8, 2, (4, 4, 4), position_index=kind)
    params = module.init(jax.random.key(0), x, None, 2, False)["params"]
    table = params["relative_position_bias_table"]
    assert table.shape == (7 * 7 * 7, 2)
    index = attention.POSITION_INDEXES[kind]((4, 4, 4))
    bias = attention.gather_relative_bias(table, (4, 4, 4), kind)
    np.testing.assert_array_equal(np.asarray(bias), np.asarray(table)[index].transpose(2, 0, 1))
    assert module.apply({"params": params}, x, None, 2, False).shape == x.shape
