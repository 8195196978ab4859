"""predict: class names for 1K/22K heads, top-k, and loading weights from each source."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from swin_jax import predict
from swin_jax.convert import params_dir
from swin_jax.convert.torch_checkpoint import export_torch_state_dict, init_params
from swin_jax.data import class_names, images
from swin_jax.models import registry

TINY = dict(img_size=32, embed_dim=8, depths=(2, 2), num_heads=(1, 1), window_size=4,
            num_classes=1000)


def test_imagenet_1k_names_follow_the_standard_class_order():
  names = class_names.class_names(1000)
  assert len(names) == 1000
  assert names[0].startswith("tench") and names[281].startswith("tabby")


def test_22k_names_cover_every_head_row_and_other_heads_are_numbered():
  assert len(class_names.class_names(21841)) == 21841
  assert class_names.class_names(3) == ["class 0", "class 1", "class 2"]


def test_top_classes_are_sorted_probabilities_with_names():
  logits = np.full(1000, -5.0, np.float32)
  logits[281], logits[285] = 4.0, 3.0
  top = predict.top_classes(logits, 3)
  assert [index for index, _, _ in top][:2] == [281, 285]
  assert top[0][1].startswith("tabby") and top[1][1].startswith("Egyptian cat")
  expected = np.exp(4.0) / (np.exp(4.0) + np.exp(3.0) + 998 * np.exp(-5.0))
  assert top[0][2] == pytest.approx(expected, rel=1e-5)


def test_weights_load_from_a_converted_dir_and_a_state_dict_file(tmp_path):
  model = registry.create_model("swin_t", **TINY)
  params = init_params(model, seed=3)
  params_dir.save_params_dir(str(tmp_path / "converted"), params, "swin_t", TINY)
  _, loaded, source = predict.load_model_and_params("ignored", str(tmp_path / "converted"))
  assert source.endswith("converted")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.savez(tmp_path / "weights.npz", **export_torch_state_dict(params, model))
  _, from_file, _ = predict.load_model_and_params("swin_t", str(tmp_path / "weights.npz"),
                                                  **TINY)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(from_file)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bundled_image_goes_through_the_official_eval_transform():
  pixels = images.eval_transform(images.load_image("chelsea"), 224)
  assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
  assert abs(float(pixels.mean())) < 2.0
  with pytest.raises(FileNotFoundError, match="no_such.jpg"):
    images.load_image("no_such.jpg")
