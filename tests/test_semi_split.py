"""Soft Teacher's partially labelled splits against the official procedure
(``tools/dataset/semi_coco.py``: ``np.random.seed(fold)``, then ``np.random.choice``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swin_jax.data import semi_split


def official_positions(num_images, fold, percent):
  """The official draw, on NumPy's global generator (its state restored afterwards)."""
  state = np.random.get_state()
  try:
    np.random.seed(fold)
    chosen = np.random.choice(range(num_images), size=int(percent / 100.0 * num_images),
                              replace=False)
  finally:
    np.random.set_state(state)
  return np.sort(chosen)


@pytest.mark.parametrize("percent", [1, 5, 10])
@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5])
def test_positions_are_the_official_draw(fold, percent):
  for num_images in (1234, 118287):                   # 118287: COCO train2017
    positions = semi_split.labelled_positions(num_images, fold, percent)
    expected = official_positions(num_images, fold, percent)
    assert len(positions) == int(percent / 100.0 * num_images)
    np.testing.assert_array_equal(positions, expected)
    assert positions.dtype == np.int64 and (np.diff(positions) > 0).all()


def test_positions_leave_the_global_generator_alone():
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  semi_split.labelled_positions(500, 2, 10)
  np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_positions_edges_and_errors():
  assert semi_split.labelled_positions(50, 1, 100).tolist() == list(range(50))
  assert len(semi_split.labelled_positions(50, 1, 1)) == 0        # int(0.5) images
  np.testing.assert_array_equal(semi_split.labelled_positions(1000, 3, 0.5),
                                official_positions(1000, 3, 0.5))
  for percent in (0, -5, 100.5):
    with pytest.raises(ValueError, match=r"percent must be in \(0, 100\]"):
      semi_split.labelled_positions(100, 1, percent)
  with pytest.raises(ValueError, match="num_images"):
    semi_split.labelled_positions(-1, 1, 10)


def test_coco_json_split(tmp_path):
  rng = np.random.default_rng(0)
  ids = rng.choice(10 ** 6, size=300, replace=False)           # not sorted, not 0..N-1
  images = [{"id": int(i), "file_name": f"{i:012d}.jpg", "height": 10, "width": 10}
            for i in ids]
  annotations = [{"id": k, "image_id": int(ids[k % 300]), "bbox": [0, 0, 1, 1],
                  "category_id": 1} for k in range(500)]
  path = tmp_path / "instances_train.json"
  path.write_text(json.dumps({"images": images, "annotations": annotations,
                              "categories": [{"id": 1, "name": "a"}]}))
  for fold, percent in ((1, 10), (4, 5), (2, 33.3)):
    labelled, unlabelled = semi_split.coco_partial_split(str(path), fold, percent)
    chosen = set(official_positions(300, fold, percent).tolist())
    assert labelled.tolist() == [int(i) for k, i in enumerate(ids) if k in chosen]
    assert unlabelled.tolist() == [int(i) for k, i in enumerate(ids) if k not in chosen]
    assert len(labelled) == int(percent / 100.0 * 300)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    semi_split.coco_partial_split(str(tmp_path / "missing.json"), 1, 10)
  with pytest.raises(ValueError, match="percent"):
    semi_split.coco_partial_split(str(path), 1, 0)
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"annotations": []}))
  with pytest.raises(ValueError, match="images"):
    semi_split.coco_partial_split(str(bad), 1, 10)
