"""Semantic segmentation on the task seam: Swin-Unet's loss and mmseg's (UperNet), one eval.

Batches are ``{'image': (B, S, S, 3) float32, 'label': (B, S, S) int32}`` (eval adds
``'mask': (B,)``); the model maps images to ``(B, S, S, K)`` logits. Label pixels equal to
``task.ignore_index`` (255) count in no loss and no metric. Two losses (``task.loss``):

* ``'ce_dice'`` (Swin-Unet's ``trainer.py``): ``ce_weight * CE + dice_weight * Dice`` where
  CE is the mean over the non-ignored pixels (``nn.CrossEntropyLoss``) and Dice is
  ``utils.DiceLoss(softmax=True)``: for each of the K classes, background included,
  ``1 - (2 sum(p t) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5)`` with the sums over the whole
  global batch and every non-ignored pixel, averaged over the classes.
* ``'ce_aux'`` (mmseg, UperNet): the model's ``head_logits`` gives ``(decode, aux)`` at
  their own strides (1/4 and 1/16); each is resized bilinearly (align_corners False) to the
  label size and scored by mmseg's ``CrossEntropyLoss(ignore_index=255)``, and the loss is
  ``CE(decode) + aux_weight * CE(aux)``. mmseg averages each CE over *all* label pixels,
  the ignored ones adding 0 (its ``avg_non_ignore=False`` default, as in the official
  mmseg 0.11 fork); ``task.avg_non_ignore=True`` divides by the non-ignored pixels instead.
  ``task.decode_dice_weight`` > 0 adds that weight times the Dice above on the decode
  logits (resized to the label), as an mmseg ``loss_decode`` list ``[CE, Dice]`` does.
  BatchNorm statistics update through ``model_state`` (SyncBN under ``jit``).
* ``'auto'`` (default): ``'ce_aux'`` for a model with an auxiliary head (a
  ``head_logits`` method: UperNet), ``'ce_dice'`` otherwise. The choice follows the model
  because the aux loss needs that head and Dice is Swin-Unet's own recipe.

Evaluation (``task.evaluation='pixels'``) runs the model's full-resolution logits, sums
a K x K confusion matrix over the whole eval set (ignored pixels left out) and reports
mmseg's ``eval/miou``, ``eval/macc`` and ``eval/aacc`` (per-class IoU and accuracy from the
dataset-wide sums, then the mean over classes; a class with no pixels in labels or
predictions has no IoU, one with no label pixels no accuracy: both left out, mmseg's
nanmean), ``eval/mean_dice`` (foreground classes 1..K-1), ``eval/dice/<class>``,
``eval/pixel_acc`` (= aAcc), ``eval/ce`` and ``eval/loss`` (the training loss with the whole
eval set as its batch: for ``'ce_aux'`` the decode CE alone, as the aux head does not run in
eval). ``'volumes'`` hands the eval outputs to
``swin_jax.tasks.medical_metrics.VolumeEvaluator`` (per-volume 3-D Dice/HD95, Synapse).

With ``task.pipeline='mmseg'`` the eval is mmseg's test instead of the square resize: each
image resized keeping its ratio to ``task.mmseg.test_scale`` (and each TTA ratio), padded
onto its bucket's static canvases (``MMSegEvalTransform.eval_bucket``), inferred whole or by
sliding windows (``seg_inference.predict``), and scored against its label at the source size
(255 outside it). ``eval_batches`` groups the eval set by bucket, so each bucket compiles
one program; the loop prints ``eval compiles: N``.

``task.reduce_zero_label`` is mmseg's ``LoadAnnotations(reduce_zero_label=True)`` (ADE20K):
label 0 becomes the ignore index and every other label ``k`` becomes ``k - 1``.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax.data import mmseg_transforms
from swin_jax.data import seg_transforms
from swin_jax.models import interpolate
from swin_jax.models import registry
from swin_jax.models import upernet
from swin_jax.tasks import base
from swin_jax.tasks import seg_inference

ConfigDict = ml_collections.ConfigDict

EVALUATIONS = ("pixels", "volumes")
LOSSES = ("auto", "ce_dice", "ce_aux")
PIPELINES = ("swin_unet", "mmseg")
DICE_SMOOTH = 1e-5   # utils.DiceLoss
IGNORE_INDEX = 255   # mmseg's ignore_index (and its seg pad value)


def soft_dice_sums(logits: jnp.ndarray, labels: jnp.ndarray,
                   weights: jnp.ndarray | None = None,
                   valid: jnp.ndarray | None = None) -> dict[str, jnp.ndarray]:
  """Per-class ``(K,)`` sums of ``p t``, ``p^2`` and ``t^2`` over the batch and pixels.

  ``logits`` ``(B, H, W, K)``, ``labels`` ``(B, H, W)``; ``weights`` ``(B,)`` masks
  examples, ``valid`` ``(B, H, W)`` pixels (e.g. not the ignore index).
  """
  num_classes = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  w = None
  if weights is not None:
    w = jnp.broadcast_to(weights.astype(jnp.float32)[:, None, None], labels.shape)
  if valid is not None:
    v = valid.astype(jnp.float32)
    w = v if w is None else w * v
  if w is not None:
    probs, targets = probs * w[..., None], targets * w[..., None]
  axes = (0, 1, 2)
  return {"intersect": jnp.sum(probs * targets, axis=axes),
          "prob_sq": jnp.sum(probs * probs, axis=axes),
          "target_sq": jnp.sum(targets * targets, axis=axes)}


def dice_from_sums(intersect, prob_sq, target_sq, smooth: float = DICE_SMOOTH):
  """The official DiceLoss from its per-class sums: ``mean_k(1 - (2I + s) / (P + T + s))``."""
  return jnp.mean(1.0 - (2.0 * intersect + smooth) / (prob_sq + target_sq + smooth))


def dice_loss(logits: jnp.ndarray, labels: jnp.ndarray,
              valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Softmax Dice over all classes, sums over the whole batch (``utils.DiceLoss``);
  ``valid`` ``(B, H, W)`` leaves pixels out."""
  return dice_from_sums(**soft_dice_sums(logits, labels, valid=valid))


