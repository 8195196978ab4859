"""The training config schema: every field a run reads, its type and a neutral default.

Recipe numbers (learning rates, epochs, augmentation strengths) live in ``configs/*.py``;
this module only names the fields, so that a misspelt field is rejected by name.

    config = base_config()        # the complete schema
    ...                           # a configs/*.py file fills in its recipe
    validate_config(config)       # unknown or missing fields -> ValueError naming them
"""

from __future__ import annotations

import ml_collections

ConfigDict = ml_collections.ConfigDict

# Fields whose contents are free-form (validated elsewhere): model constructor overrides.
_FREE_FORM = ("model.overrides",)


def base_config() -> ConfigDict:
  """The full schema with neutral defaults."""
  c = ConfigDict()
  c.model = ConfigDict(dict(
      name="swin_tiny_patch4_window7_224",
      # Any SwinTransformer field: num_classes, img_size, window_size, drop_path_rate, dtype...
      overrides=ConfigDict(),
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
  c.aug = ConfigDict(dict(
      random_resized_crop=True,
      crop_scale=(0.08, 1.0),
      crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
      hflip=0.5,
      randaugment="",                # timm-style spec, e.g. 'rand-m9-mstd0.5-inc1'; '' = off
      reprob=0.0,                    # random erasing probability ('pixel' mode, one box)
  ))
  c.mixup = ConfigDict(dict(
      mixup_alpha=0.0,
      cutmix_alpha=0.0,
      prob=1.0,
      switch_prob=0.5,
      label_smoothing=0.0,
  ))
  c.optimizer = ConfigDict(dict(
      # Learning rates are given per `reference_batch_size` images and scaled linearly to
      # batch_size * grad_accum_steps, like the official code (base values per 512).
      base_lr=5e-4,
      warmup_lr=5e-7,
      min_lr=5e-6,
      reference_batch_size=512,
      warmup_epochs=20.0,
      schedule="cosine",             # 'cosine' | 'linear' | 'constant' (after warmup)
      weight_decay=0.05,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_grad_norm=5.0,            # 0 disables
      layer_decay=1.0,               # < 1: layer-wise lr decay (SimMIM fine-tuning)
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
  """Rejects fields the schema does not know (typos) and fields it needs but lacks."""
  schema = _flat_keys(base_config())
  given = _flat_keys(config)
  unknown = sorted(set(given) - set(schema))
  missing = sorted(set(schema) - set(given))
  if unknown or missing:
    lines = [f"unknown config field {k!r}" for k in unknown]
    lines += [f"missing config field {k!r}" for k in missing]
    raise ValueError("invalid config:\n  " + "\n  ".join(lines) +
                     "\n(the schema is swin_jax/train/config.py:base_config)")
