"""nnU-Net's sliding-window inference and Dice + CE loss, checked against their definitions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.tasks import nnunet_loss
from swin_jax.tasks import volume_inference as vi


def test_window_starts_follow_nnunets_step_rule():
  # n = ceil((size - patch) / (patch * step)) + 1 windows spread evenly, rounded.
  assert vi.window_starts(100, 64) == [0, 18, 36]          # ceil(36 / 32) + 1 = 3
  assert vi.window_starts(64, 64) == [0]
  assert vi.window_starts(65, 64) == [0, 1]
  assert vi.window_starts(129, 64) == [0, 22, 43, 65]      # ceil(65 / 32) + 1 = 4: 21.67 i
  assert vi.window_starts(200, 64, step_size=1.0) == [0, 45, 91, 136]
  with pytest.raises(ValueError, match="smaller than the patch"):
    vi.window_starts(10, 16)


def test_padding_splits_the_difference_as_pad_nd_image():
  assert vi.padding_to_patch((10, 20, 30), (16, 16, 16)) == ((3, 3), (0, 0), (0, 0))
  assert vi.padding_to_patch((5, 20, 1), (8, 16, 4)) == ((1, 2), (0, 0), (1, 2))


def test_gaussian_is_nnunets_importance_map():
  patch = (8, 16, 12)
  g = vi.gaussian_importance(patch)
  assert g.shape == patch and g.dtype == np.float32
  assert g[4, 8, 6] == 1.0 == g.max() and g.min() > 0
  # The separable Gaussian of sigma = patch / 8 around patch // 2 (scipy's truncation at
  # 4 sigma cuts nothing inside these patches), relative to its centre.
  grids = np.meshgrid(*(np.arange(p, dtype=np.float64) for p in patch), indexing="ij")
  expected = np.exp(-sum((x - p // 2)**2 / (2 * (p / 8)**2) for x, p in zip(grids, patch)))
  np.testing.assert_allclose(g, expected, rtol=2e-3, atol=1e-6)


def test_window_plan_covers_every_voxel_of_every_volume():
  shapes, patch = [(20, 40, 33), (6, 16, 16)], (8, 16, 16)
  plan = vi.window_plan(shapes, patch)
  for index, shape in enumerate(shapes):
    padded = tuple(s + sum(p) for s, p in zip(shape, vi.padding_to_patch(shape, patch)))
    covered = np.zeros(padded, bool)
    for _, start in (entry for entry in plan if entry[0] == index):
      covered[tuple(slice(s, s + p) for s, p in zip(start, patch))] = True
    assert covered.all()


def _label_reader(volume: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  """A 'model' whose logits say each voxel's class is its input value (channel 0)."""
  return 10.0 * jax.nn.one_hot(jnp.round(volume[..., 0]).astype(jnp.int32), num_classes)


def test_stitching_padding_and_mirroring_give_back_each_voxels_own_class():
  """With a voxel-wise model every window agrees, so the stitched prediction is the labels
  exactly: mirrored windows flipped back, windows added at their starts, padding cropped."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, size=(13, 30, 21))   # depth below the patch: padded
  volume = labels[..., None].astype(np.float32)
  patch = (16, 16, 16)
  probs = jax.jit(lambda x: vi.mirrored_probabilities(lambda v: _label_reader(v, 4), x))
  predicted = vi.predict_volume(probs, volume, patch, num_classes=4, batch_size=3)
  np.testing.assert_array_equal(predicted, labels)


def test_mirrored_probabilities_average_the_softmax_of_each_flip():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 6, 5, 1)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(2).normal(size=(1, 3)), jnp.float32)

  def shifted_model(v):   # not flip-equivariant: each voxel also sees its +1 neighbour
    return (v + jnp.roll(v, 1, axis=2)) @ kernel

  out = vi.mirrored_probabilities(shifted_model, x, (1,))
  plain = jax.nn.softmax(shifted_model(x), -1)
  flipped = jnp.flip(jax.nn.softmax(shifted_model(jnp.flip(x, 2)), -1), 2)
  np.testing.assert_allclose(out, (plain + flipped) / 2, rtol=1e-6)
  np.testing.assert_allclose(vi.mirrored_probabilities(shifted_model, x, ()), plain, rtol=1e-6)


def _nnunet_dice_ce(logits: np.ndarray, labels: np.ndarray) -> float:
  """DC_and_CE_loss(batch_dice=True, smooth=1e-5, do_bg=False) written out in float64."""
  z = logits - logits.max(-1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  y = np.eye(logits.shape[-1])[labels]
  axes = tuple(range(logits.ndim - 1))
  tp, fp, fn = (p * y).sum(axes), (p * (1 - y)).sum(axes), ((1 - p) * y).sum(axes)
  dc = (2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5 + 1e-8)
  ce = -np.mean(np.log(np.take_along_axis(p, labels[..., None], -1)))
  return ce - dc[1:].mean()


def test_dice_ce_and_deep_supervision_weights_are_nnunets():
  rng = np.random.default_rng(3)
  logits = [rng.normal(size=(2, 8 // 2**i, 8 // 2**i, 8 // 2**i, 4)) for i in range(3)]
  labels = [rng.integers(0, 4, size=l.shape[:-1]) for l in logits]
  weights = nnunet_loss.deep_supervision_weights(3)
  np.testing.assert_allclose(weights, [4 / 7, 2 / 7, 1 / 7])
  loss, _ = nnunet_loss.deep_supervision_loss(
      [jnp.asarray(l, jnp.float32) for l in logits], [jnp.asarray(y) for y in labels], weights)
  expected = sum(w * _nnunet_dice_ce(l, y) for w, l, y in zip(weights, logits, labels))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert math.isclose(sum(nnunet_loss.deep_supervision_weights(5)), 1.0)