def valid_pixels(labels: jnp.ndarray, ignore_index: int | None) -> jnp.ndarray:
  """``(B, H, W)`` bool: the label pixels that count (not ``ignore_index``)."""
  if ignore_index is None:
    return jnp.ones(labels.shape, bool)
  return labels != ignore_index


def pixel_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                        ignore_index: int | None = None) -> jnp.ndarray:
  """``(B, H, W)`` per-pixel ``-log softmax(logits)[label]``; 0 where the label is
  ``ignore_index`` (as ``F.cross_entropy(reduction='none', ignore_index=...)``)."""
  valid = valid_pixels(labels, ignore_index)
  # An out-of-range index would gather garbage: read class 0 there, then zero it.
  safe = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  return jnp.where(valid, ce, 0.0)


def mmseg_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, ignore_index: int,
                        avg_non_ignore: bool = False) -> jnp.ndarray:
  """mmseg's decode-head loss: ``logits`` ``(B, h, w, K)`` at any stride, resized
  bilinearly (align_corners False) to ``labels`` ``(B, H, W)``, then
  ``CrossEntropyLoss(ignore_index)``: the CE sum over non-ignored pixels divided by all
  ``B H W`` pixels (mmseg's default), or by the non-ignored ones (``avg_non_ignore``,
  plus mmseg's float32 eps against an all-ignored batch)."""
  logits = interpolate.resize_bilinear(logits.astype(jnp.float32), labels.shape[1:3])
  total = jnp.sum(pixel_cross_entropy(logits, labels, ignore_index))
  if not avg_non_ignore:
    return total / labels.size
  count = jnp.sum(valid_pixels(labels, ignore_index)).astype(jnp.float32)
  return total / (count + jnp.finfo(jnp.float32).eps)


