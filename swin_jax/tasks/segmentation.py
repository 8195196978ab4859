"""Semantic segmentation as Swin-Unet trains it: 0.4 CE + 0.6 softmax Dice, confusion-matrix eval.

Batches are ``{'image': (B, S, S, 3) float32, 'label': (B, S, S) int32}`` (eval adds
``'mask': (B,)``); the model maps images to ``(B, S, S, K)`` logits. The loss is the official
``trainer.py`` one: ``ce_weight * CE + dice_weight * Dice`` where CE is the pixel mean and
Dice is ``utils.DiceLoss(softmax=True)``: for each of the K classes, background included,
``1 - (2 sum(p t) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5)`` with the sums over the whole
global batch and every pixel, averaged over the classes.

Evaluation (``task.evaluation='pixels'``) accumulates a K x K confusion matrix over the
eval set at the model's resolution and reports ``eval/mean_dice`` (foreground classes
1..K-1), ``eval/dice/<class>``, ``eval/miou``, ``eval/pixel_acc`` and ``eval/loss`` (the
training loss with the whole eval set as its batch). ``'volumes'`` hands the eval outputs to
``swin_jax.tasks.medical_metrics.VolumeEvaluator`` (per-volume 3-D Dice/HD95, Synapse).
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax.data import seg_transforms
from swin_jax.tasks import base

ConfigDict = ml_collections.ConfigDict

EVALUATIONS = ("pixels", "volumes")
DICE_SMOOTH = 1e-5   # utils.DiceLoss


def soft_dice_sums(logits: jnp.ndarray, labels: jnp.ndarray,
                   weights: jnp.ndarray | None = None) -> dict[str, jnp.ndarray]:
  """Per-class ``(K,)`` sums of ``p t``, ``p^2`` and ``t^2`` over the batch and pixels.

  ``logits`` ``(B, H, W, K)``, ``labels`` ``(B, H, W)``; ``weights`` ``(B,)`` masks examples.
  """
  num_classes = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if weights is not None:
    w = weights.astype(jnp.float32)[:, None, None, None]
    probs, targets = probs * w, targets * w
  axes = (0, 1, 2)
  return {"intersect": jnp.sum(probs * targets, axis=axes),
          "prob_sq": jnp.sum(probs * probs, axis=axes),
          "target_sq": jnp.sum(targets * targets, axis=axes)}


def dice_from_sums(intersect, prob_sq, target_sq, smooth: float = DICE_SMOOTH):
  """The official DiceLoss from its per-class sums: ``mean_k(1 - (2I + s) / (P + T + s))``."""
  return jnp.mean(1.0 - (2.0 * intersect + smooth) / (prob_sq + target_sq + smooth))


def dice_loss(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Softmax Dice over all classes, sums over the whole batch (``utils.DiceLoss``)."""
  return dice_from_sums(**soft_dice_sums(logits, labels))


