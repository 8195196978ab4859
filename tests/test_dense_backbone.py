"""The dense backbone mode: Swin run as the official segmentation / detection backbone.

``dense_mode=True`` pads each block's input to the window *before* the cyclic shift, builds
the -100 mask on the padded grid and never clamps the window; the classifier (timm's order)
shifts first, pads after, and clamps. Checked here:

* both modes give the same features where no map needs padding and no window is clamped
  (448 with a classifier built for 448), and differ at 512 (every stage pads);
* at 224 the first three stages agree but the last differs: its 7x7 map equals the window,
  so the classifier clamps the shift to 0 while the dense backbone still shifts and masks;
* the dense mode matches mmdet 3.3.0's ``SwinTransformer`` (an independent implementation
  of the official dense backbone) loaded through mmdet's official-key converter, within
  1e-4 in float32 on all four stage outputs, at 512x512 and at a non-square size whose maps
  are odd (PatchMerging pads) and no multiple of the window.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax

from swin_jax.convert import export_torch_state_dict
from swin_jax.models.swin import SwinTransformer

from random_variables import random_variables

ATOL = 1e-4
# A tiny Swin with the official window: every stage pads at 512 (128, 64, 32, 16 tokens).
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7,
            num_classes=0, feature_norm=True, drop_path_rate=0.0)

_FEATURES: dict = {}


def features(model: SwinTransformer, variables, images) -> list[np.ndarray]:
  """Eval-mode normalised stage outputs; one jitted function per model."""
  if model not in _FEATURES:
    _FEATURES[model] = jax.jit(lambda v, x: model.apply(v, x, method=model.features))
  return [np.asarray(f) for f in _FEATURES[model](variables, images)]


def random_images(height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((1, height, width, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_variables():
  """Seeded random params of ``TINY`` (both modes share every param)."""
  model = SwinTransformer(**TINY, img_size=224)
  return random_variables(model, jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32), seed=1)


def max_diffs(a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
  assert [x.shape for x in a] == [y.shape for y in b]
  return [float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b)]


def test_dense_mode_never_clamps_the_window_nor_drops_the_shift():
  classifier = SwinTransformer(**TINY, img_size=224)
  dense = SwinTransformer(**TINY, img_size=224, dense_mode=True)
  # Stage 3 is 7x7 at 224: the classifier clamps (one window, no shift).
  assert classifier.block_geometry(3, 1) == ((7, 7), (0, 0))
  assert dense.block_geometry(3, 1) == ((7, 7), (3, 3))
  small = SwinTransformer(**TINY, img_size=64)  # stage 3 is 2x2
  assert small.block_geometry(3, 1) == ((2, 2), (0, 0))
  assert small.clone(dense_mode=True).block_geometry(3, 1) == ((7, 7), (3, 3))


def test_dense_and_classifier_modes_agree_where_nothing_is_padded_or_clamped(tiny_variables):
  images = random_images(448, 448)  # maps 112, 56, 28, 14: window multiples, none clamped
  classifier = SwinTransformer(**TINY, img_size=448)
  dense = SwinTransformer(**TINY, img_size=448, dense_mode=True)
  diffs = max_diffs(features(classifier, tiny_variables, images),
                    features(dense, tiny_variables, images))
  assert max(diffs) <= 1e-5, diffs


def test_at_224_the_modes_differ_only_in_the_last_stage_which_the_classifier_clamps(
    tiny_variables):
  images = random_images(224, 224)
  classifier = SwinTransformer(**TINY, img_size=224)
  dense = SwinTransformer(**TINY, img_size=224, dense_mode=True)
  diffs = max_diffs(features(classifier, tiny_variables, images),
                    features(dense, tiny_variables, images))
  assert max(diffs[:3]) <= 1e-5, diffs
  assert diffs[3] > 1e-2, diffs


def test_dense_and_classifier_modes_differ_at_512(tiny_variables):
  images = random_images(512, 512)
  classifier = SwinTransformer(**TINY, img_size=512)
  dense = SwinTransformer(**TINY, img_size=512, dense_mode=True)
  diffs = max_diffs(features(classifier, tiny_variables, images),
                    features(dense, tiny_variables, images))
  assert min(diffs) > 1e-3, diffs


@pytest.mark.parametrize("size", [(512, 512), (360, 488)], ids=["512x512", "360x488"])
def test_dense_mode_matches_mmdet_swin(tiny_variables, size):
  """(360, 488): maps 90x122, 45x61, 23x31, 12x16 (odd maps merge with padding)."""
  pytest.importorskip("torch")
  pytest.importorskip("mmdet")
  import mm_oracle  # pylint: disable=import-outside-toplevel
  dense = SwinTransformer(**TINY, img_size=512, dense_mode=True)
  sd = export_torch_state_dict(tiny_variables["params"], dense, include_buffers=True)
  reference = mm_oracle.mmdet_backbone(dense, sd)
  images = random_images(*size, seed=2)
  ours = features(dense, tiny_variables, images)
  diffs = max_diffs(ours, mm_oracle.backbone_features(reference, images))
  assert [f.shape[1:3] for f in ours] == [(-(-size[0] // s), -(-size[1] // s))
                                          for s in (4, 8, 16, 32)]
  assert max(diffs) <= ATOL, diffs
