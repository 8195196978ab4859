"""Image classification: the official Swin recipe's loss, metrics and transforms.

Batches are ``{'image': (B, H, W, 3) float32, 'label': (B,) int32}``; evaluation batches
also carry ``'mask': (B,)`` (1 for real examples, 0 for padding of the last batch).
Training mixes the batch on device (Mixup/CutMix with label smoothing, ``config.task.mixup``)
and minimises the soft-target cross-entropy; evaluation reports top-1, top-5 and the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from swin_jax.data import mixup as mixup_lib
from swin_jax.data import transforms
from swin_jax.tasks import base

ConfigDict = ml_collections.ConfigDict


def soft_target_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """Mean over the batch of ``-sum(targets * log_softmax(logits))``; logits/targets (B, K)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(targets * log_probs, axis=-1))


def topk_correct(logits: jnp.ndarray, labels: jnp.ndarray, k: int) -> jnp.ndarray:
  """``(B,)`` float32: 1 where the label is among the ``k`` highest logits."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  # Rank = number of classes scoring strictly higher; ties count in the label's favour.
  rank = jnp.sum(logits > label_logit, axis=-1)
  return (rank < k).astype(jnp.float32)


def eval_sums(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray) -> dict:
  """Masked sums for one eval batch: loss, top-1 / top-5 hits and the example count."""
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return {
      "loss": jnp.sum(nll * mask),
      "top1": jnp.sum(topk_correct(logits, labels, 1) * mask),
      "top5": jnp.sum(topk_correct(logits, labels, min(5, num_classes)) * mask),
      "count": jnp.sum(mask),
  }


class ClassificationTask(base.Task):
  """Swin classifiers on ImageNet-style ``{'image', 'label'}`` datasets."""
  name = "classification"

  @classmethod
  def section_defaults(cls) -> ConfigDict:
    return ConfigDict(dict(
        # Host augmentation (timm create_transform as the official code configures it).
        aug=ConfigDict(dict(
            random_resized_crop=True,
            crop_scale=(0.08, 1.0),
            crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
            hflip=0.5,
            randaugment="",            # timm-style spec, e.g. 'rand-m9-mstd0.5-inc1'; '' = off
            reprob=0.0,                # random erasing probability ('pixel' mode, one box)
        )),
        # On-device Mixup/CutMix and label smoothing (timm Mixup).
        mixup=ConfigDict(dict(
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
            prob=1.0,
            switch_prob=0.5,
            label_smoothing=0.0,
        )),
    ))

  def build_model(self):
    return base.create_model_for_classes(self.config, self.config.dataset.num_classes)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    size = self.config.dataset.image_size
    return {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

  def train_transform(self):
    return transforms.train_transform(self.config)

  def eval_transform(self):
    return transforms.eval_transform(self.config)

  def loss_fn(self, model, params, model_state, batch, rng):
    mix_rng, dropout_rng = jax.random.split(rng)
    mix = self.config.task.mixup
    images, targets = mixup_lib.mixup_cutmix(
        mix_rng, batch["image"], batch["label"], num_classes=self.config.dataset.num_classes,
        mixup_alpha=mix.mixup_alpha, cutmix_alpha=mix.cutmix_alpha, prob=mix.prob,
        switch_prob=mix.switch_prob, label_smoothing=mix.label_smoothing)
    logits, model_state = base.apply_with_state(model, params, model_state, images, train=True,
                                                rngs={"dropout": dropout_rng})
    return soft_target_cross_entropy(logits, targets), ({}, model_state)

  def eval_step(self, model, params, model_state, batch):
    logits, _ = base.apply_with_state(model, params, model_state, batch["image"], train=False)
    return eval_sums(logits, batch["label"], batch["mask"])

  def evaluator(self) -> base.Evaluator:
    return base.SumEvaluator(("top1", "top5", "loss"))
