"""mmseg's test-time inference on static canvases (``swin_jax.tasks.seg_inference``) and the
segmentation task's mmseg eval (buckets of canvases, one program per bucket).

The oracle is mmsegmentation 1.2.2's real ``EncoderDecoder`` (``predict``: ``inference`` in
whole or slide mode, then ``postprocess_result``: padding removed, flipped back, resized to
``ori_shape``) around a deterministic stand-in model that the JAX side mirrors: a registered
backbone ``avg_pool(4) + the image mean`` (the mean makes every logit depend on what the
model sees, so a window or canvas padding that leaks in changes the result) and mmseg's own
``FCNHead`` with no convs (its 1x1 ``conv_seg``).
"""

from __future__ import annotations

import functools
import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swin_jax import tasks
from swin_jax.data import mmseg_transforms as mt
from swin_jax.data import sources
from swin_jax.models import interpolate
from swin_jax.tasks import seg_inference as si
from swin_jax.tasks import segmentation
from swin_jax.train import config as config_lib

K = 5
CROP, STRIDE = (16, 16), (10, 10)
IGNORE = 255


@pytest.fixture(scope="module")
def mmseg_model():
  """``(EncoderDecoder, conv_seg weight (K, 3), bias (K,))``, eval mode."""
  torch = pytest.importorskip("torch")
  import mm_stubs  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  from mmengine.config import ConfigDict  # pylint: disable=import-outside-toplevel
  from mmengine.model import BaseModule  # pylint: disable=import-outside-toplevel
  from mmengine.registry import DefaultScope  # pylint: disable=import-outside-toplevel
  from mmseg.models.segmentors import EncoderDecoder  # pylint: disable=import-outside-toplevel
  from mmseg.registry import MODELS  # pylint: disable=import-outside-toplevel

  @MODELS.register_module(name="SegInferencePoolContext", force=True)
  class PoolContext(BaseModule):  # pylint: disable=unused-variable
    def forward(self, x):
      return [torch.nn.functional.avg_pool2d(x, 4) + x.mean((2, 3), keepdim=True)]

  torch.manual_seed(0)
  # mmseg's scope whatever an earlier test (mmdet's detectors) left as the default.
  with DefaultScope.overwrite_default_scope("mmseg"):
    model = EncoderDecoder(
        backbone=dict(type="SegInferencePoolContext"),
        decode_head=dict(type="FCNHead", in_channels=3, channels=3, num_convs=0,
                         concat_input=False, num_classes=K, dropout_ratio=0.0, norm_cfg=None,
                         align_corners=False),
        test_cfg=ConfigDict(mode="whole"))
  model.eval()
  conv = model.decode_head.conv_seg
  return model, conv.weight.detach().numpy()[:, :, 0, 0], conv.bias.detach().numpy()


def mirror(weight, bias):
  """The stand-in model in JAX: ``(B, h, w, 3) -> (B, h/4, w/4, K)``."""

  def apply_fn(x):
    b, h, w, c = x.shape
    pooled = x.reshape(b, h // 4, 4, w // 4, 4, c).mean((2, 4)) + x.mean((1, 2), keepdims=True)
    return jnp.einsum("bhwc,kc->bhwk", pooled, weight) + bias

  return apply_fn


def mmseg_logits(mmseg_model, image, ori, mode="whole", canvas=None, flip=False):
  """mmseg's ``predict`` seg_logits ``(H, W, K)`` for one normalised ``(h, w, 3)`` image:
  unpadded, or (``canvas``) flipped-then-padded at the bottom/right as mmseg 1.2.2's data
  preprocessor pads a test batch, with ``padding_size`` in the meta."""
  import torch  # pylint: disable=import-outside-toplevel
  from mmengine.config import ConfigDict  # pylint: disable=import-outside-toplevel
  from mmseg.structures import SegDataSample  # pylint: disable=import-outside-toplevel
  model = mmseg_model[0]
  model.test_cfg = ConfigDict(mode=mode, crop_size=CROP, stride=STRIDE)
  h, w = image.shape[:2]
  canvas = canvas or (h, w)
  x = np.zeros(canvas + (3,), np.float32)
  x[:h, :w] = image[:, ::-1] if flip else image
  meta = dict(ori_shape=tuple(ori), img_shape=(h, w), pad_shape=canvas,
              padding_size=[0, canvas[1] - w, 0, canvas[0] - h], flip=flip,
              flip_direction="horizontal")
  with torch.no_grad():
    out = model.predict(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()),
                        [SegDataSample(metainfo=meta)])
  return out[0].seg_logits.data.numpy().transpose(1, 2, 0)


