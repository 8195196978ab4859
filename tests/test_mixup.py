"""Mixup / CutMix (timm 'batch' mode) as a pure, jittable function."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax.data import mixup

B, H, W, C, K = 4, 8, 10, 3, 5
LABELS = jnp.array([0, 1, 2, 4])


def images() -> jax.Array:
  return jax.random.normal(jax.random.key(0), (B, H, W, C))


def jitted(**kwargs):
  # One compile per setting keeps the tests fast (the Beta sampler is slow to compile).
  return _jitted(tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _jitted(items):
  return jax.jit(functools.partial(mixup.mixup_cutmix, **dict(items)))


def run(seed=0, **kwargs):
  kwargs = {"num_classes": K, "prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.0,
            "mixup_alpha": 0.0, "cutmix_alpha": 0.0, **kwargs}
  x = images()
  out, targets = jitted(**kwargs)(jax.random.key(seed), x, LABELS)
  return np.asarray(x), np.asarray(out), np.asarray(targets)


def lam_of(targets, smoothing=0.0):
  """Lambda from the first row: its own label holds lam (labels 0 and 4 differ)."""
  off = smoothing / K
  return (targets[0, 0] - off) / (1.0 - smoothing)


def test_label_smoothing_values_are_exact():
  targets = np.asarray(mixup.smoothed_one_hot(LABELS, K, 0.1))
  expected = np.full((B, K), 0.1 / K, np.float32)
  expected[np.arange(B), np.asarray(LABELS)] = 1 - 0.1 + 0.1 / K
  np.testing.assert_array_equal(targets, expected)


def test_disabled_returns_images_and_smoothed_one_hot():
  x, out, targets = run(label_smoothing=0.1)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(targets, np.asarray(mixup.smoothed_one_hot(LABELS, K, 0.1)))
  _, _, plain = run()
  np.testing.assert_array_equal(plain, np.eye(K, dtype=np.float32)[np.asarray(LABELS)])


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_targets_sum_to_one(mixup_alpha, cutmix_alpha):
  for seed in range(3):
    _, _, targets = run(seed, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                        label_smoothing=0.1)
    assert targets.shape == (B, K) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)


def test_mixup_blends_each_image_with_its_mirror():
  for seed in range(3):
    x, out, targets = run(seed, mixup_alpha=0.8, label_smoothing=0.1)
    lam = lam_of(targets, 0.1)
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    one_hot = np.asarray(mixup.smoothed_one_hot(LABELS, K, 0.1))
    np.testing.assert_allclose(targets, lam * one_hot + (1 - lam) * one_hot[::-1], atol=1e-6)


def test_cutmix_pastes_one_rectangle_and_lambda_is_the_area_left():
  pasted_some = False
  for seed in range(6):
    x, out, targets = run(seed, cutmix_alpha=1.0, label_smoothing=0.1)
    from_partner = (out == x[::-1]).all(-1) & (out != x).any(-1)   # (B, H, W)
    assert ((out == x) | (out == x[::-1])).all()                   # nothing blended
    box = from_partner[0]
    for b in range(B):  # one box for the whole batch
      np.testing.assert_array_equal(from_partner[b], box)
    area = box.sum()
    if area:
      pasted_some = True
      rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
      assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
      assert area == len(rows) * len(cols)
    np.testing.assert_allclose(lam_of(targets, 0.1), 1 - area / (H * W), rtol=1e-6)
  assert pasted_some


def test_cutmix_box_is_clipped_to_the_image():
  for seed in range(20):
    top, bottom, left, right = (int(v) for v in mixup.cutmix_box(
        jax.random.key(seed), H, W, jnp.float32(0.1)))
    assert 0 <= top <= bottom <= H and 0 <= left <= right <= W
    assert bottom - top <= int(H * np.sqrt(0.9)) and right - left <= int(W * np.sqrt(0.9))


def test_probability_zero_never_mixes():
  x, out, targets = run(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.0)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(targets, np.eye(K, dtype=np.float32)[np.asarray(LABELS)])


def test_switch_prob_picks_cutmix_or_mixup():
  kinds = set()
  for seed in range(12):
    x, out, _ = run(seed, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    kinds.add("cutmix" if ((out == x) | (out == x[::-1])).all() else "mixup")
  assert kinds == {"cutmix", "mixup"}
  for seed in range(4):  # switch_prob 1: always cutmix
    x, out, _ = run(seed, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=1.0)
    assert ((out == x) | (out == x[::-1])).all()


def test_jit_equals_eager():
  kwargs = dict(num_classes=K, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                label_smoothing=0.1)
  for seed in range(3):
    key = jax.random.key(seed)
    eager = mixup.mixup_cutmix(key, images(), LABELS, **kwargs)
    compiled = jitted(**kwargs)(key, images(), LABELS)
    for a, b in zip(eager, compiled):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
