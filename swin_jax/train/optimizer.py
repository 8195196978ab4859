"""The official Swin optimizer recipe in optax: AdamW, no-decay mask, schedule, clipping.

    tx, schedule = make_optimizer(config, total_steps, steps_per_epoch)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)

Pieces, each matching the official code (``microsoft/Swin-Transformer``: ``main.py``,
``optimizer.py``, ``lr_scheduler.py``; SimMIM ``optimizer.py`` for layer decay):

- learning rates are given per ``reference_batch_size`` images and scaled linearly;
- linear warmup, then timm's ``CosineLRScheduler`` (``warmup_prefix=True``,
  ``cycle_limit=1``) evaluated per optimizer update;
- global-norm clipping, then AdamW whose decoupled weight decay skips 1-D params, biases,
  position tables and the V2 ``cpb_mlp``/``logit_scale``;
- optional layer-wise lr decay (SimMIM fine-tuning) and gradient accumulation.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

from absl import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

PyTree = Any

# Params named in the official ``no_weight_decay()`` / ``no_weight_decay_keywords()`` of
# V1 (absolute_pos_embed, relative_position_bias_table) and V2 (+ cpb_mlp, logit_scale),
# plus SimMIM's mask_token. Matched as substrings of any path component, like the
# official ``check_keywords_in_name``.
NO_DECAY_KEYWORDS = ("absolute_pos_embed", "relative_position_bias_table", "cpb_mlp",
                     "logit_scale", "mask_token")

SCHEDULES = ("cosine", "linear", "constant")


def _path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
  """A ``tree_flatten_with_path`` key path -> its component names as strings."""
  names = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      names.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      names.append(entry.name)
    elif isinstance(entry, jax.tree_util.SequenceKey):
      names.append(str(entry.idx))
    else:
      names.append(str(entry))
  return tuple(names)


# ----------------------------------------------------------------------------------------
# Learning rate.


def scaled_learning_rates(opt_cfg: ml_collections.ConfigDict,
                          batch_size: int) -> tuple[float, float, float]:
  """``(lr, warmup_lr, min_lr)`` scaled linearly to the images per optimizer update.

  Official rule: each base value times ``batch_size * grad_accum_steps /
  reference_batch_size`` (e.g. 5e-4 per 512 -> 1e-3 at 1024).
  """
  if opt_cfg.reference_batch_size <= 0:
    raise ValueError(f"optimizer.reference_batch_size must be positive, got "
                     f"{opt_cfg.reference_batch_size}")
  factor = batch_size * opt_cfg.grad_accum_steps / opt_cfg.reference_batch_size
  return (opt_cfg.base_lr * factor, opt_cfg.warmup_lr * factor, opt_cfg.min_lr * factor)


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict, batch_size: int,
                           total_updates: int, updates_per_epoch: int) -> optax.Schedule:
  """The lr as a function of the optimizer update count (0 for the first update).

  Warmup: ``warmup_lr + t * (lr - warmup_lr) / W`` for ``t < W``, with
  ``W = int(warmup_epochs * updates_per_epoch)`` (the official ``int()``).
  After warmup, with ``u = t - W`` and ``T = total_updates - W``:
    cosine:   ``min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * u / T))`` for ``u < T``, and
              ``min_lr`` from ``u = T`` on (timm ``cycle_limit=1``: no restart);
    linear:   ``lr - (lr - min_lr) * min(u / T, 1)``;
    constant: ``lr``.

  Python/numpy counts are evaluated in float64 (exact values for logging and tests);
  traced counts (inside jit, as optax calls it) in float32.
  """
  if opt_cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule {opt_cfg.schedule!r} is not one of {SCHEDULES}")
  lr, warmup_lr, min_lr = scaled_learning_rates(opt_cfg, batch_size)
  warmup = int(opt_cfg.warmup_epochs * updates_per_epoch)
  if warmup >= total_updates:
    # A short smoke run of a long recipe (e.g. --config.total_steps=10): warm up over half
    # of it rather than refuse to run.
    logging.warning("warmup (%d updates = %s epochs x %d) >= total updates %d; warming up "
                    "over %d updates instead", warmup, opt_cfg.warmup_epochs,
                    updates_per_epoch, total_updates, total_updates // 2)
    warmup = total_updates // 2
  decay = total_updates - warmup
  kind = opt_cfg.schedule
  # timm: warmup_steps = (lr - warmup_lr_init) / warmup_t, then warmup_lr_init + t * step.
  warmup_slope = (lr - warmup_lr) / warmup if warmup else 0.0

  def schedule(count):
    concrete = isinstance(count, (int, np.integer, np.ndarray))
    xp = np if concrete else jnp
    t = xp.asarray(count, dtype=np.float64 if concrete else jnp.float32)
    u = t - warmup
    if kind == "cosine":
      # timm's operation order, (pi * t_curr) / t_i, so float64 values match it exactly.
      after = min_lr + 0.5 * (lr - min_lr) * (1 + xp.cos(math.pi * u / decay))
      after = xp.where(u >= decay, min_lr, after)
    elif kind == "linear":
      after = lr - (lr - min_lr) * xp.minimum(u / decay, 1.0)
    else:
      after = xp.full_like(t, lr)
    value = xp.where(t < warmup, warmup_lr + t * warmup_slope, after)
    return float(value) if concrete and value.ndim == 0 else value

  return schedule


# ----------------------------------------------------------------------------------------
# Weight decay and layer-wise lr decay.


def _decays(names: tuple[str, ...], ndim: int) -> bool:
  if ndim <= 1 or (names and names[-1].endswith("bias")):
    return False
  return not any(key in name for name in names for key in NO_DECAY_KEYWORDS)


def weight_decay_mask(params: PyTree) -> PyTree:
  """Same-structure tree of bools, True where AdamW's decoupled weight decay applies.

  False for params with ``ndim <= 1`` (LayerNorm, biases, q_bias/v_bias), names ending in
  ``bias``, and anything under ``NO_DECAY_KEYWORDS`` (the official no-decay lists). Works
  on arrays or ``jax.ShapeDtypeStruct`` leaves.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, x: _decays(_path_names(path), len(x.shape)), params)


