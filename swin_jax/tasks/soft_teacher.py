"""Soft Teacher: end-to-end semi-supervised detection (microsoft/SoftTeacher) on the one loop.

A train batch holds ``b = config.batch_size`` labelled images and ``r = task.unlabelled_per
_labelled`` unlabelled images per labelled one (the official ``sample_ratio`` 1:4 with 5
images per GPU: ``b = 8``, ``r = 4`` on 8 devices), all on one static canvas:

    image, image_hw, gt_boxes, gt_labels, gt_valid   (b, ...)     labelled (SupervisedView)
    teacher_image (b, r, Hc, Wc, 3), teacher_hw (b, r, 2), teacher_matrix (b, r, 3, 3)
    student_image, student_hw, student_matrix        (b, r, ...)  unlabelled (UnlabelledViews)

The teacher, an EMA of the student (``state.extra['teacher']``, momentum ``min(0.999, 1 -
1/(t+1))`` after every step, ``pseudo_labels.ema_momentum``), sees the weak views; the
student the strong ones. Per step (``loss_fn``):

1. ``sup``: the detector's losses on the labelled images (``detector_losses``).
2. The teacher's pseudo labels on the weak views (``teacher_pseudo_labels``): score > 0.5,
   each box's jitter uncertainty. They move into the student's view with ``M = T_s T_t^-1``
   (``box_transform``) and are clipped to it; boxes left without area drop out.
3. ``unsup``: the student on the strong views: RPN loss against boxes of score > 0.9,
   classification against boxes of score > 0.9 with each background-assigned RoI weighted
   by the teacher's background probability on that RoI in the teacher's view (the soft
   weights: ``pseudo_labels.soft_label_weights``), regression against boxes of uncertainty
   < 0.02.
4. ``loss = sum(sup) + unsup_weight * sum(unsup)`` (4.0 partial labels, 2.0 full).

Ablations (``task.soft_weights=False``: background RoIs weigh 1; ``task.box_jitter=False``:
the regression targets are the score > 0.9 boxes, as the paper's baseline without jitter;
``task.unsup_weight=0``: the supervised-only baseline on the same labelled stream, with no
teacher or unlabelled pass at all). ``task.burn_in_steps=N`` (not official: a short run from
scratch): the first N steps are supervised only, with the teacher a copy of the student; the
EMA warm-up and the unsupervised loss start at step N.
Evaluation is the detection task's (COCO box AP) on the student, the official
``inference_on='student'``.

Data: the labelled images are ``task.labelled_percent`` % of ``dataset.train_split`` drawn
as the official ``tools/dataset/semi_coco.py`` (``task.fold`` is its seed; over the COCO
JSON's image order when ``task.split_annotations`` names it, else over the split's example
order); the unlabelled images are the rest of that split, or all of
``task.unlabelled_split`` (the full-label recipe: COCO ``unlabeled``). Each source is
shuffled and repeated on its own; group ``i`` of the stream is labelled example ``i`` and
unlabelled examples ``[i r, (i + 1) r)``, so a resumed run reads the same groups.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from absl import logging
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax.data import detection_transforms as dt
from swin_jax.data import semi_split
from swin_jax.data import soft_teacher_views as views
from swin_jax.models.detection import box_transform
from swin_jax.models.detection import pseudo_labels as pl
from swin_jax.tasks import detection
from swin_jax.tasks.soft_teacher_losses import student_unsup_losses, teacher_pseudo_labels

ConfigDict = ml_collections.ConfigDict

UNSUP_PREFIX = "unsup_"
SUP_PREFIX = "sup_"
VIEW_KEYS = ("teacher_image", "teacher_hw", "teacher_matrix", "student_image", "student_hw",
             "student_matrix")


class SoftTeacherTask(detection.DetectionTask):
  """Faster R-CNN trained by Soft Teacher on labelled + unlabelled images."""
  name = "soft_teacher"
  reads_extra = True

  @classmethod
  def section_defaults(cls) -> ConfigDict:
    section = super().section_defaults()
    section.update(dict(
        labelled_percent=10.0,            # share of dataset.train_split with labels (%)
        fold=1,                           # the official split seed
        split_annotations="",             # COCO JSON whose image order the split follows
        unlabelled_split="",              # '': the train split's unlabelled rest
        unlabelled_per_labelled=4,        # r: the official sample_ratio 1:4
        scale_range=((1333, 400), (1333, 1200)),   # RandResize, range mode (long, short)
        unsup_weight=4.0,
        # Not in the official recipe (which starts from an ImageNet backbone): steps of
        # supervised loss only, the teacher a copy of the student, before the EMA and the
        # unsupervised loss start; for short runs from scratch (the digit-scenes demo).
        burn_in_steps=0,
        initial_score_threshold=pl.INITIAL_SCORE_THRESHOLD,
        rpn_pseudo_threshold=pl.RPN_PSEUDO_THRESHOLD,
        cls_pseudo_threshold=pl.CLS_PSEUDO_THRESHOLD,
        reg_pseudo_threshold=pl.REG_PSEUDO_THRESHOLD,
        jitter_times=pl.JITTER_TIMES,
        jitter_scale=pl.JITTER_SCALE,
        ema_momentum=pl.EMA_MOMENTUM,
        soft_weights=True,                # ablation switch: background RoIs weigh 1
        box_jitter=True,                  # ablation switch: regression on score > 0.9
    ))
    return section

  # --- model and data ---

  def build_model(self):
    model = super().build_model()
    if model.with_mask:
      raise ValueError(f"Soft Teacher trains Faster R-CNN; {self.config.model.name} has a "
                       "mask head (use a faster_rcnn_* model)")
    return model

  def canvas(self) -> tuple[int, int]:
    task = self.config.task
    if tuple(int(s) for s in task.canvas) == (0, 0):
      scales = tuple(tuple(s) for s in task.scale_range) + (tuple(task.test_scale),)
      return dt.canvas_for_scales(scales)
    return super().canvas()

  @property
  def ratio(self) -> int:
    r = int(self.config.task.unlabelled_per_labelled)
    if r < 1:
      raise ValueError(f"task.unlabelled_per_labelled must be >= 1, got {r}")
    return r

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = super().batch_spec(batch_size)
    h, w = self.canvas()
    lead = (batch_size, self.ratio)
    for view in ("teacher", "student"):
      spec[f"{view}_image"] = jax.ShapeDtypeStruct((*lead, h, w, 3), jnp.float32)
      spec[f"{view}_hw"] = jax.ShapeDtypeStruct((*lead, 2), jnp.int32)
      spec[f"{view}_matrix"] = jax.ShapeDtypeStruct((*lead, 3, 3), jnp.float32)
    return spec

  def train_transform(self):
    task = self.config.task
    scale_range = tuple(tuple(int(v) for v in s) for s in task.scale_range)
    reader = self._reader(train=True)
    return GroupTransform(
        views.SupervisedView(canvas=self.canvas(), reader=reader, scale_range=scale_range,
                             flip_prob=float(task.flip_prob),
                             max_instances=int(task.max_instances)),
        views.UnlabelledViews(canvas=self.canvas(), reader=reader, scale_range=scale_range,
                              flip_prob=float(task.flip_prob)))

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    from swin_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
    config, task = self.config, self.config.task
    train = sources.open_source(config.dataset, config.dataset.train_split)
    labelled, rest = self.split_positions(train)
    if task.unlabelled_split:
      unlabelled_source = sources.open_source(config.dataset, task.unlabelled_split)
      unlabelled = np.arange(len(unlabelled_source))
    else:
      unlabelled_source, unlabelled = train, rest
    if len(labelled) < config.batch_size or len(unlabelled) < config.batch_size * self.ratio:
      raise ValueError(f"{len(labelled)} labelled and {len(unlabelled)} unlabelled images "
                       f"cannot fill a batch of {config.batch_size} labelled + "
                       f"{config.batch_size * self.ratio} unlabelled")
    logging.info("soft teacher: %d labelled, %d unlabelled images", len(labelled),
                 len(unlabelled))

    def stream(source, positions, purpose):
      return (grain.MapDataset.source(_Subset(source, positions))
              .shuffle(seed=pipeline.seed_for(config.seed, purpose)).repeat(None))

    groups = _Groups(stream(train, labelled, "shuffle"),
                     stream(unlabelled_source, unlabelled, "shuffle_unlabelled"), self.ratio)
    examples = groups.random_map(self.train_transform(),
                                 seed=pipeline.seed_for(config.seed, "augment"))
    return iter(pipeline.batched_train_dataset(config, examples, process_index,
                                               process_count))

  def split_positions(self, source: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled, unlabelled)`` positions in the train split (see the module docstring)."""
    task = self.config.task
    n = len(source)
    if task.split_annotations:
      path = detection.coco_lib.resolve_path(task.split_annotations, self._data_dir())
      labelled_ids, _ = semi_split.coco_partial_split(path, int(task.fold),
                                                      float(task.labelled_percent))
      ids = self._source_image_ids(source)
      labelled = np.flatnonzero(np.isin(ids, labelled_ids))
    else:
      labelled = semi_split.labelled_positions(n, int(task.fold), float(task.labelled_percent))
    rest = np.setdiff1d(np.arange(n), labelled)
    return labelled, rest

  def _source_image_ids(self, source: Sequence[Any]) -> np.ndarray:
    """Every example's image id (read once and cached beside the dataset)."""
    path = os.path.join(self._data_dir(), "soft_teacher_image_ids",
                        f"{self.config.dataset.name.replace('/', '_')}_"
                        f"{self.config.dataset.train_split}.npy")
    if os.path.exists(path):
      return np.load(path)
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    reader = self._reader(train=False)
    ids = np.asarray([reader(source[i])["image_id"] for i in
                      tqdm(range(len(source)), desc="image ids for the labelled split")],
                     np.int64)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path + ".tmp.npy", ids)
    os.replace(path + ".tmp.npy", path)
    return ids

  # --- teacher state ---

  def init_extra(self, params):
    return {"teacher": jax.tree.map(jnp.copy, params)}

  def post_update(self, state):
    # During a burn-in the teacher is a copy of the student (momentum 0); the official
    # warm-up formula then starts again at the burn-in's end.
    since = jnp.maximum(state.step - int(self.config.task.burn_in_steps), 0)
    momentum = pl.ema_momentum(since, float(self.config.task.ema_momentum))
    teacher = pl.ema_update(state.extra["teacher"], state.params, momentum)
    return state.replace(extra={**state.extra, "teacher": teacher})

  # --- the loss ---

  def loss_fn(self, model, params, model_state, batch, rng, extra=None, step=None):
    """``sup + unsup_weight * unsup`` (module docstring); ``step`` (the state's step, or
    None: past any burn-in) gates the unsupervised part during ``task.burn_in_steps``."""
    task = self.config.task
    sup_rng, *unsup_keys = jax.random.split(rng, 4)
    sup_loss, (sup_terms, _) = super().loss_fn(model, params, model_state, batch, sup_rng)
    metrics = {SUP_PREFIX + k: v for k, v in sup_terms.items()}
    weight = float(task.unsup_weight)
    if weight == 0.0:
      # The supervised-only baseline on the very same labelled stream: the teacher and the
      # student's unlabelled passes would only be multiplied by zero.
      return sup_loss, (metrics, model_state)

    def unsup():
      return self._unsup_loss(model, params, model_state, batch, extra["teacher"],
                              *unsup_keys)

    burn_in = int(task.burn_in_steps)
    if burn_in > 0 and step is not None:
      # Only the taken branch runs: the burn-in steps cost what supervised steps cost.
      unsup_loss, unsup_metrics = jax.lax.cond(
          step >= burn_in, unsup,
          lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(unsup)))
    else:
      unsup_loss, unsup_metrics = unsup()
    return sup_loss + weight * unsup_loss, ({**metrics, **unsup_metrics}, model_state)

  def _unsup_loss(self, model, params, model_state, batch, teacher_params, unsup_dropout,
                  jitter_key, samplers):
    """``(unsup, metrics)``: steps 2-3 of the module docstring on the unlabelled views."""
    task = self.config.task
    teacher = {"params": teacher_params, **model_state}
    student = {"params": params, **model_state}
    rpn_sampler, rcnn_sampler = self.samplers()
    unlabelled = {k: batch[k].reshape(-1, *batch[k].shape[2:]) for k in VIEW_KEYS}
    n = unlabelled["teacher_image"].shape[0]
    pseudo, teacher_feats = model.apply(
        teacher, unlabelled["teacher_image"], unlabelled["teacher_hw"], jitter_key,
        initial_threshold=float(task.initial_score_threshold),
        jitter_times=int(task.jitter_times), jitter_scale=float(task.jitter_scale),
        method=teacher_pseudo_labels)
    to_student = box_transform.relative_matrix(unlabelled["teacher_matrix"],
                                               unlabelled["student_matrix"])
    boxes = box_transform.transform_boxes(pseudo["boxes"], to_student,
                                          unlabelled["student_hw"])
    kept = pseudo["valid"] & pl.box_sizes_ok(boxes)
    rpn_valid = kept & (pseudo["scores"] > float(task.rpn_pseudo_threshold))
    cls_valid = kept & (pseudo["scores"] > float(task.cls_pseudo_threshold))
    reg_valid = (kept & (pseudo["uncertainty"] < float(task.reg_pseudo_threshold))
                 if task.box_jitter else cls_valid)

    rpn_keys, cls_keys, reg_keys = (jax.random.split(k, n)
                                    for k in jax.random.split(samplers, 3))
    unsup_terms, cls_score, cls_targets = model.apply(
        student, unlabelled["student_image"], unlabelled["student_hw"], boxes,
        pseudo["classes"], rpn_valid, cls_valid, reg_valid, rpn_keys, cls_keys, reg_keys,
        rpn_sampler=rpn_sampler, rcnn_sampler=rcnn_sampler, method=student_unsup_losses,
        rngs={"dropout": unsup_dropout})
    weights = cls_targets.label_weights
    if task.soft_weights:
      to_teacher = box_transform.relative_matrix(unlabelled["student_matrix"],
                                                 unlabelled["teacher_matrix"])
      teacher_rois = box_transform.transform_boxes(cls_targets.rois, to_teacher,
                                                   unlabelled["teacher_hw"])
      teacher_scores, _ = model.apply(teacher, teacher_feats, teacher_rois,
                                      method="roi_outputs")
      background = jax.nn.softmax(teacher_scores.astype(jnp.float32), axis=-1)[..., -1]
      weights = pl.soft_label_weights(weights, cls_targets.labels, background,
                                      model.num_classes)
    unsup_terms["loss_cls"] = pl.soft_cls_loss(cls_score, cls_targets.labels, weights)

    metrics = {**{UNSUP_PREFIX + k: v for k, v in unsup_terms.items()},
               "pseudo_boxes": jnp.sum(pseudo["valid"]) / n,
               "rpn_pseudo_boxes": jnp.sum(rpn_valid) / n,
               "cls_pseudo_boxes": jnp.sum(cls_valid) / n,
               "reg_pseudo_boxes": jnp.sum(reg_valid) / n}
    return sum(unsup_terms.values()), metrics