def confusion_matrix(labels: jnp.ndarray, preds: jnp.ndarray, num_classes: int,
                     weights: jnp.ndarray, valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """``(K, K)`` float32 counts, ``[true, predicted]``; ``weights`` ``(B,)`` masks examples,
  ``valid`` ``(B, H, W)`` pixels. Labels outside ``0..K-1`` (255) count nowhere."""
  rows = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  rows = rows * weights.astype(jnp.float32)[:, None, None, None]
  if valid is not None:
    rows = rows * valid.astype(jnp.float32)[..., None]
  cols = jax.nn.one_hot(preds, num_classes, dtype=jnp.float32)
  return jnp.einsum("bhwk,bhwj->kj", rows, cols)


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray | float]:
  """From a ``[true, predicted]`` matrix summed over a dataset: per-class Dice
  ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` (mmseg's intersect / union;
  NaN where a class is in neither labels nor predictions), per-class accuracy
  ``TP / (TP + FN)`` (NaN where a class has no label pixel), and pixel accuracy (aAcc)."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  fp = confusion.sum(axis=0) - tp
  fn = confusion.sum(axis=1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    acc = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
  total = confusion.sum()
  return {"dice": dice, "iou": iou, "acc": acc,
          "pixel_acc": float(tp.sum() / total) if total else 0.0}


def _nanmean(values: np.ndarray) -> float:
  """mmseg's ``np.nanmean``, but 0.0 (not a warning and NaN) when every value is NaN."""
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else 0.0


class ConfusionEvaluator(base.Evaluator):
  """Sums confusion matrices, CE and soft-Dice sums over the eval set (float64 on host).

  ``loss``: ``'ce_dice'`` (``eval/loss`` = ce_weight CE + dice_weight Dice) or ``'ce_aux'``
  (``eval/loss`` = the decode CE over the non-ignored pixels).
  """

  def __init__(self, class_names: tuple[str, ...], ce_weight: float, dice_weight: float,
               loss: str = "ce_dice"):
    self.class_names = class_names
    self.ce_weight, self.dice_weight = ce_weight, dice_weight
    self.loss = loss
    k = len(class_names)
    self.confusion = np.zeros((k, k), np.float64)
    self.sums = {name: np.zeros(k, np.float64)
                 for name in ("intersect", "prob_sq", "target_sq")}
    self.ce_sum = 0.0

  def update(self, outputs):
    self.confusion += np.asarray(outputs["confusion"], np.float64)
    for name in self.sums:
      self.sums[name] += np.asarray(outputs[name], np.float64)
    self.ce_sum += float(outputs["ce_sum"])

  def result(self) -> dict[str, float]:
    m = metrics_from_confusion(self.confusion)
    pixels = max(self.confusion.sum(), 1.0)   # the non-ignored pixels of real examples
    ce = self.ce_sum / pixels
    if self.loss == "ce_aux":
      loss = ce
    else:
      loss = self.ce_weight * ce + self.dice_weight * float(dice_from_sums(**self.sums))
    out = {"eval/mean_dice": _nanmean(m["dice"][1:]) if len(m["dice"]) > 1 else 0.0,
           "eval/miou": _nanmean(m["iou"]),
           "eval/macc": _nanmean(m["acc"]),
           "eval/aacc": m["pixel_acc"],
           "eval/pixel_acc": m["pixel_acc"],
           "eval/ce": ce,
           "eval/loss": loss}
    # A class absent from labels and predictions alike has no Dice; it is left out.
    for name, value in zip(self.class_names, m["dice"]):
      if np.isfinite(value):
        out[f"eval/dice/{name}"] = float(value)
    return out