def on_canvas(images, canvas):
  batch = np.zeros((len(images),) + tuple(canvas) + (3,), np.float32)
  for i, image in enumerate(images):
    batch[i, :image.shape[0], :image.shape[1]] = image
  return batch, np.array([im.shape[:2] for im in images], np.int32)


def test_whole_inference_is_mmseg_with_padding_removed_and_resized_back(mmseg_model):
  """Two images of different sizes on one 48 x 64 canvas, resized back to original sizes
  smaller and larger than the image; with and without the horizontal flip."""
  rng = np.random.default_rng(0)
  images = [rng.normal(size=(38, 52, 3)).astype(np.float32),
            rng.normal(size=(48, 40, 3)).astype(np.float32)]
  oris = np.array([(29, 41), (60, 50)], np.int32)
  batch, valid = on_canvas(images, (48, 64))
  apply_fn = mirror(*mmseg_model[1:])
  for flip in (False, True):
    flips = jnp.array([flip, flip])
    inputs = si.flip_valid(batch, valid[:, 1]) if flip else batch
    ours = np.asarray(jax.jit(lambda x, v, o, f=flips: si.whole_inference(
        apply_fn, x, v, o, (64, 56), f))(inputs, valid, oris))
    for i, (image, ori) in enumerate(zip(images, oris)):
      ref = mmseg_logits(mmseg_model, image, ori, canvas=(48, 64), flip=flip)
      np.testing.assert_allclose(ours[i, :ori[0], :ori[1]], ref, atol=2e-6)
      assert not ours[i, ori[0]:].any() and not ours[i, :, ori[1]:].any()
  # Not vacuous: without the padding removed (resizing the whole canvas) it differs.
  uncropped = np.asarray(si.whole_inference(apply_fn, batch, np.array([(48, 64)] * 2),
                                            oris, (64, 56)))
  assert np.abs(uncropped[0, :29, :41] - ours[0, :29, :41]).max() > 1e-2


