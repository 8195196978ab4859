"""The official Swin optimizer recipe in optax: AdamW (or SGD), no-decay mask, schedule, clipping.

    tx, schedule = make_optimizer(config, total_steps, steps_per_epoch)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)

Without a config (a notebook, a script), the same pieces from plain values:

    schedule = lr_schedule("cosine", 1e-3, total_updates=1000, warmup=50, min_lr=1e-5)
    tx = build_optimizer(schedule, weight_decay=0.05, clip_grad_norm=5.0)

Pieces, each matching the official code (``microsoft/Swin-Transformer``: ``main.py``,
``optimizer.py``, ``lr_scheduler.py``; SimMIM ``optimizer.py`` for layer decay):

- learning rates are given per ``reference_batch_size`` images and scaled linearly;
- linear warmup, then timm's ``CosineLRScheduler`` (``warmup_prefix=True``,
  ``cycle_limit=1``) evaluated per optimizer update; or (``warmup_mode='mmcv'``) mmcv 1.x's
  rule, where warmup scales the lr the schedule gives that update (the mmseg recipes, and
  the mmdet ones with ``schedule='step'``: x0.1 at given epochs);
- global-norm clipping, then AdamW whose decoupled weight decay skips, by official param
  name (``config.optimizer.no_decay_1d_and_bias`` / ``no_decay_keywords``), 1-D params,
  biases, position tables and the V2 ``cpb_mlp``/``logit_scale``;
- optional layer-wise lr decay (SimMIM fine-tuning) and gradient accumulation;
- ``optimizer.name='sgd'``: torch ``SGD(momentum, weight_decay)`` with the poly schedule, as
  Swin-Unet's ``trainer.py`` trains (coupled L2 decay added to the gradient, masked by the
  same decay rule, then ``buf = m * buf + g``, ``p -= lr * buf``); ``nesterov=True`` and an
  lr held per epoch (``schedule_every_steps``) as nnU-Net / nnFormer train.

The decay and layer-decay rules work on the official names of the params
(``param_names``), so they give the same answer for the per-block and the scanned
(``scan_blocks=True``) layouts, and for a backbone nested in a task model
(``backbone/...``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

from absl import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from swin_jax.train import param_names

PyTree = Any

# Params named in the official ``no_weight_decay()`` / ``no_weight_decay_keywords()`` of
# V1 (absolute_pos_embed, relative_position_bias_table) and V2 (+ cpb_mlp, logit_scale),
# plus SimMIM's mask_token: the default of ``config.optimizer.no_decay_keywords``, which is
# the source of truth. Matched as substrings of the official dotted name, like the
# official ``check_keywords_in_name``.
NO_DECAY_KEYWORDS = ("absolute_pos_embed", "relative_position_bias_table", "cpb_mlp",
                     "logit_scale", "mask_token")

SCHEDULES = ("cosine", "linear", "constant", "poly", "step")
WARMUP_MODES = ("timm", "timm_absolute", "mmcv")
OPTIMIZERS = ("adamw", "sgd")


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


def warmup_updates(opt_cfg: ml_collections.ConfigDict, total_updates: int,
                   updates_per_epoch: int, grad_accum_steps: int = 1) -> int:
  """Warmup length in optimizer updates: ``warmup_steps // grad_accum_steps`` when
  ``warmup_steps >= 0`` (mmcv's ``warmup_iters``), else ``int(warmup_epochs *
  updates_per_epoch)`` (the official Swin ``int()``); at most half of a shorter run."""
  steps = int(opt_cfg.get("warmup_steps", -1))
  if steps >= 0:
    warmup, unit = steps // grad_accum_steps, f"{steps} steps"
  else:
    warmup = int(opt_cfg.warmup_epochs * updates_per_epoch)
    unit = f"{opt_cfg.warmup_epochs} epochs x {updates_per_epoch}"
  if warmup >= total_updates:
    # A short smoke run of a long recipe (e.g. --config.total_steps=10): warm up over half
    # of it rather than refuse to run.
    logging.warning("warmup (%d updates = %s) >= total updates %d; warming up over %d "
                    "updates instead", warmup, unit, total_updates, total_updates // 2)
    warmup = total_updates // 2
  return warmup


def lr_schedule(kind: str, lr: float, total_updates: int, warmup: int = 0, *,
                warmup_lr: float = 0.0, min_lr: float = 0.0, warmup_mode: str = "timm",
                poly_power: float = 0.9, warmup_ratio: float = 0.0,
                milestones: Sequence[int] = (), gamma: float = 0.1) -> optax.Schedule:
  """The lr as a function of the optimizer update count ``t`` (0 for the first update).

  Plain numbers, no config: ``kind`` is one of ``SCHEDULES``, ``lr``/``warmup_lr``/``min_lr``
  are the values actually used (already scaled to the batch), ``W = warmup`` updates.
  Two warmup rules (``warmup_mode``):

  ``'timm'`` (the Swin classification code; default): warmup is a prefix of the run,
  ``warmup_lr + t * (lr - warmup_lr) / W`` for ``t < W``; after it, with ``u = t - W`` and
  ``T = total_updates - W``:
    cosine:   ``min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * u / T))`` for ``u < T``, and
              ``min_lr`` from ``u = T`` on (timm ``cycle_limit=1``: no restart);
    linear:   ``lr - (lr - min_lr) * min(u / T, 1)``;
    constant: ``lr``;
    poly:     ``lr * max(1 - u / T, 0) ** poly_power`` (Swin-Unet ``trainer.py``; ``min_lr``
              unused). The official loop sets the lr after each step from the finished
              iteration count, so its update ``t >= 1`` runs at ``(1 - (t - 1) / T)``: one
              update behind this formula, a difference of under ``power / T`` relative;
    step:     ``lr * gamma ** #{m in milestones: u >= m}`` (mmcv ``StepLrUpdaterHook``;
              ``min_lr`` unused). Milestones count updates: mmdet's epoch-based
              ``step=[8, 11]`` is ``8 * updates_per_epoch``, ... (mmcv sets an epoch's lr
              at its start, so update ``8 E`` is the first at 0.1x).

  ``'timm_absolute'`` (microsoft/SimMIM's schedulers: timm's without ``warmup_prefix``):
  the same warmup, but the schedule after it runs on the absolute count, ``u = t`` and
  ``T = total_updates`` (so cosine starts just below ``lr`` at ``t = W``, and step
  milestones are absolute: SimMIM's ``MultiStepLRScheduler``, ``bisect_right``).

  ``'mmcv'`` (mmcv 1.x ``LrUpdaterHook``, the mmseg/mmdet forks, ``by_epoch=False``): the
  schedule runs over the whole run, ``u = t`` and ``T = total_updates``, with poly as
  mmcv's ``PolyLrUpdaterHook``, ``(lr - min_lr) * max(1 - t / T, 0) ** poly_power + min_lr``
  (cosine, linear and constant as above); for ``t < W`` linear warmup multiplies *that
  update's* scheduled lr by ``1 - (1 - t / W) * (1 - warmup_ratio)``. ``warmup_lr`` is
  unused. mmcv sets the lr before each iteration from ``runner.iter``, the number of
  finished ones, so update ``t`` here is mmcv's iteration ``t`` exactly.

  The returned ``schedule(t)`` takes a scalar: Python/numpy counts are evaluated in float64
  and give a float (exact values for logging and tests); traced counts (inside jit, as
  optax calls it) give a float32 scalar array.

      schedule = lr_schedule("cosine", 1e-3, total_updates=1000, warmup=50, min_lr=1e-5)
      tx = build_optimizer(schedule)
  """
  if kind not in SCHEDULES:
    raise ValueError(f"schedule {kind!r} is not one of {SCHEDULES}")
  if warmup_mode not in WARMUP_MODES:
    raise ValueError(f"warmup_mode {warmup_mode!r} is not one of {WARMUP_MODES}")
  prefix = warmup_mode == "timm"
  timm_warmup = warmup_mode in ("timm", "timm_absolute")
  # The decay phase: after the warmup prefix (timm), or the whole run (the others).
  decay = total_updates - warmup if prefix else total_updates
  poly_power, ratio = float(poly_power), float(warmup_ratio)
  # timm: warmup_steps = (lr - warmup_lr_init) / warmup_t, then warmup_lr_init + t * step.
  warmup_slope = (lr - warmup_lr) / warmup if warmup else 0.0

  def schedule(count):
    concrete = isinstance(count, (int, np.integer, np.ndarray))
    xp = np if concrete else jnp
    t = xp.asarray(count, dtype=np.float64 if concrete else jnp.float32)
    u = t - warmup if prefix else t
    if kind == "cosine":
      # timm's operation order, (pi * t_curr) / t_i, so float64 values match it exactly.
      after = min_lr + 0.5 * (lr - min_lr) * (1 + xp.cos(math.pi * u / decay))
      after = xp.where(u >= decay, min_lr, after)
    elif kind == "linear":
      after = lr - (lr - min_lr) * xp.minimum(u / decay, 1.0)
    elif kind == "poly" and timm_warmup:
      after = lr * xp.maximum(1.0 - u / decay, 0.0) ** poly_power
    elif kind == "poly":
      # (T - t) / T: exact in float32 near the end, where 1 - t / T cancels.
      after = ((lr - min_lr) * xp.maximum((decay - u) / decay, 0.0) ** poly_power
               + min_lr)
    elif kind == "step":
      passed = sum((u >= m).astype(t.dtype) for m in milestones) if milestones else 0.0 * t
      after = lr * xp.asarray(gamma, t.dtype) ** passed
    else:
      after = xp.full_like(t, lr)
    if timm_warmup:
      during = warmup_lr + t * warmup_slope
    else:
      # mmcv get_warmup_lr('linear'): k = (1 - t / W) * (1 - ratio), lr * (1 - k); the same
      # factor as ratio + (1 - ratio) t / W, which float32 keeps accurate for tiny ratios.
      during = after * (ratio + (1.0 - ratio) * t / max(warmup, 1))
    value = xp.where(t < warmup, during, after)
    return float(value) if concrete and value.ndim == 0 else value

  return schedule


def step_milestones(opt_cfg: ml_collections.ConfigDict, updates_per_epoch: int,
                    grad_accum_steps: int = 1) -> tuple[int, ...]:
  """The 'step' schedule's milestones in updates: ``step_steps`` (iteration-based recipes,
  mmcv's ``IterBasedRunner``: steps of ``grad_accum_steps`` micro-batches each) or else
  ``int(e * updates_per_epoch)`` of ``step_epochs``."""
  steps = tuple(opt_cfg.get("step_steps", ()))
  if steps and tuple(opt_cfg.get("step_epochs", ())):
    raise ValueError("set optimizer.step_steps or optimizer.step_epochs, not both")
  if steps:
    return tuple(int(s) // grad_accum_steps for s in steps)
  return tuple(int(e * updates_per_epoch) for e in opt_cfg.get("step_epochs", ()))


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict, batch_size: int,
                           total_updates: int, updates_per_epoch: int,
                           grad_accum_steps: int = 1) -> optax.Schedule:
  """``lr_schedule`` of ``config.optimizer``: the lr as a function of the update count.

  The rates are ``scaled_learning_rates(opt_cfg, batch_size)``, the warmup
  ``warmup_updates(...)`` updates; ``schedule``, ``warmup_mode``, ``poly_power`` and
  ``warmup_ratio`` come from the config (formulas in ``lr_schedule``), and for ``'step'`` the
  milestones ``step_milestones(...)`` with factor ``step_gamma``.
  """
  if opt_cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule {opt_cfg.schedule!r} is not one of {SCHEDULES}")
  mode = opt_cfg.get("warmup_mode", "timm")
  if mode not in WARMUP_MODES:
    raise ValueError(f"optimizer.warmup_mode {mode!r} is not one of {WARMUP_MODES}")
  lr, warmup_lr, min_lr = scaled_learning_rates(opt_cfg, batch_size)
  warmup = warmup_updates(opt_cfg, total_updates, updates_per_epoch, grad_accum_steps)
  schedule = lr_schedule(opt_cfg.schedule, lr, total_updates, warmup, warmup_lr=warmup_lr,
                         min_lr=min_lr, warmup_mode=mode,
                         poly_power=opt_cfg.get("poly_power", 0.9),
                         warmup_ratio=opt_cfg.get("warmup_ratio", 0.0),
                         milestones=step_milestones(opt_cfg, updates_per_epoch,
                                                    grad_accum_steps),
                         gamma=opt_cfg.get("step_gamma", 0.1))
  every = int(opt_cfg.get("schedule_every_steps", 0)) // grad_accum_steps
  return held_schedule(schedule, every) if every > 1 else schedule


def held_schedule(schedule: optax.Schedule, every: int) -> optax.Schedule:
  """``schedule`` evaluated at ``every * floor(t / every)``: the lr is set once per
  ``every`` updates and held in between (nnU-Net's ``poly_lr(epoch, ...)``, set at the start
  of each 250-iteration epoch)."""
  def held(count):
    return schedule((count // every) * every)
  return held


# ----------------------------------------------------------------------------------------
# Weight decay, decided per official param name.


@dataclasses.dataclass(frozen=True)
class DecayRule:
  """Which params AdamW's decoupled weight decay skips, by official (PyTorch) name.

  ``no_decay_1d_and_bias``: skip params whose official tensor is 1-D or whose name ends in
  ``.bias`` (the classification code's ``set_weight_decay``). ``no_decay_keywords``: skip
  names containing any of these substrings (its ``no_weight_decay[_keywords]()``; the whole
  rule of the mmseg/mmdet forks, which decay biases and BN weights).
  """
  no_decay_1d_and_bias: bool = True
  no_decay_keywords: tuple[str, ...] = NO_DECAY_KEYWORDS

  def __post_init__(self):
    # A bare string would match its characters one by one.
    if isinstance(self.no_decay_keywords, str):
      raise TypeError(f"no_decay_keywords must be a sequence of strings, got the string "
                      f"{self.no_decay_keywords!r}")
    object.__setattr__(self, "no_decay_keywords", tuple(self.no_decay_keywords))

  @classmethod
  def from_config(cls, opt_cfg: ml_collections.ConfigDict | None) -> DecayRule:
    """The rule of ``config.optimizer`` (the defaults where a field is missing)."""
    if opt_cfg is None:
      return cls()
    return cls(bool(opt_cfg.get("no_decay_1d_and_bias", True)),
               tuple(opt_cfg.get("no_decay_keywords", NO_DECAY_KEYWORDS)))

  def decays(self, official_name: str, official_ndim: int) -> bool:
    if self.no_decay_1d_and_bias and (official_ndim == 1 or official_name.endswith(".bias")):
      return False
    return not any(keyword in official_name for keyword in self.no_decay_keywords)


def _as_rule(rule: DecayRule | ml_collections.ConfigDict | None) -> DecayRule:
  return rule if isinstance(rule, DecayRule) else DecayRule.from_config(rule)


def _leaf_decays(info: param_names.ParamNames, rule: DecayRule) -> bool:
  decisions = {name: rule.decays(name, info.official_ndim) for name in info.official}
  if len(set(decisions.values())) > 1:
    decayed = sorted(name for name, decays in decisions.items() if decays)
    kept = sorted(name for name, decays in decisions.items() if not decays)
    raise ValueError(
        f"weight decay differs between the blocks stacked in {'/'.join(info.path)}: "
        f"{decayed} decay, {kept} do not. A scanned stage holds one tensor for all its "
        f"blocks; change no_decay_keywords or train with scan_blocks=False")
  return next(iter(decisions.values()))


def weight_decay_mask(params: PyTree,
                      rule: DecayRule | ml_collections.ConfigDict | None = None) -> PyTree:
  """Same-structure tree of Python bools, True where AdamW's decoupled weight decay applies.

  ``rule``: a ``DecayRule``, a ``config.optimizer`` or None (the classification rule). Each
  leaf is judged by its official name(s) and official rank, so the answer does not depend
  on ``scan_blocks`` or on where the backbone sits in the tree. Leaves may be arrays,
  tracers or ``jax.ShapeDtypeStruct``.
  """
  rule = _as_rule(rule)
  return jax.tree.map(lambda info: _leaf_decays(info, rule), param_names.describe_tree(params),
                      is_leaf=lambda x: isinstance(x, param_names.ParamNames))


def decayed_official_names(params: PyTree,
                           rule: DecayRule | ml_collections.ConfigDict | None = None
                           ) -> set[str]:
  """The official names (stacked leaves expanded per block) that ``rule`` decays."""
  rule = _as_rule(rule)
  infos = jax.tree.leaves(param_names.describe_tree(params),
                          is_leaf=lambda x: isinstance(x, param_names.ParamNames))
  return {name for info in infos if _leaf_decays(info, rule) for name in info.official}


# ----------------------------------------------------------------------------------------
# Layer-wise lr decay.

_STAGE = re.compile(r"layers_(\d+)")
_BLOCK = re.compile(r"blocks_(\d+)")


def layer_id(names: Sequence[str], depths: Sequence[int]) -> int:
  """The official SimMIM ``get_swin_layer`` id of the param at per-block path ``names``.

  ``patch_embed``/``mask_token``: 0; ``layers_i/blocks_j``: ``sum(depths[:i]) + j + 1``;
  ``layers_i/downsample``: ``sum(depths[:i + 1])`` (the id of stage i's last block);
  everything else (final ``norm``, ``head``, and, as in the official code,
  ``absolute_pos_embed``): ``sum(depths) + 1``. ``names`` is relative to the backbone.
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


def _leaf_scale(info: param_names.ParamNames,
                backbones: dict[param_names.Path, tuple[int, ...]],
                decay: float) -> float | np.ndarray:
  # The backbone holding the param; none: a task head, which sits at the top id (scale 1).
  holders = [path for path in backbones if info.path[:len(path)] == path]
  if not holders:
    return 1.0
  root = max(holders, key=len)
  depths = backbones[root]
  top = sum(depths) + 1
  scales = [float(decay ** (top - layer_id(path[len(root):], depths)))
            for path in info.block_paths]
  if not info.stacked:
    return scales[0]
  # One scale per stacked block, broadcast along the leaf's other axes.
  return np.asarray(scales, np.float32).reshape((-1,) + (1,) * info.official_ndim)


def layer_decay_scales(params: PyTree, decay: float) -> PyTree:
  """Same-structure tree of ``decay ** (sum(depths) + 1 - layer_id)`` per param.

  Per-block leaves get a Python float; a scanned leaf ``(n, ...)`` an ``(n, 1, ..., 1)``
  float32 array, block ``2m + k``'s scale at ``[m]``. Ids and depths are those of the
  Swin backbone holding the param (found by structure: root or nested, any layout); the
  head and final norm get 1, the patch embedding ``decay ** (sum(depths) + 1)``, and params
  outside every backbone (task heads) 1. ``decay == 1`` gives all ones.
  """
  infos = param_names.describe_tree(params)
  is_info = lambda x: isinstance(x, param_names.ParamNames)
  if decay == 1:
    return jax.tree.map(lambda _: 1.0, infos, is_leaf=is_info)
  backbones = param_names.find_backbone_params(params)
  if not backbones:
    raise ValueError("layer decay needs the params of a Swin backbone (a subtree holding "
                     "patch_embed and layers_0); found none")
  return jax.tree.map(lambda info: _leaf_scale(info, backbones, decay), infos, is_leaf=is_info)


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its ``layer_decay_scales`` factor (stateless).

  Placed after AdamW it scales that param's lr, decoupled weight decay included, which is
  what the official per-group ``lr = base_lr * scale`` does.
  """

  def update_fn(updates, state, params=None):
    del params
    # Paths and shapes are static, so the scales are constants folded in at trace time.
    scales = layer_decay_scales(updates, decay)
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ----------------------------------------------------------------------------------------
# The optimizer.


def build_optimizer(learning_rate: float | optax.Schedule, *, name: str = "adamw",
                    weight_decay: float = 0.05, b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-8, momentum: float = 0.9, nesterov: bool = False,
                    clip_grad_norm: float = 5.0,
                    decay_rule: DecayRule | None = None, layer_decay: float = 1.0,
                    grad_accum_steps: int = 1) -> optax.GradientTransformation:
  """The Swin optimizer from plain values (defaults: the official AdamW recipe).

  Global-norm clipping (``clip_grad_norm > 0``), then AdamW whose decoupled weight decay
  skips the params ``decay_rule`` exempts (default ``DecayRule()``, the classification rule;
  see ``weight_decay_mask``), or ``name='sgd'`` (torch SGD with coupled, masked L2 decay),
  then layer-wise lr decay (``layer_decay < 1``, Swin params only), and with
  ``grad_accum_steps = k > 1`` an update every k calls on the mean gradient
  (``optax.MultiSteps``; ``learning_rate`` then counts updates, not calls).

  ``learning_rate``: a float or ``schedule(update count)`` (``lr_schedule``). Works on any
  params tree (a Swin, a task model, a head of your own):

      tx = build_optimizer(lr_schedule("cosine", 1e-3, total_updates=100, warmup=10))
      opt_state = tx.init(params)
      updates, opt_state = tx.update(grads, opt_state, params)  # same trees as params
      params = optax.apply_updates(params, updates)
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer name {name!r} is not one of {OPTIMIZERS}")
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
  if not 0 < layer_decay <= 1:
    raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
  rule = decay_rule or DecayRule()
  mask = lambda params: weight_decay_mask(params, rule)
  parts = []
  if clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(clip_grad_norm))
  if name == "sgd":
    # torch.optim.SGD: d_p = g + wd * p (coupled L2, after any clipping, as torch clips
    # .grad before step()), buf = m * buf + d_p (buf = d_p at the first step, which
    # optax's zero-initialised trace gives), p -= lr * buf. No dampening. With nesterov,
    # torch's p -= lr * (d_p + m * buf), which is optax's nesterov trace.
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
    parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
  else:
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=mask))
  if layer_decay < 1:
    parts.append(scale_by_layer_decay(layer_decay))
  tx = optax.chain(*parts)
  if grad_accum_steps == 1:
    return tx
  return optax.MultiSteps(tx, every_k_schedule=grad_accum_steps).gradient_transformation()


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                  Callable[[Any], Any]]:
  """``(tx, schedule)`` for ``config.optimizer`` and the global ``config.batch_size``.

  ``total_steps``/``steps_per_epoch`` count train-step calls (batches). With
  ``grad_accum_steps = k > 1`` the optimizer updates every k batches
  (``optax.MultiSteps``, mean of the k gradients), so the lr schedule runs over
  ``total_steps // k`` updates; ``schedule(batch_step)`` gives the lr for logging.
  The config's values go to ``learning_rate_schedule`` and ``build_optimizer``.
  """
  opt = config.optimizer
  name = opt.get("name", "adamw")
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name {name!r} is not one of {OPTIMIZERS}")
  k = int(opt.grad_accum_steps)
  if k < 1:
    raise ValueError(f"optimizer.grad_accum_steps must be >= 1, got {k}")
  if not 0 < opt.layer_decay <= 1:
    raise ValueError(f"optimizer.layer_decay must be in (0, 1], got {opt.layer_decay}")
  total_updates = total_steps // k
  if total_updates < 1:
    raise ValueError(f"total_steps {total_steps} gives no optimizer update with "
                     f"grad_accum_steps {k}")
  inner = learning_rate_schedule(opt, config.batch_size, total_updates, steps_per_epoch // k,
                                 grad_accum_steps=k)
  tx = build_optimizer(inner, name=name, weight_decay=opt.weight_decay, b1=opt.b1, b2=opt.b2,
                       eps=opt.eps, momentum=opt.get("momentum", 0.9),
                       nesterov=bool(opt.get("nesterov", False)),
                       clip_grad_norm=opt.clip_grad_norm, decay_rule=DecayRule.from_config(opt),
                       layer_decay=opt.layer_decay, grad_accum_steps=k)
  return tx, (inner if k == 1 else lambda step: inner(step // k))