_STAGE = re.compile(r"layers_(\d+)")
_BLOCK = re.compile(r"blocks_(\d+)")


def layer_id(names: Sequence[str], depths: Sequence[int]) -> int:
  """The official SimMIM ``get_swin_layer`` id of the param at path ``names``.

  ``patch_embed``/``mask_token``: 0; ``layers_i/blocks_j``: ``sum(depths[:i]) + j + 1``;
  ``layers_i/downsample``: ``sum(depths[:i + 1])`` (the id of stage i's last block);
  everything else (final ``norm``, ``head``, and, as in the official code,
  ``absolute_pos_embed``): ``sum(depths) + 1``.
  """
  names = tuple(names)
  for k, name in enumerate(names):
    if name in ("patch_embed", "mask_token"):
      return 0
    stage = _STAGE.fullmatch(name)
    if stage is None:
      continue
    i = int(stage.group(1))
    child = names[k + 1] if k + 1 < len(names) else ""
    if i >= len(depths):
      raise ValueError(f"param {'/'.join(names)} is in stage {i} but depths {tuple(depths)} "
                       f"has {len(depths)} stages")
    block = _BLOCK.fullmatch(child)
    if block is not None:
      j = int(block.group(1))
      if j >= depths[i]:
        raise ValueError(f"param {'/'.join(names)} is block {j} of stage {i} but depths "
                         f"{tuple(depths)} gives that stage {depths[i]} blocks")
      return sum(depths[:i]) + j + 1
    if child == "downsample":
      return sum(depths[:i + 1])
    raise ValueError(f"no layer id for param {'/'.join(names)}: layer decay knows "
                     "layers_i/blocks_j/... and layers_i/downsample/...")
  return sum(depths) + 1


def layer_decay_scales(params: PyTree, depths: Sequence[int], decay: float) -> PyTree:
  """Same-structure tree of Python floats: ``decay ** (sum(depths) + 1 - layer_id)``.

  The head and final norm get 1; the patch embedding gets ``decay ** (sum(depths) + 1)``.
  ``decay == 1`` gives all ones.
  """
  top = sum(depths) + 1
  return jax.tree_util.tree_map_with_path(
      lambda path, _: float(decay ** (top - layer_id(_path_names(path), depths))), params)


def scale_by_layer_decay(depths: Sequence[int], decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its ``layer_decay_scales`` factor (stateless).

  Placed after AdamW it scales that param's lr, decoupled weight decay included, which is
  what the official per-group ``lr = base_lr * scale`` does.
  """
  depths = tuple(int(d) for d in depths)

  def update_fn(updates, state, params=None):
    del params
    # Paths are static, so the scales are Python floats folded in at trace time.
    scales = layer_decay_scales(updates, depths, decay)
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ----------------------------------------------------------------------------------------
# The optimizer.


def _model_depths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  from swin_jax.models import registry  # Local: keeps this module free of model imports.
  overrides = config.model.overrides
  overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
  return tuple(registry.model_config(config.model.name, **overrides)["depths"])


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                  Callable[[Any], Any]]:
  """``(tx, schedule)`` for ``config.optimizer`` and the global ``config.batch_size``.

  ``total_steps``/``steps_per_epoch`` count train-step calls (batches). With
  ``grad_accum_steps = k > 1`` the optimizer updates every k batches
  (``optax.MultiSteps``, mean of the k gradients), so the lr schedule runs over
  ``total_steps // k`` updates; ``schedule(batch_step)`` gives the lr for logging.
  """
  opt = config.optimizer
  k = int(opt.grad_accum_steps)
  if k < 1:
    raise ValueError(f"optimizer.grad_accum_steps must be >= 1, got {k}")
  if not 0 < opt.layer_decay <= 1:
    raise ValueError(f"optimizer.layer_decay must be in (0, 1], got {opt.layer_decay}")
  total_updates = total_steps // k
  if total_updates < 1:
    raise ValueError(f"total_steps {total_steps} gives no optimizer update with "
                     f"grad_accum_steps {k}")
  inner = learning_rate_schedule(opt, config.batch_size, total_updates, steps_per_epoch // k)

  parts = []
  if opt.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.clip_grad_norm))
  parts.append(optax.adamw(inner, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay, mask=weight_decay_mask))
  if opt.layer_decay < 1:
    parts.append(scale_by_layer_decay(_model_depths(config), opt.layer_decay))
  tx = optax.chain(*parts)
  if k == 1:
    return tx, inner
  tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  return tx, lambda step: inner(step // k)
