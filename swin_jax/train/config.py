"""The training config schema: every field a run reads, its type and a neutral default.

Recipe numbers (learning rates, epochs, augmentation strengths) live in ``configs/**.py``;
this module only names the fields, so that a misspelt field is rejected by name.

    config = base_config("classification")   # the generic schema + that task's section
    ...                                      # a configs/ file fills in its recipe
    validate_config(config)                  # unknown or missing fields -> ValueError

The generic part (model, dataset, optimizer, steps, mesh, checkpoints) is the same for every
task; ``config.task`` holds ``name`` plus the fields of that task
(``swin_jax.tasks.<task>.section_defaults()``), validated against them.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from swin_jax import tasks
from swin_jax.models import registry

ConfigDict = ml_collections.ConfigDict

# Fields whose contents are validated elsewhere: model constructor overrides (by the model
# registry, against the named model's own fields).
_FREE_FORM = ("model.overrides",)


def _placeholder(default: Any) -> Any:
  """An unset (None) field that the command line can still set, typed like ``default``."""
  if isinstance(default, (bool, int, float, str, tuple)):
    return config_dict.placeholder(type(default))
  if isinstance(default, type) and default.__module__.startswith("jax"):
    return config_dict.placeholder(str)    # dtypes: 'float32', 'bfloat16'
  return None


def model_override_fields() -> ConfigDict:
  """Every constructor field of every registered model, unset.

  A locked config only accepts command-line values for fields it has, so every model field
  is present (None = "the model's own value"), e.g.
  ``--config.model.overrides.dtype=bfloat16`` or ``...attention_impl=dot_product``.
  """
  fields = ConfigDict()
  for cls in registry.model_classes():
    for name, default in registry.constructor_fields(cls).items():
      placeholder = _placeholder(default)
      if placeholder is not None and name not in fields:
        fields[name] = placeholder
  return fields


def model_overrides(config: ConfigDict) -> dict[str, Any]:
  """The model overrides a config sets (its unset fields dropped)."""
  return {k: v for k, v in config.model.overrides.to_dict().items() if v is not None}


def base_config(task: str = "classification") -> ConfigDict:
  """The full schema of a ``task`` run with neutral defaults."""
  c = ConfigDict()
  c.task = tasks.task_class(task).section_defaults()
  c.task.name = task
  c.model = ConfigDict(dict(
      name="swin_tiny_patch4_window7_224",
      # Any field of the model's class: num_classes, img_size, window_size, dtype...
      overrides=model_override_fields(),
  ))
  c.dataset = ConfigDict(dict(
      name="imagenet2012",           # a TFDS name (ArrayRecord build, see README)
      data_dir="",                   # '' -> TFDS default (TFDS_DATA_DIR or ~/tensorflow_datasets)
      train_split="train",
      eval_split="validation",
      num_classes=1000,
      image_size=224,
      eval_crop=True,                # resize 256/224*S then centre crop; False: direct resize
      num_workers=0,                 # grain worker processes per host (0: in-process)
      read_threads=8,                # threads per process reading/augmenting; prefetch 2x
  ))
  c.optimizer = ConfigDict(dict(
      name="adamw",                  # 'adamw' | 'sgd' (torch SGD: coupled L2, momentum)
      # Learning rates are given per `reference_batch_size` images and scaled linearly to
      # batch_size * grad_accum_steps, like the official code (base values per 512).
      base_lr=5e-4,
      warmup_lr=5e-7,
      min_lr=5e-6,
      reference_batch_size=512,
      warmup_epochs=20.0,
      warmup_steps=-1,               # >= 0: warmup length in steps (mmcv's warmup_iters),
                                     # instead of warmup_epochs
      # 'timm': warmup from warmup_lr to lr, then the schedule (the Swin classification
      # code); 'mmcv': the schedule over the whole run, its lr scaled during warmup by
      # 1 - (1 - t / W) * (1 - warmup_ratio) (mmcv 1.x, the mmseg/mmdet recipes);
      # 'timm_absolute': timm's warmup, then the schedule on the absolute step (SimMIM).
      warmup_mode="timm",
      warmup_ratio=0.1,              # 'mmcv' only: the factor at t = 0 (mmcv's default)
      schedule="cosine",             # 'cosine' | 'linear' | 'constant' | 'poly' | 'step'
      poly_power=0.9,                # 'poly': lr * (1 - t / T) ** poly_power ('mmcv': to min_lr)
      step_epochs=(),                # 'step': lr * step_gamma at each of these epochs (mmdet
      step_gamma=0.1,                # lr_config step=[8, 11]); floats, in epochs of the run
      step_steps=(),                 # 'step', iteration-based recipes: the milestones in
                                     # steps instead (Soft Teacher's step=[120000, 160000])
      schedule_every_steps=0,        # > 0: the lr changes only every this many updates
                                     # (nnU-Net sets it once per 250-iteration epoch)
      weight_decay=0.05,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      momentum=0.9,                  # SGD only (AdamW uses b1/b2)
      nesterov=False,                # SGD only: torch's nesterov=True (nnU-Net, nnFormer)
      clip_grad_norm=5.0,            # 0 disables
      layer_decay=1.0,               # < 1: layer-wise lr decay (SimMIM fine-tuning)
      # Which params skip weight decay, by official (PyTorch) name, whatever the layout:
      # the classification code skips 1-D params and biases plus these keywords; the
      # mmseg/mmdet forks skip only names containing 'norm', 'absolute_pos_embed' or
      # 'relative_position_bias_table' (and decay biases and BN weights).
      no_decay_1d_and_bias=True,
      no_decay_keywords=("absolute_pos_embed", "relative_position_bias_table", "cpb_mlp",
                         "logit_scale", "mask_token"),
      grad_accum_steps=1,
  ))
  c.batch_size = 1024                # global, over all hosts and devices
  c.eval_batch_size = 0              # 0 -> batch_size
  c.num_epochs = 300.0
  c.total_steps = -1                 # -1 -> num_epochs * train examples // batch_size
  c.seed = 0
  c.log_every_steps = 100
  c.eval_every_steps = -1            # -1 -> once per epoch; 0 -> only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.mesh_shape = (-1, 1)             # sizes of ('data', 'fsdp'); -1 = all remaining devices
  c.fsdp_min_weight_size = 2**18     # params with fewer elements stay replicated
  c.init_from = ""                   # converted-params dir or PyTorch checkpoint
  # Label space of init_from's 21,841-class head, for the 22K->1K map: 'auto' (a swin_jax
  # run dir: from its dataset; anything else: 'official'), 'official' (the official Swin
  # 22K head order) or 'fall11' (sorted fall11 synsets: swin_jax's ImageNet-22K builder).
  c.init_from_label_space = "auto"
  # What init_from fills: 'auto' (the rules of swin_jax.train.init_from: a task model takes
  # the source's backbone) or 'model' (every param from a source of this very model, strictly:
  # mmdet / mmseg ``load_from`` of a same-config checkpoint, e.g. a supervised burn-in).
  c.init_from_scope = "auto"
  c.distributed = False              # call jax.distributed.initialize() (multi-host)
  return c


def _flat_keys(config: ConfigDict, prefix: str = "") -> dict[str, type]:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ConfigDict) and name not in _FREE_FORM:
      out.update(_flat_keys(value, name + "."))
    else:
      out[name] = type(value)
  return out


def validate_config(config: ConfigDict) -> None:
  """Rejects fields the schema does not know (typos) and fields it needs but lacks.

  The ``task`` section is checked against the schema of the task it names.
  """
  schema = _flat_keys(base_config(config.task.name))
  given = _flat_keys(config)
  unknown = sorted(set(given) - set(schema))
  missing = sorted(set(schema) - set(given))
  if unknown or missing:
    lines = [f"unknown config field {k!r}" for k in unknown]
    lines += [f"missing config field {k!r}" for k in missing]
    raise ValueError("invalid config:\n  " + "\n  ".join(lines) +
                     "\n(the schema is swin_jax/train/config.py:base_config)")