def test_slide_inference_is_mmseg_slide_on_the_unpadded_image(mmseg_model):
  """16 x 16 windows every 10 pixels: a 38 x 52 image (4 x 5 windows, the last row and
  column shifted back to the edge, overlapping) and a 48 x 40 one share a 48 x 64 canvas
  whose own grid is 5 x 6 windows; the padding never reaches a window, so the result is
  mmseg's on the unpadded image. A 12 x 52 image filling its canvas's height, smaller than
  the crop, runs 12-row windows as mmseg does."""
  rng = np.random.default_rng(1)
  apply_fn = mirror(*mmseg_model[1:])
  cases = [([rng.normal(size=(38, 52, 3)), rng.normal(size=(48, 40, 3))], (48, 64),
            [(29, 41), (60, 50)]),
           ([rng.normal(size=(12, 52, 3))], (12, 64), [(20, 70)])]
  assert si.window_grid(48, 16, 10) == (16, 5) and si.window_grid(12, 16, 10) == (12, 1)
  starts, active = si.window_starts(jnp.array([38, 48]), 16, 10, 5)
  np.testing.assert_array_equal(starts, [[0, 10, 20, 22, 22], [0, 10, 20, 30, 32]])
  np.testing.assert_array_equal(active, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
  for images, canvas, oris in cases:
    images = [im.astype(np.float32) for im in images]
    batch, valid = on_canvas(images, canvas)
    oris = np.array(oris, np.int32)
    for flip in (False, True):
      flips = jnp.array([flip] * len(images))
      inputs = si.flip_valid(batch, valid[:, 1]) if flip else batch
      ours = np.asarray(jax.jit(lambda x, v, o, f=flips: si.slide_inference(
          apply_fn, x, v, o, (64, 72), CROP, STRIDE, f))(inputs, valid, oris))
      for i, (image, ori) in enumerate(zip(images, oris)):
        ref = mmseg_logits(mmseg_model, image, ori, "slide", flip=flip)
        np.testing.assert_allclose(ours[i, :ori[0], :ori[1]], ref, atol=2e-6)
  # Not vacuous: whole-image inference of the same image differs.
  whole = mmseg_logits(mmseg_model, images[0], oris[0])
  assert np.abs(whole - ours[0, :oris[0][0], :oris[0][1]]).max() > 1e-2


def test_multi_scale_flip_averages_softmax_like_the_official_aug_test(mmseg_model):
  """Ratios 0.5 / 1 / 1.5 of a (64, 16) test scale with flips, from a uint8 image through
  the eval transform and its bucket's canvases: the mean over the six passes of mmseg's
  softmax(seg_logits at the original size), flipped back; mmseg 1.2.2's SegTTAModel picks
  the same classes. The planted logits make that mean differ from averaging logits."""
  rng = np.random.default_rng(2)
  source = rng.integers(0, 256, size=(21, 30, 3), dtype=np.uint8)
  transform = mt.MMSegEvalTransform(scale=(64, 16), ratios=(0.5, 1.0, 1.5), canvas_multiple=4)
  out = transform({"image": source, "label": np.zeros((21, 30), np.uint8)})
  bucket = transform.eval_bucket((21, 30))
  example = transform.to_canvas(out, bucket)
  np.testing.assert_array_equal(out["image_sizes"], [(8, 11), (16, 23), (24, 34)])
  assert bucket.canvases == ((8, 12), (16, 24), (24, 36)) and bucket.label_canvas == (24, 32)

  model, weight, bias = mmseg_model
  apply_fn = mirror(weight * 20, bias)        # confident, scale-dependent logits
  with torch_weights(model, weight * 20):
    passes = [mmseg_logits(mmseg_model, image, (21, 30), canvas=canvas, flip=flip)
              for image, canvas in zip(out["images"], bucket.canvases)
              for flip in (False, True)]
  probs = [np.exp(p - p.max(-1, keepdims=True)) for p in passes]
  expected = np.mean([p / p.sum(-1, keepdims=True) for p in probs], axis=0)
  scores = jax.jit(lambda imgs, sizes, label_size: si.predict(
      apply_fn, imgs, sizes, label_size, bucket.label_canvas, flip=True))(
          tuple(im[None] for im in example["images"]), example["image_sizes"][None],
          example["label_size"][None])
  ours = np.exp(np.asarray(scores)[0, :21, :30])
  np.testing.assert_allclose(ours, expected, atol=1e-6)
  np.testing.assert_array_equal(ours.argmax(-1), tta_model_prediction(model, passes))
  mean_logits = np.mean(passes, axis=0)
  assert np.mean(ours.argmax(-1) != mean_logits.argmax(-1)) > 0.01


class torch_weights:  # pylint: disable=invalid-name
  """Temporarily sets the mmseg model's ``conv_seg`` weight."""

  def __init__(self, model, weight):
    import torch  # pylint: disable=import-outside-toplevel
    self.param = model.decode_head.conv_seg.weight
    self.saved = self.param.detach().clone()
    self.new = torch.from_numpy(np.asarray(weight, np.float32)[:, :, None, None].copy())

  def __enter__(self):
    self.param.data.copy_(self.new)

  def __exit__(self, *exc):
    self.param.data.copy_(self.saved)


def tta_model_prediction(model, passes):
  """mmseg 1.2.2 ``SegTTAModel(module=model).merge_preds`` on the passes' seg_logits
  ``(H, W, K)``: the predicted classes."""
  import torch  # pylint: disable=import-outside-toplevel
  from mmengine.structures import PixelData  # pylint: disable=import-outside-toplevel
  from mmseg.models.segmentors import SegTTAModel  # pylint: disable=import-outside-toplevel
  from mmseg.structures import SegDataSample  # pylint: disable=import-outside-toplevel
  samples = []
  for logits in passes:
    sample = SegDataSample(metainfo=dict(img_path="x"))
    sample.seg_logits = PixelData(data=torch.from_numpy(logits.transpose(2, 0, 1).copy()))
    samples.append(sample)
  merged = SegTTAModel(module=model).merge_preds([samples])
  return merged[0].pred_sem_seg.data.numpy().reshape(passes[0].shape[:2])


# --------------------------------------------------------------------------- canvases


def test_canvas_ladder_and_ade20k_buckets():
  """Sides: every multiple of 32 up to 256, then 4 per octave; ADE20K's test sizes (short
  side 512, and 512 r at each ms ratio) fill their canvas's short side exactly."""
  assert [mt.canvas_side(x) for x in (1, 32, 33, 250, 257, 511.9999999, 512, 513, 683, 1025,
                                      2048)] == [32, 32, 64, 256, 320, 512, 512, 640, 768,
                                                 1280, 2048]
  assert mt.canvas_side(683, 32, steps=0) == 704
  ms = mt.MMSegEvalTransform(ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
  for size in [(375, 500), (512, 683), (1536, 2048), (683, 512), (300, 1500), (600, 601)]:
    bucket = ms.eval_bucket(size)
    sizes = [mt.keep_ratio_rescale_size(size, s) for s in ms.scales]
    for (h, w), (ch, cw) in zip(sizes, bucket.canvases):
      assert h <= ch and w <= cw and ch % 32 == cw % 32 == 0
      short = min(size) / max(size) >= 0.25
      if short:   # the keep-ratio short side is 512 r: no padding
        assert min(h, w) == min(ch, cw)
    assert bucket.label_canvas == tuple(mt.canvas_side(s) for s in size)
  # Landscape 4:3 images of any source size share the image canvases.
  assert {ms.eval_bucket(s).canvases for s in [(375, 500), (480, 640), (768, 1024)]} == \
      {ms.eval_bucket((375, 500)).canvases}


def test_bucket_plan_groups_batches_by_bucket_on_every_host():
  buckets = ["b", "a", "b", "b", "a", "c"]
  plan = segmentation.bucket_plan(buckets, global_batch=2)
  assert plan == [(1, "a"), (4, "a"), (0, "b"), (2, "b"), (3, "b"), (-1, "b"), (5, "c"),
                  (-1, "c")]
  hosts = [segmentation.bucket_plan(buckets, 4, i, 2) for i in range(2)]
  assert hosts[0] == [(1, "a"), (4, "a"), (0, "b"), (2, "b"), (5, "c"), (-1, "c")]
  assert hosts[1] == [(-1, "a"), (-1, "a"), (3, "b"), (-1, "b"), (-1, "c"), (-1, "c")]


class PointwiseModel(nn.Module):
  """A 1x1 conv with fixed weights and no context: whole-image logits inside the valid
  region do not depend on the padding around it."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    weight = np.linspace(-1, 1, 3 * K, dtype=np.float32).reshape(3, K) * 4.0
    return jnp.einsum("bhwc,ck->bhwk", x, weight)


def mmseg_eval_config(**mmseg):
  config = config_lib.base_config("segmentation")
  config.dataset.num_classes = K
  config.dataset.image_size = 16
  config.task.pipeline = "mmseg"
  config.task.mmseg.update(dict(scale=(64, 16), **mmseg))
  return config


@pytest.mark.parametrize("test", [dict(test_mode="whole"),
                                  dict(test_mode="slide", tta_ratios=(0.5, 1.0), tta_flip=True)],
                         ids=["whole", "slide_ms_flip"])
def test_images_of_any_size_compile_once_per_bucket_and_padding_never_counts(test):
  """Nine source sizes fall into three buckets: the jitted eval step compiles three
  programs. Each bucket's batch holds a padding example (mask 0); label padding is 255.
  With a context-free model the confusion matrix equals that of each image evaluated alone,
  without any padding, in numpy (for such a model slide windows and flips change nothing,
  and the multi-scale test is the mean over scales of the softmax)."""
  rng = np.random.default_rng(3)
  task = tasks.get_task(mmseg_eval_config(canvas_multiple=8, **test))
  transform = task.eval_transform()
  sizes = [(12, 16), (12, 15), (11, 16), (16, 12), (15, 12), (16, 11), (8, 30), (8, 31),
           (8, 29)]
  examples = []
  for h, w in sizes:
    label = rng.integers(0, K + 1, size=(h, w)).astype(np.uint8)
    label[label == K] = IGNORE
    examples.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                     "label": label})
  buckets = [transform.eval_bucket(s) for s in sizes]
  assert len(set(buckets)) == 3
  eval_step = jax.jit(functools.partial(task.eval_step, PointwiseModel()))
  total = np.zeros((K, K))
  for bucket in sorted(set(buckets)):
    members = [e for e, b in zip(examples, buckets) if b == bucket]
    items = [{**transform.to_canvas(transform(e), bucket), "mask": np.float32(1)}
             for e in members] + [{**transform.padding(bucket), "mask": np.float32(0)}]
    batch = jax.tree.map(lambda *x: np.stack(x), *items)
    assert (batch["label"][:len(members)] == IGNORE).sum() > sum(
        (e["label"] == IGNORE).sum() for e in members)     # label canvases are padded
    total += jax.device_get(eval_step({}, {}, batch))["confusion"]
  assert eval_step._cache_size() == 3
  assert total.sum() == sum((e["label"] != IGNORE).sum() for e in examples)

  # Each image alone, in numpy: its logits resized (PyTorch's bilinear) to the label.
  alone = np.zeros((K, K))
  weight = np.linspace(-1, 1, 3 * K, dtype=np.float32).reshape(3, K) * 4.0
  for example in examples:
    out = transform(example)
    (lh, lw), scores = out["label_full"].shape, 0.0
    for image in out["images"]:
      (h, w), logits = image.shape[:2], np.einsum("hwc,ck->hwk", image, weight)
      logits = np.einsum("ih,jw,hwk->ijk", interpolate.bilinear_matrix(h, lh),
                         interpolate.bilinear_matrix(w, lw), logits)
      scores += np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    keep = out["label_full"] != IGNORE
    np.add.at(alone, (out["label_full"][keep], scores.argmax(-1)[keep]), 1)
  np.testing.assert_array_equal(total, alone)


def test_test_config_errors_and_defaults():
  task = tasks.get_task(mmseg_eval_config())
  assert task.test_cfg() == dict(mode="whole", crop=(16, 16), stride=(10, 10), flip=False)
  slide = tasks.get_task(mmseg_eval_config(test_mode="slide", test_crop=(8, 12),
                                           tta_flip=True))
  assert slide.test_cfg() == dict(mode="slide", crop=(8, 12), stride=(5, 8), flip=True)
  # Caught when training starts (train_transform), not at the first eval.
  with pytest.raises(ValueError, match=r"task.mmseg.test_mode 'tiles' is not one of"):
    tasks.get_task(mmseg_eval_config(test_mode="tiles")).train_transform()
  with pytest.raises(ValueError, match=r"task.mmseg: ratios \(0.0,\)"):
    tasks.get_task(mmseg_eval_config(tta_ratios=(0.0,))).train_transform()
  transform = tasks.get_task(mmseg_eval_config(test_scale=(32, 8), tta_ratios=(0.5, 1.0)))
  assert transform.eval_transform().scales == ((16, 4), (32, 8))


# ----------------------------------------------------------------- the wired task, end to end

TINY_UPERNET = dict(img_size=32, patch_size=2, embed_dim=8, depths=(1, 1, 1),
                    num_heads=(1, 1, 1), window_size=4, channels=8, aux_channels=4,
                    pool_scales=(1, 2), drop_path_rate=0.0)


def test_tiny_upernet_evaluates_fake_ade20k_of_varying_sizes_through_the_loop(tmp_path,
                                                                               capsys):
  """The ADE20K recipe (whole mode, 150 classes, reduce_zero_label) with a tiny UperNet, a
  (128, 32) test scale and fake scene_parse150 images of 20..32 pixels: ``loop.evaluate``
  prints one compile per bucket, and the confusion matrix counts exactly the source label
  pixels that are not ignored."""
  import data_fakes  # pylint: disable=import-outside-toplevel
  from configs.upernet import common  # pylint: disable=import-outside-toplevel
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel
  from swin_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  data_dir = str(tmp_path / "tfds")
  data_fakes.build_fake_scene_parse150(data_dir, num_examples=2, eval_examples=5,
                                       sizes=(20, 32), seed=1)
  config = common.ade20k_160k("upernet_swin_tiny_patch4_window7_512")
  config.model.overrides.update(TINY_UPERNET)
  config.dataset.update(dict(data_dir=data_dir, image_size=32, read_threads=1))
  config.task.mmseg.update(dict(crop_size=32, scale=(128, 32)))
  config.batch_size = config.eval_batch_size = 2
  config.mesh_shape = (1, 1)
  config_lib.validate_config(config)
  assert config.task.mmseg.test_mode == "whole" and not config.task.mmseg.tta_ratios

  task = tasks.get_task(config)
  transform = task.eval_transform()
  sizes = segmentation.source_image_sizes(config.dataset, "test", "image")
  buckets = {transform.eval_bucket(s) for s in sizes}
  assert 1 < len(buckets) < len(set(sizes))
  model = task.build_model()
  params, model_state = tasks.base.split_variables(
      jax.jit(lambda rng: task.init_variables(model, rng))(jax.random.PRNGKey(0)))
  state = types.SimpleNamespace(params=params, model_state=model_state)
  eval_fn = jax.jit(functools.partial(step_lib.eval_step, task=task, model=model))
  evaluators = []
  new_evaluator = task.evaluator
  task.evaluator = lambda: evaluators.append(new_evaluator()) or evaluators[-1]

  capsys.readouterr()
  metrics = loop.evaluate(task, eval_fn, state, config, loop.build_mesh(config))
  printed = capsys.readouterr().out
  assert re.search(rf"^eval compiles: {len(buckets)}$", printed, re.M), printed
  labels = [np.asarray(x["annotation"])[..., 0]     # at their source size
            for x in sources.open_source(config.dataset, "test")]
  assert [lab.shape for lab in labels] == sizes
  counted = sum((segmentation.reduce_zero_label(lab) != IGNORE).sum() for lab in labels)
  assert evaluators[0].confusion.sum() == counted
  for key in ("eval/miou", "eval/macc", "eval/aacc"):
    assert 0.0 <= metrics[key] <= 1.0
  # A second pass compiles nothing.
  loop.evaluate(task, eval_fn, state, config, loop.build_mesh(config))
  assert "eval compiles" not in capsys.readouterr().out