class SegmentationTask(base.Task):
  """Dense per-pixel classification (Swin-Unet) on ``{image, label-mask}`` datasets."""
  name = "segmentation"

  @classmethod
  def section_defaults(cls) -> ConfigDict:
    return ConfigDict(dict(
        image_key="image",             # source feature holding the image: uint8 RGB or grey
        label_key="label",             # source feature holding the (H, W) class mask
        class_names=(),                # K names for eval/dice/<name>; () -> the indices
        normalize="auto",              # 'auto' | 'imagenet' | 'none' (seg_transforms)
        ce_weight=0.4,                 # trainer.py: 0.4 * CE + 0.6 * Dice
        dice_weight=0.6,
        # RandomGenerator: rot90 + flip with p rot_flip_prob, else rotate with p rotate_prob
        # by an integer angle in [-max_angle, max_angle).
        aug=ConfigDict(dict(rot_flip_prob=0.5, rotate_prob=0.5, max_angle=20)),
        evaluation="pixels",           # 'pixels' (confusion matrix) | 'volumes' (3-D metrics)
        # 'volumes': the source label size (predictions are zoomed back to it); 0 = image_size.
        label_size=0,
        # 'auto' | 'ce_dice' (Swin-Unet) | 'ce_aux' (mmseg: CE(decode) + aux_weight CE(aux));
        # 'auto' = 'ce_aux' for a model with an auxiliary head (UperNet). See the module doc.
        loss="auto",
        ignore_index=IGNORE_INDEX,     # label value left out of every loss and metric
        aux_weight=upernet.AUX_LOSS_WEIGHT,   # 'ce_aux': the auxiliary head's CE weight
        avg_non_ignore=False,          # 'ce_aux': CE / non-ignored pixels (mmseg: / all)
        # 'ce_aux': + this weight x the soft Dice of the decode logits (mmseg's loss_decode
        # list [CE, Dice]); 0 = the official UperNet loss, CE alone.
        decode_dice_weight=0.0,
        reduce_zero_label=False,       # mmseg ADE20K: label 0 -> ignore_index, k -> k - 1
        # Training augmentation: 'swin_unet' (SegTransform: aug above, resize to S x S) or
        # 'mmseg' (mmseg_transforms.MMSegTrainTransform: random keep-ratio resize, crop with
        # cat_max_ratio, flip, photometric distortion, ImageNet mean/std on 0..255, pad with
        # ignore_index; task.normalize and task.aug do not apply). Eval of 'swin_unet':
        # SegTransform's square resize; of 'mmseg': mmseg's test (seg_inference), a
        # keep-ratio resize to mmseg.test_scale, whole or slide inference on static
        # canvases, scores at the source label size.
        pipeline="swin_unet",
        mmseg=ConfigDict(dict(
            scale=(2048, 512),         # Resize img_scale: (long, short) target before the ratio
            ratio_range=(0.5, 2.0),    # ratio ~ U[0.5, 2) of scale
            crop_size=0,               # RandomCrop / Pad (square); 0 = dataset.image_size
            cat_max_ratio=0.75,        # re-crop (10 tries) while one class covers this much
            flip_prob=0.5,             # RandomFlip, horizontal
            # --- test (eval) ---
            test_scale=(),             # keep-ratio Resize target (long, short); () = scale
            test_mode="whole",         # 'whole' | 'slide' (EncoderDecoder.test_cfg.mode)
            test_crop=(),              # slide window (h, w); () = (crop, crop) as above
            test_stride=(),            # slide stride (h, w); () = 2/3 of test_crop (341)
            tta_ratios=(),             # multi-scale test: ratios of test_scale; () = (1.0,)
            tta_flip=False,            # with horizontal flips (mean of softmax, as the fork)
            canvas_multiple=32,        # static canvases: sides multiple of this ...
            canvas_steps=4,            # ... on a ladder of this many per octave (0: all)
        )),
    ))

  @property
  def num_classes(self) -> int:
    return int(self.config.dataset.num_classes)

  def class_names(self) -> tuple[str, ...]:
    names = tuple(self.config.task.class_names)
    if not names:
      return tuple(str(k) for k in range(self.num_classes))
    if len(names) != self.num_classes:
      raise ValueError(f"task.class_names has {len(names)} names but dataset.num_classes is "
                       f"{self.num_classes}")
    return names

  def build_model(self):
    return base.create_model_for_classes(self.config, self.num_classes)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    size = self.config.dataset.image_size
    return {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size, size, size), jnp.int32)}

  def _pipeline(self) -> str:
    pipeline = self.config.task.pipeline
    if pipeline not in PIPELINES:
      raise ValueError(f"task.pipeline {pipeline!r} is not one of {PIPELINES}")
    return pipeline

  def _mmseg_train_transform(self) -> mmseg_transforms.MMSegTrainTransform:
    task, mm = self.config.task, self.config.task.mmseg
    size = int(self.config.dataset.image_size)
    crop = int(mm.crop_size) or size
    if crop != size:   # batch_spec: every batch is (B, S, S)
      raise ValueError(f"task.mmseg.crop_size {mm.crop_size!r} must be dataset.image_size "
                       f"({size}) or 0")
    try:
      return mmseg_transforms.MMSegTrainTransform(
          crop_size=crop, scale=tuple(mm.scale), ratio_range=tuple(mm.ratio_range),
          cat_max_ratio=float(mm.cat_max_ratio), flip_prob=float(mm.flip_prob),
          image_key=task.image_key, label_key=task.label_key,
          ignore_index=int(task.ignore_index), reduce_zero_label=bool(task.reduce_zero_label))
    except ValueError as e:
      raise ValueError(f"task.mmseg: {e}") from e

  def _transform(self, train: bool) -> seg_transforms.SegTransform:
    self._pipeline()   # validated for eval too, which keeps SegTransform for either
    task = self.config.task
    return seg_transforms.SegTransform(
        size=self.config.dataset.image_size, image_key=task.image_key,
        label_key=task.label_key, train=train, normalize=task.normalize,
        rot_flip_prob=task.aug.rot_flip_prob, rotate_prob=task.aug.rotate_prob,
        max_angle=task.aug.max_angle)

  def _with_label_map(self, transform):
    if not self.config.task.reduce_zero_label:
      return transform
    return _ReduceZeroLabel(transform, self.config.task.label_key,
                            int(self.config.task.ignore_index))

  def train_transform(self):
    if self._pipeline() == "mmseg":   # reduce_zero_label happens inside, before the resize
      if self._mmseg_eval():          # a bad test setting fails now, not after training
        self._mmseg_eval_transform()
        self.test_cfg()
      return self._mmseg_train_transform()
    return self._with_label_map(self._transform(train=True))

  def _volumes(self) -> bool:
    if self.config.task.evaluation not in EVALUATIONS:
      raise ValueError(f"task.evaluation {self.config.task.evaluation!r} is not one of "
                       f"{EVALUATIONS}")
    return self.config.task.evaluation == "volumes"

  def _mmseg_eval(self) -> bool:
    """Whether eval is mmseg's test (``pipeline='mmseg'``, pixel metrics)."""
    return self._pipeline() == "mmseg" and not self._volumes()

  def eval_transform(self):
    if self._mmseg_eval():   # reduce_zero_label happens inside
      return self._mmseg_eval_transform()
    transform = self._with_label_map(self._transform(train=False))
    if not self._volumes():
      return transform
    return _WithVolumeKeys(transform, self.config.task.label_key)

  def _mmseg_eval_transform(self) -> mmseg_transforms.MMSegEvalTransform:
    task, mm = self.config.task, self.config.task.mmseg
    try:
      return mmseg_transforms.MMSegEvalTransform(
          scale=tuple(mm.test_scale or mm.scale), ratios=tuple(mm.tta_ratios or (1.0,)),
          image_key=task.image_key, label_key=task.label_key,
          ignore_index=int(task.ignore_index), reduce_zero_label=bool(task.reduce_zero_label),
          canvas_multiple=int(mm.canvas_multiple), canvas_steps=int(mm.canvas_steps))
    except ValueError as e:
      raise ValueError(f"task.mmseg: {e}") from e

  def test_cfg(self) -> dict:
    """mmseg's test_cfg from ``task.mmseg``: mode, crop and stride ``(h, w)``, flip."""
    mm = self.config.task.mmseg
    if mm.test_mode not in seg_inference.MODES:
      raise ValueError(f"task.mmseg.test_mode {mm.test_mode!r} is not one of "
                       f"{seg_inference.MODES}")
    crop = int(mm.crop_size) or int(self.config.dataset.image_size)
    crop = mmseg_transforms.size_pair(tuple(mm.test_crop) or crop, "task.mmseg.test_crop")
    # 2/3 of the crop: 341 for 512 (no config of the official repo sets one; mode 'whole').
    stride = tuple(mm.test_stride) or tuple(c * 2 // 3 for c in crop)
    stride = mmseg_transforms.size_pair(stride, "task.mmseg.test_stride")
    return dict(mode=mm.test_mode, crop=crop, stride=stride, flip=bool(mm.tta_flip))

  def eval_batches(self, process_index: int = 0, process_count: int = 1):
    """The mmseg test: every eval example on its bucket's static canvases
    (``MMSegEvalTransform.eval_bucket``), grouped so that each batch holds one bucket;
    otherwise the fixed-shape pipeline. See ``bucketed_eval_batches``."""
    if not self._mmseg_eval():
      return super().eval_batches(process_index, process_count)
    self.test_cfg()   # fail before reading anything
    return bucketed_eval_batches(self.config, self._mmseg_eval_transform(), process_index,
                                 process_count)

  def eval_padding(self):
    padding = super().eval_padding()
    if self._volumes():
      size = self.config.task.label_size or self.config.dataset.image_size
      padding.update(label_full=np.zeros((size, size), np.int32), volume_id=np.int32(-1),
                     slice_index=np.int32(-1))
    return padding

  def loss_kind(self, model=None) -> str:
    """``'ce_dice'`` or ``'ce_aux'``: ``task.loss``, with ``'auto'`` resolved by whether
    the model has an auxiliary head (a ``head_logits`` method). Without ``model``, the
    class ``config.model.name`` names is asked (nothing is built or validated)."""
    kind = self.config.task.loss
    if kind not in LOSSES:
      raise ValueError(f"task.loss {kind!r} is not one of {LOSSES}")
    if model is None:
      model = registry.model_class(self.config.model.name)
    has_aux = callable(getattr(model, "head_logits", None))
    if kind == "auto":
      return "ce_aux" if has_aux else "ce_dice"
    if kind == "ce_aux" and not has_aux:
      name = getattr(model, "__name__", type(model).__name__)
      raise ValueError(f"task.loss='ce_aux' needs a model with an auxiliary head (a "
                       f"head_logits method, e.g. UperNet); {name} has none. "
                       "Use task.loss='ce_dice' or 'auto'")
    return kind

  def loss_fn(self, model, params, model_state, batch, rng):
    if self.loss_kind(model) == "ce_aux":
      return self._mmseg_loss(model, params, model_state, batch, rng)
    return self._swin_unet_loss(model, params, model_state, batch, rng)

  def _swin_unet_loss(self, model, params, model_state, batch, rng):
    """``ce_weight * CE + dice_weight * Dice`` on the model's full-size logits."""
    logits, model_state = base.apply_with_state(model, params, model_state, batch["image"],
                                                train=True, rngs={"dropout": rng})
    task = self.config.task
    labels = batch["label"]
    valid = valid_pixels(labels, task.ignore_index)
    # nn.CrossEntropyLoss: the mean over the non-ignored pixels.
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    ce = jnp.sum(pixel_cross_entropy(logits, labels, task.ignore_index)) / count
    dice = dice_loss(logits, labels, valid)
    loss = task.ce_weight * ce + task.dice_weight * dice
    return loss, ({"ce": ce, "dice": dice}, model_state)

  def _mmseg_loss(self, model, params, model_state, batch, rng):
    """``CE(decode) + aux_weight * CE(aux)`` (mmseg), BatchNorm statistics updated."""
    (decode, aux), model_state = base.apply_with_state(
        model, params, model_state, batch["image"], train=True, rngs={"dropout": rng},
        method="head_logits")
    task = self.config.task
    ce = functools.partial(mmseg_cross_entropy, labels=batch["label"],
                           ignore_index=int(task.ignore_index),
                           avg_non_ignore=bool(task.avg_non_ignore))
    decode_ce, aux_ce = ce(decode), ce(aux)
    loss = decode_ce + task.aux_weight * aux_ce
    terms = {"ce": decode_ce, "aux_ce": aux_ce}
    if task.decode_dice_weight:
      # mmseg's loss_decode as a list (CE + Dice): the soft Dice above on the decode logits
      # resized to the label, as mmseg resizes them for every decode loss.
      labels = batch["label"]
      resized = interpolate.resize_bilinear(decode.astype(jnp.float32), labels.shape[1:3])
      terms["dice"] = dice_loss(resized, labels, valid_pixels(labels, task.ignore_index))
      loss = loss + task.decode_dice_weight * terms["dice"]
    return loss, (terms, model_state)

  def _mmseg_scores(self, model, params, model_state, batch) -> jnp.ndarray:
    """``(B, Lh, Lw, K)`` scores at the source label size: ``seg_inference.predict`` on the
    decode logits (UperNet's 1/4-scale ones; the aux head's output is unused, so XLA drops
    it) or on a model's full-resolution logits."""
    method = "head_logits" if callable(getattr(model, "head_logits", None)) else None

    def apply_fn(images):
      out, _ = base.apply_with_state(model, params, model_state, images, train=False,
                                     **({"method": method} if method else {}))
      return out[0] if method else out

    return seg_inference.predict(apply_fn, batch["images"], batch["image_sizes"],
                                 batch["label_size"], batch["label"].shape[1:3],
                                 **self.test_cfg())

  def eval_step(self, model, params, model_state, batch):
    if self._mmseg_eval():
      logits = self._mmseg_scores(model, params, model_state, batch)
    else:
      logits, _ = base.apply_with_state(model, params, model_state, batch["image"],
                                        train=False)
    mask = batch["mask"]
    labels = batch["label"]
    preds = jnp.argmax(logits, axis=-1)
    if self._volumes():
      # medical_metrics.VolumeEvaluator's inputs; it zooms predictions to label_full's size.
      return {"prediction": preds.astype(jnp.int32), "label_full": batch["label_full"],
              "volume_id": batch["volume_id"], "slice_index": batch["slice_index"],
              "mask": mask}
    ignore_index = self.config.task.ignore_index
    valid = valid_pixels(labels, ignore_index)
    ce = pixel_cross_entropy(logits, labels, ignore_index)
    return {"confusion": confusion_matrix(labels, preds, logits.shape[-1], mask, valid),
            "ce_sum": jnp.sum(ce * mask[:, None, None]),
            **soft_dice_sums(logits, labels, mask, valid)}

  def evaluator(self) -> base.Evaluator:
    task = self.config.task
    if self._volumes():
      try:
        medical = importlib.import_module("swin_jax.tasks.medical_metrics")
      except ImportError as e:
        raise ValueError("task.evaluation='volumes' needs swin_jax.tasks.medical_metrics "
                         "(VolumeEvaluator), which is not available") from e
      return medical.VolumeEvaluator(self.num_classes)
    return ConfusionEvaluator(self.class_names(), task.ce_weight, task.dice_weight,
                              self.loss_kind())


# mmseg's LoadAnnotations(reduce_zero_label=True), shared with the mmseg pipeline.
reduce_zero_label = mmseg_transforms.reduce_zero_label


class _ReduceZeroLabel:
  """A transform whose example's ``label_key`` goes through ``reduce_zero_label`` first
  (before any augmentation, as mmseg loads it)."""

  def __init__(self, transform, label_key: str, ignore_index: int):
    self.transform, self.label_key, self.ignore_index = transform, label_key, ignore_index

  def __call__(self, example, *rng):
    example = dict(example)
    label = reduce_zero_label(example[self.label_key], self.ignore_index)
    # Keep the source dtype (uint8 masks hold 255) so the transform sees what it expects.
    example[self.label_key] = label.astype(np.asarray(example[self.label_key]).dtype)
    return self.transform(example, *rng)


class _WithVolumeKeys:
  """An eval transform plus what per-volume scoring needs: the label at its source size
  (``label_full``) and the slice's ``volume_id`` / ``slice_index`` (Synapse test split)."""

  def __init__(self, transform, label_key: str):
    self.transform, self.label_key = transform, label_key

  def __call__(self, example):
    out = self.transform(example)
    label = np.asarray(example[self.label_key])
    out["label_full"] = (label[..., 0] if label.ndim == 3 else label).astype(np.int32)
    out["volume_id"] = np.int32(example["volume_id"])
    out["slice_index"] = np.int32(example["slice_index"])
    return out


# ------------------------------------------------------------------ the mmseg test's batches


def source_image_sizes(dataset_config, split: str, image_key: str) -> list[tuple[int, int]]:
  """``(H, W)`` of every image of ``split``, in order. Encoded images are not decoded: the
  sizes come from their headers (PIL reads only those), so this pass is cheap."""
  # Imported here: the task module stays light for code that never reads data.
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from swin_jax.data import sources  # pylint: disable=import-outside-toplevel
  builder = sources.prepared_builder(dataset_config)
  features = builder.info.features
  skip = {name: tfds.decode.SkipDecoding() for name, feature in features.items()
          if isinstance(feature, tfds.features.Image)}
  source = builder.as_data_source(split=split, decoders=skip or None)
  sizes = []
  for i in range(len(source)):
    image = source[i][image_key]
    if isinstance(image, (bytes, np.bytes_)):
      width, height = Image.open(io.BytesIO(image)).size
    else:
      height, width = np.shape(image)[:2]
    sizes.append((int(height), int(width)))
  return sizes


def bucket_plan(buckets: list, global_batch: int, process_index: int = 0,
                process_count: int = 1) -> list[tuple[int, object]]:
  """This host's ``(example index or -1 for padding, bucket)`` sequence: the examples of
  each bucket (in sorted bucket order, then index order) cut into global batches of
  ``global_batch``, the last one padded with -1; host ``i`` takes positions ``[i b,
  (i + 1) b)`` of each global batch (``b = global_batch / process_count``). Every host gets
  the same buckets in the same order, so they run the same programs together."""
  local = global_batch // process_count
  by_bucket: dict = {}
  for index, bucket in enumerate(buckets):
    by_bucket.setdefault(bucket, []).append(index)
  plan = []
  for bucket in sorted(by_bucket):
    indices = by_bucket[bucket]
    indices = indices + [-1] * (-len(indices) % global_batch)
    for start in range(0, len(indices), global_batch):
      share = indices[start + process_index * local: start + (process_index + 1) * local]
      plan.extend((index, bucket) for index in share)
  return plan


def bucketed_eval_batches(config, transform: mmseg_transforms.MMSegEvalTransform,
                          process_index: int = 0, process_count: int = 1):
  """This host's eval batches for the mmseg test: ``{'images': (one (b, Hc_r, Wc_r, 3)
  canvas per test scale), 'image_sizes': (b, n, 2), 'label': (b, Lh, Lw), 'label_size':
  (b, 2), 'mask': (b,)}``, each batch from one bucket (``bucket_plan``), so an eval set
  compiles one program per bucket it holds. Each host reads the image sizes of the whole
  split (headers only) to make the same plan."""
  import grain  # pylint: disable=import-outside-toplevel
  from swin_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  batch = pipeline.per_host_batch_size(config.eval_batch_size or config.batch_size,
                                       process_count, "eval_batch_size")
  split = config.dataset.eval_split
  sizes = source_image_sizes(config.dataset, split, transform.image_key)
  plan = bucket_plan([transform.eval_bucket(size) for size in sizes], batch * process_count,
                     process_index, process_count)
  source = sources.open_source(config.dataset, split)
  ds = grain.MapDataset.source(plan).map(_OnCanvas(source, transform))
  threads = config.dataset.read_threads
  return ds.batch(batch, drop_remainder=False).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, 2 * threads)))


class _OnCanvas:
  """``(index, bucket)`` -> the transformed example on the bucket's canvases, ``mask`` 1;
  index -1 -> the bucket's padding example, ``mask`` 0."""

  def __init__(self, source, transform: mmseg_transforms.MMSegEvalTransform):
    self.source, self.transform = source, transform

  def __call__(self, element):
    index, bucket = element
    if index < 0:
      return {**self.transform.padding(bucket), "mask": np.float32(0.0)}
    example = self.transform(self.source[index])
    return {**self.transform.to_canvas(example, bucket), "mask": np.float32(1.0)}
