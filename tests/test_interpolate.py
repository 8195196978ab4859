"""Bilinear resize and adaptive average pooling as static matrices, against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from swin_jax.models import interpolate


def test_adaptive_pool_bins_overlap_exactly_like_pytorch():
  # 16 -> 3: [0, 6), [5, 11), [10, 16); each row averages its bin.
  m = interpolate.adaptive_pool_matrix(16, 3)
  assert [tuple(np.flatnonzero(row)[[0, -1]]) for row in m] == [(0, 5), (5, 10), (10, 15)]
  np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)
  # 16 -> 6: bins of 3 or 4, overlapping where 16 / 6 is not an integer.
  m6 = interpolate.adaptive_pool_matrix(16, 6)
  assert [int(np.count_nonzero(row)) for row in m6] == [3, 4, 3, 3, 4, 3]


@pytest.mark.parametrize("in_size,out_size", [(16, 1), (16, 2), (16, 3), (16, 6), (23, 6),
                                              (12, 6), (4, 6)])
def test_adaptive_avg_pool_matches_torch(in_size, out_size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).standard_normal((2, in_size, in_size + 3, 5)).astype(np.float32)
  ours = np.asarray(interpolate.adaptive_avg_pool(x, (out_size, out_size + 1)))
  ref = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), (out_size, out_size + 1))
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-6)


@pytest.mark.parametrize("in_hw,out_hw", [((1, 1), (16, 16)), ((2, 3), (16, 17)),
                                          ((6, 6), (16, 16)), ((12, 16), (23, 31)),
                                          ((32, 32), (128, 128)), ((128, 122), (512, 488)),
                                          ((16, 16), (7, 5))])
def test_resize_bilinear_matches_torch_interpolate(in_hw, out_hw):
  """Up and down (no antialias), integer and fractional scales, align_corners False."""
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).standard_normal((2, *in_hw, 3)).astype(np.float32)
  ours = np.asarray(interpolate.resize_bilinear(x, out_hw))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=out_hw,
                                        mode="bilinear", align_corners=False)
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_resize_to_the_same_size_is_the_identity():
  x = np.ones((1, 5, 7, 2), np.float32)
  assert interpolate.resize_bilinear(x, (5, 7)) is x