# ------------------------------------------------------------------------------ host data


@dataclasses.dataclass(frozen=True)
class GroupTransform:
  """``(group, rng) -> example``: the labelled view's keys plus the ``r`` unlabelled
  examples' views stacked on a new axis (``VIEW_KEYS``)."""
  labelled: Any
  unlabelled: Any

  def __call__(self, group: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    out = self.labelled(group["labelled"], rng)
    pairs = [self.unlabelled(example, rng) for example in group["unlabelled"]]
    out.update({k: np.stack([p[k] for p in pairs]) for k in VIEW_KEYS})
    return out


@dataclasses.dataclass(frozen=True)
class _Subset(Sequence):
  """``source`` restricted to ``positions``."""
  source: Sequence[Any]
  positions: np.ndarray

  def __len__(self) -> int:
    return len(self.positions)

  def __getitem__(self, index):
    return self.source[int(self.positions[index])]


class _Groups(grain.MapDataset):
  """Element ``i``: labelled example ``i`` and unlabelled examples ``[i r, (i + 1) r)``."""

  def __init__(self, labelled: grain.MapDataset, unlabelled: grain.MapDataset, ratio: int):
    super().__init__([labelled, unlabelled])
    self._labelled, self._unlabelled, self._ratio = labelled, unlabelled, ratio

  def __len__(self) -> int:
    return min(len(self._labelled), len(self._unlabelled) // self._ratio)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    r = self._ratio
    return {"labelled": self._labelled[index],
            "unlabelled": [self._unlabelled[index * r + j] for j in range(r)]}

  def __str__(self) -> str:
    return f"_Groups(1 labelled : {self._ratio} unlabelled)"