def pixel_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """``(B, H, W)`` per-pixel ``-log softmax(logits)[label]``."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def confusion_matrix(labels: jnp.ndarray, preds: jnp.ndarray, num_classes: int,
                     weights: jnp.ndarray) -> jnp.ndarray:
  """``(K, K)`` float32 counts, ``[true, predicted]``; ``weights`` ``(B,)`` masks examples."""
  rows = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  rows = rows * weights.astype(jnp.float32)[:, None, None, None]
  cols = jax.nn.one_hot(preds, num_classes, dtype=jnp.float32)
  return jnp.einsum("bhwk,bhwj->kj", rows, cols)


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray | float]:
  """Per-class Dice ``2TP / (2TP + FP + FN)`` and IoU (NaN where a class is in neither
  labels nor predictions), and pixel accuracy, from a ``[true, predicted]`` matrix."""
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  fp = confusion.sum(axis=0) - tp
  fn = confusion.sum(axis=1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
  total = confusion.sum()
  return {"dice": dice, "iou": iou, "pixel_acc": float(tp.sum() / total) if total else 0.0}


class ConfusionEvaluator(base.Evaluator):
  """Sums confusion matrices, CE and soft-Dice sums over the eval set (float64 on host)."""

  def __init__(self, class_names: tuple[str, ...], ce_weight: float, dice_weight: float):
    self.class_names = class_names
    self.ce_weight, self.dice_weight = ce_weight, dice_weight
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
    pixels = max(self.confusion.sum(), 1.0)
    dice = float(dice_from_sums(**self.sums))
    out = {"eval/mean_dice": float(np.nanmean(m["dice"][1:])) if len(m["dice"]) > 1 else 0.0,
           "eval/miou": float(np.nanmean(m["iou"])),
           "eval/pixel_acc": m["pixel_acc"],
           "eval/ce": self.ce_sum / pixels,
           "eval/loss": self.ce_weight * self.ce_sum / pixels + self.dice_weight * dice}
    # A class absent from labels and predictions alike has no Dice; it is left out.
    for name, value in zip(self.class_names, m["dice"]):
      if np.isfinite(value):
        out[f"eval/dice/{name}"] = float(value)
    for key in ("eval/mean_dice", "eval/miou"):
      if not np.isfinite(out[key]):
        out[key] = 0.0
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

  def _transform(self, train: bool) -> seg_transforms.SegTransform:
    task = self.config.task
    return seg_transforms.SegTransform(
        size=self.config.dataset.image_size, image_key=task.image_key,
        label_key=task.label_key, train=train, normalize=task.normalize,
        rot_flip_prob=task.aug.rot_flip_prob, rotate_prob=task.aug.rotate_prob,
        max_angle=task.aug.max_angle)

  def train_transform(self):
    return self._transform(train=True)

  def _volumes(self) -> bool:
    if self.config.task.evaluation not in EVALUATIONS:
      raise ValueError(f"task.evaluation {self.config.task.evaluation!r} is not one of "
                       f"{EVALUATIONS}")
    return self.config.task.evaluation == "volumes"

  def eval_transform(self):
    transform = self._transform(train=False)
    if not self._volumes():
      return transform
    return _WithVolumeKeys(transform, self.config.task.label_key)

  def eval_padding(self):
    padding = super().eval_padding()
    if self._volumes():
      size = self.config.task.label_size or self.config.dataset.image_size
      padding.update(label_full=np.zeros((size, size), np.int32), volume_id=np.int32(-1),
                     slice_index=np.int32(-1))
    return padding

  def loss_fn(self, model, params, model_state, batch, rng):
    logits, model_state = base.apply_with_state(model, params, model_state, batch["image"],
                                                train=True, rngs={"dropout": rng})
    ce = jnp.mean(pixel_cross_entropy(logits, batch["label"]))
    dice = dice_loss(logits, batch["label"])
    task = self.config.task
    loss = task.ce_weight * ce + task.dice_weight * dice
    return loss, ({"ce": ce, "dice": dice}, model_state)

  def eval_step(self, model, params, model_state, batch):
    logits, _ = base.apply_with_state(model, params, model_state, batch["image"], train=False)
    mask = batch["mask"]
    labels = batch["label"]
    preds = jnp.argmax(logits, axis=-1)
    if self._volumes():
      # medical_metrics.VolumeEvaluator's inputs; it zooms predictions to label_full's size.
      return {"prediction": preds.astype(jnp.int32), "label_full": batch["label_full"],
              "volume_id": batch["volume_id"], "slice_index": batch["slice_index"],
              "mask": mask}
    ce = pixel_cross_entropy(logits, labels)
    return {"confusion": confusion_matrix(labels, preds, logits.shape[-1], mask),
            "ce_sum": jnp.sum(ce * mask[:, None, None]),
            **soft_dice_sums(logits, labels, mask)}

  def evaluator(self) -> base.Evaluator:
    task = self.config.task
    if self._volumes():
      try:
        medical = importlib.import_module("swin_jax.tasks.medical_metrics")
      except ImportError as e:
        raise ValueError("task.evaluation='volumes' needs swin_jax.tasks.medical_metrics "
                         "(VolumeEvaluator), which is not available") from e
      return medical.VolumeEvaluator(self.num_classes)
    return ConfusionEvaluator(self.class_names(), task.ce_weight, task.dice_weight)


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
