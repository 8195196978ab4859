"""3D volume segmentation (nnFormer) on the one loop, trained and evaluated as nnU-Net v1 does.

Datasets hold whole volumes: ``image`` ``(D, H, W, C)`` float32 (already normalised),
``label`` ``(D, H, W)`` integer classes, ``spacing`` ``(3,)`` mm (``organ_phantoms``,
``medical_volumes``).

* train examples: one patch of the model's ``crop_size`` per volume
  (``volume_transforms.VolumeTrainTransform``: foreground oversampling, rotation, scaling,
  mirroring); batches ``{'image': (B, *crop, C), 'label': (B, *crop)}``;
* loss: nnU-Net's Dice + CE (``nnunet_loss``): batch soft Dice without background plus
  voxel CE, over the deep-supervision outputs with weights 4/7, 2/7, 1/7 and targets
  downsampled as nnU-Net does (``volume_transforms.deep_supervision_labels``);
* eval: every window of every volume of the eval split (``volume_inference``: nnU-Net's
  steps at ``task.eval.step_size``, mirroring TTA, Gaussian importance), in batches of one
  shape, so ``eval_step`` compiles once; the host adds the windows into their volumes and
  scores each finished volume per class with Dice and HD95 as medpy computes them
  (``medical_metrics``): ``eval/mean_dice``, ``eval/mean_hd95``, ``eval/dice/<k>``, ...
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax.tasks import base
from swin_jax.tasks import medical_metrics
from swin_jax.tasks import nnunet_loss
from swin_jax.tasks import volume_inference

ConfigDict = ml_collections.ConfigDict


class VolumeSegmentationTask(base.Task):
  """Voxel classification of 3D volumes by a model of fixed ``crop_size`` (nnFormer)."""
  name = "volume_segmentation"

  @classmethod
  def section_defaults(cls) -> ConfigDict:
    return ConfigDict(dict(
        image_key="image",             # (D, H, W, C) float32, normalised
        label_key="label",             # (D, H, W) integer classes
        class_names=(),                # K names, for the README/figures; () -> indices
        # nnU-Net v1's 3D training augmentation (see volume_transforms). nnU-Net forces
        # the last round(b * oversample_foreground) patches of a batch of b onto foreground
        # (1 of 2 at nnFormer's batch 2); each example here is forced with that probability.
        aug=ConfigDict(dict(oversample_foreground=0.33, rotation_degrees=30.0,
                            scale_range=(0.7, 1.4), p_rotation=0.2, p_scale=0.2,
                            mirror_axes=(0, 1, 2))),
        # Sliding-window evaluation (nnU-Net's predict_3D): window step as a fraction of the
        # patch, mirroring TTA over these axes ((): none), HD95 in mm (the stored spacing)
        # or, as nnFormer's inference scripts, in voxels; eval/mean_* over these classes
        # ((): 1..K-1; Synapse's paper numbers use 8 of its 13 organs).
        eval=ConfigDict(dict(step_size=0.5, mirror_axes=(0, 1, 2), hd95_in_mm=False,
                             mean_over=())),
    ))

  @property
  def num_classes(self) -> int:
    return int(self.config.dataset.num_classes)

  def build_model(self):
    model = base.create_model_for_classes(self.config, self.num_classes)
    if not hasattr(model, "crop_size"):
      raise ValueError(f"task volume_segmentation needs a 3D model with a crop_size "
                       f"(nnformer_*), got {self.config.model.name}")
    return model

  def _model(self):
    if not hasattr(self, "_built"):
      self._built = self.build_model()
    return self._built

  @property
  def patch_size(self) -> tuple[int, int, int]:
    return tuple(int(s) for s in self._model().crop_size)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    model = self._model()
    patch = self.patch_size
    return {"image": jax.ShapeDtypeStruct((batch_size, *patch, model.in_channels), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size, *patch), jnp.int32)}

  # --- data (host) ---

  def train_transform(self):
    # pylint: disable-next=import-outside-toplevel
    from swin_jax.data import volume_transforms
    aug, task = self.config.task.aug, self.config.task
    forced = volume_transforms.forced_foreground_fraction(int(self.config.batch_size),
                                                          float(aug.oversample_foreground))
    transform = volume_transforms.VolumeTrainTransform(
        self.patch_size, oversample_foreground=forced,
        rotation_degrees=float(aug.rotation_degrees), scale_range=tuple(aug.scale_range),
        p_rotation=float(aug.p_rotation), p_scale=float(aug.p_scale),
        mirror_axes=tuple(aug.mirror_axes))
    return _Keyed(transform, task.image_key, task.label_key, self._model().in_channels)

  def eval_transform(self):
    raise NotImplementedError("volume_segmentation evaluates whole volumes in windows: "
                              "use eval_batches")

  def eval_padding(self) -> dict[str, np.ndarray]:
    model = self._model()
    return {"image": np.zeros((*self.patch_size, model.in_channels), np.float32),
            "volume": np.int32(-1), "start": np.zeros(3, np.int32), "mask": np.float32(0.0)}

  def _eval_source(self):
    """The eval split's random-access source, opened once (eval batches, shapes and the
    evaluator's labels all read it)."""
    if not hasattr(self, "_opened_eval_source"):
      # pylint: disable-next=import-outside-toplevel
      from swin_jax.data import sources
      self._opened_eval_source = sources.open_source(self.config.dataset,
                                                     self.config.dataset.eval_split)
    return self._opened_eval_source

  def eval_volume_shapes(self) -> list[tuple[int, int, int]]:
    """``(D, H, W)`` of every eval volume, in order (read once, from the labels)."""
    if not hasattr(self, "_eval_shapes"):
      source, key = self._eval_source(), self.config.task.label_key
      self._eval_shapes = [tuple(np.shape(source[i][key])[:3]) for i in range(len(source))]
    return self._eval_shapes

  def eval_batches(self, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every window of every eval volume, ``{'image': (b, *crop, C), 'volume': (b,),
    'start': (b, 3), 'mask': (b,)}``: the global sequence (``volume_inference.window_plan``)
    cut into global batches, host ``i`` taking its slice of each (the last padded)."""
    # pylint: disable-next=import-outside-toplevel
    from swin_jax.data import pipeline
    from swin_jax.tasks.segmentation import bucket_plan  # pylint: disable=import-outside-toplevel
    batch = pipeline.per_host_batch_size(self.config.eval_batch_size or self.config.batch_size,
                                         process_count, "eval_batch_size")
    plan = volume_inference.window_plan(self.eval_volume_shapes(), self.patch_size,
                                        float(self.config.task.eval.step_size))
    local = bucket_plan([0] * len(plan), batch * process_count, process_index, process_count)
    source, key = self._eval_source(), self.config.task.image_key
    padding = self.eval_padding()
    cached: dict[int, np.ndarray] = {}
    rows = []
    for position, _ in local:
      if position < 0:
        rows.append(padding)
      else:
        index, start = plan[position]
        if index not in cached:   # windows come volume by volume: keep one decoded
          cached.clear()
          cached[index] = _channels_last(np.asarray(source[index][key], np.float32))
        rows.append({"image": volume_inference.padded_window(cached[index], start,
                                                             self.patch_size),
                     "volume": np.int32(index), "start": np.asarray(start, np.int32),
                     "mask": np.float32(1.0)})
      if len(rows) == batch:
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        rows = []

  # --- compiled steps ---

  def loss_fn(self, model, params, model_state, batch, rng):
    outputs, model_state = base.apply_with_state(model, params, model_state, batch["image"],
                                                 train=True, rngs={"dropout": rng})
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    labels = downsampled_labels(batch["label"], len(outputs))
    weights = nnunet_loss.deep_supervision_weights(len(outputs))
    loss, dice = nnunet_loss.deep_supervision_loss(outputs, labels, weights)
    return loss, ({"soft_dice": dice}, model_state)

  def eval_step(self, model, params, model_state, batch):
    def apply(x):
      logits, _ = base.apply_with_state(model, params, model_state, x, train=False)
      return logits

    probs = volume_inference.mirrored_probabilities(
        apply, batch["image"], tuple(self.config.task.eval.mirror_axes))
    weighted = probs * volume_inference.gaussian_importance(self.patch_size)[None, ..., None]
    return {"weighted": weighted, "volume": batch["volume"], "start": batch["start"],
            "mask": batch["mask"]}

  def evaluator(self) -> base.Evaluator:
    return VolumeWindowEvaluator(self)


class VolumeWindowEvaluator(base.Evaluator):
  """Adds eval windows into their volumes; scores each volume once complete (Dice, HD95
  per class 1..K-1, ``medical_metrics``); ``result`` averages over volumes."""

  def __init__(self, task: VolumeSegmentationTask):
    self.task = task
    self.accumulator = volume_inference.VolumeAccumulator(
        task.eval_volume_shapes(), task.patch_size, task.num_classes,
        float(task.config.task.eval.step_size))
    self.scores: dict[int, np.ndarray] = {}

  def update(self, outputs: dict[str, np.ndarray]) -> None:
    mask = np.asarray(outputs["mask"]).reshape(-1)
    for i in np.flatnonzero(mask > 0):
      index = int(outputs["volume"][i])
      prediction = self.accumulator.add(index, tuple(int(s) for s in outputs["start"][i]),
                                        np.asarray(outputs["weighted"][i]))
      if prediction is not None:
        self.scores[index] = self._score(index, prediction)

  def _score(self, index: int, prediction: np.ndarray) -> np.ndarray:
    task = self.task
    example = task._eval_source()[index]   # pylint: disable=protected-access
    label = np.asarray(example[task.config.task.label_key])
    spacing = (tuple(float(s) for s in example["spacing"])
               if task.config.task.eval.hd95_in_mm else None)
    return medical_metrics.score_volume(prediction, label, task.num_classes, spacing)

  def result(self) -> dict[str, float]:
    pending = self.accumulator.pending()
    if pending:
      raise ValueError(f"evaluation ended with volumes {pending[:10]} missing windows")
    return medical_metrics.summarize_volume_scores(
        [self.scores[i] for i in sorted(self.scores)], self.task.num_classes,
        tuple(self.task.config.task.eval.mean_over))


def downsampled_labels(labels: jnp.ndarray, num_scales: int) -> list[jnp.ndarray]:
  """The deep-supervision targets of ``(B, D, H, W)`` labels: scale ``i`` keeps every
  ``2**i``-th voxel from offset ``DS_OFFSET(i)`` on each axis, the voxels nnU-Net's
  order-0 resize (``DownsampleSegForDSTransform2``) picks (``volume_transforms``)."""
  # pylint: disable-next=import-outside-toplevel
  from swin_jax.data import volume_transforms
  targets = []
  for i in range(num_scales):
    step = 2**i
    start = volume_transforms.deep_supervision_offset(step)
    targets.append(labels[:, start::step, start::step, start::step])
  return targets


def _channels_last(image: np.ndarray) -> np.ndarray:
  """``(D, H, W)`` -> ``(D, H, W, 1)``; ``(D, H, W, C)`` unchanged."""
  return image[..., None] if image.ndim == 3 else image


class _Keyed:
  """The train transform on ``{image_key, label_key}`` with a channel check."""

  def __init__(self, transform: Any, image_key: str, label_key: str, channels: int):
    self.transform, self.image_key, self.label_key = transform, image_key, label_key
    self.channels = channels

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    image = _channels_last(np.asarray(example[self.image_key], np.float32))
    if image.shape[-1] != self.channels:
      raise ValueError(f"the model takes {self.channels} input channel(s), the dataset's "
                       f"'{self.image_key}' has {image.shape[-1]} (shape {image.shape})")
    out = self.transform({"image": image, "label": np.asarray(example[self.label_key])}, rng)
    return {"image": out["image"].astype(np.float32), "label": out["label"].astype(np.int32)}
