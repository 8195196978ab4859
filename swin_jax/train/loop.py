"""The training loop: mesh -> data -> model -> sharded state -> restore-or-init -> steps.

``train_and_evaluate(config, workdir)`` is what ``python -m swin_jax.main`` runs. A run
started on a workdir that has checkpoints continues from the newest complete one, with
the input pipeline at the same position, so its losses equal the uninterrupted run's.
SIGTERM (preemption) saves at the current step and returns normally.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from swin_jax.data import pipeline
from swin_jax.models import registry
from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train import config as config_lib
from swin_jax.train import init_from as init_from_lib
from swin_jax.train import optimizer as optimizer_lib
from swin_jax.train import sharding as sharding_lib
from swin_jax.train import state as state_lib
from swin_jax.train import step as step_lib
from swin_jax.train.metrics_writer import MetricsWriter


# Fault injection for the resume tests: "STEP:SIGNAL" (e.g. "6:SIGKILL") makes the run send
# itself SIGNAL right after finishing STEP, through the same path as an external signal.
SELF_SIGNAL_ENV = "SWIN_JAX_SELF_SIGNAL"


def _self_signal_at() -> tuple[int, int] | None:
  spec = os.environ.get(SELF_SIGNAL_ENV)
  if not spec:
    return None
  step, name = spec.split(":")
  return int(step), int(getattr(signal, name))


@dataclasses.dataclass
class RunResult:
  """What ``train_and_evaluate`` ends with: the final state and the last metrics."""
  state: state_lib.TrainState
  metrics: dict[str, float]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; no checkpoint of that state was written."""


class _PreemptionFlag:
  """Set by SIGTERM; the loop checks it between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint at the current step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)

  def any_process(self) -> bool:
    """True if any process was signalled (all must save the same step together)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    flags = multihost_utils.process_allgather(np.array([self.requested]))
    return bool(np.any(flags))


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The ('data', 'fsdp') mesh; a fully specified smaller shape uses the first devices."""
  shape = tuple(config.mesh_shape)
  devices = jax.devices()
  if -1 not in shape and int(np.prod(shape)) < len(devices):
    logging.warning("mesh_shape %s uses %d of %d devices", shape, np.prod(shape), len(devices))
    devices = devices[:int(np.prod(shape))]
  return sharding_lib.make_mesh(shape, devices)


def derive_total_steps(config: ml_collections.ConfigDict, train_examples: int) -> tuple[int, int]:
  """``(total_steps, steps_per_epoch)``: steps from epochs unless total_steps is set."""
  steps_per_epoch = max(1, train_examples // config.batch_size)
  if config.total_steps > 0:
    return int(config.total_steps), steps_per_epoch
  return int(config.num_epochs * steps_per_epoch), steps_per_epoch


def _write_run_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  with open(os.path.join(workdir, init_from_lib.RUN_CONFIG_FILE), "w") as f:
    json.dump(json.loads(config.to_json_best_effort()), f, indent=2)


def _is_finite(metrics: dict[str, float]) -> bool:
  return all(np.isfinite(v) for v in metrics.values())


def evaluate(eval_fn, params, config, mesh) -> dict[str, float]:
  """Top-1/top-5/loss over this run's eval split (every host its share)."""
  totals: dict[str, float] = {}
  for batch in pipeline.eval_iterator(config, jax.process_index(), jax.process_count()):
    sums = jax.device_get(eval_fn(params, sharding_lib.global_batch(batch, mesh)))
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  count = max(totals.get("count", 0.0), 1.0)
  return {f"eval/{k}": totals[k] / count for k in ("top1", "top5", "loss")}


def sharded_train_step(model, tx, schedule, mixup_config: ml_collections.ConfigDict,
                       state_sharding: Any, mesh: jax.sharding.Mesh):
  """The jitted ``train_step``: state sharded as ``state_sharding`` and donated, the batch
  split over the mesh, metrics replicated. ``(state, batch) -> (state, metrics)``."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(
      functools.partial(step_lib.train_step, model=model, tx=tx, schedule=schedule,
                        num_classes=model.num_classes, mixup_config=mixup_config),
      in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh)),
      out_shardings=(state_sharding, replicated), donate_argnums=0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Runs (or resumes) the training described by ``config`` in ``workdir``.

  Returns the final (sharded) state and the last logged train and eval metrics.
  """
  config_lib.validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  mesh = build_mesh(config)

  # --- data ---
  train_examples = pipeline.train_examples(config)
  total_steps, steps_per_epoch = derive_total_steps(config, train_examples)
  eval_every = config.eval_every_steps if config.eval_every_steps >= 0 else steps_per_epoch

  # --- model and optimizer ---
  model = registry.create_model(config.model.name, **config.model.overrides)
  if model.num_classes != config.dataset.num_classes:
    raise ValueError(f"model {config.model.name} has {model.num_classes} classes but dataset "
                     f"{config.dataset.name} has {config.dataset.num_classes}; set "
                     "config.model.overrides.num_classes")
  tx, schedule = optimizer_lib.make_optimizer(config, total_steps, steps_per_epoch)
  image_shape = (1, config.dataset.image_size, config.dataset.image_size, model.in_chans)

  def init_state(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, jnp.zeros(image_shape, jnp.float32))["params"]
    return state_lib.create_train_state(params, tx, state_rng)

  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  state_sharding = sharding_lib.state_shardings(abstract_state, mesh,
                                                config.fsdp_min_weight_size)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)

  # --- restore or initialise ---
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  train_iter = pipeline.train_iterator(config, jax.process_index(), jax.process_count())
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(latest, abstract_state)
    train_iter.set_state(data_state)
    logging.info("resumed from step %d of %s", latest, workdir)
    print(f"resuming from checkpoint at step {latest}", flush=True)
  else:
    state = jax.jit(init_state, out_shardings=state_sharding)(rng)
    if config.init_from:
      params = init_from_lib.load_initial_params(config.init_from, model)
      params = jax.device_put(params, state_sharding.params)
      state = jax.jit(lambda s, p: state_lib.create_train_state(p, tx, s.rng),
                      out_shardings=state_sharding)(state, params)
      print(f"initialised params from {config.init_from}", flush=True)
  if is_main:
    _write_run_config(workdir, config)

  # --- compiled steps ---
  batch_sharding = sharding_lib.batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  train_fn = sharded_train_step(model, tx, schedule, config.mixup, state_sharding, mesh)
  eval_fn = jax.jit(functools.partial(step_lib.eval_step, model=model),
                    in_shardings=(state_sharding.params, batch_sharding),
                    out_shardings=replicated)

  writer = MetricsWriter(workdir, total_steps, config.batch_size, is_main)
  step = int(jax.device_get(state.step))
  last: dict[str, Any] = {}
  overrides = config.model.overrides.to_dict()
  print(f"training {config.model.name}{' with ' + str(overrides) if overrides else ''}: "
        f"{total_steps} steps ({steps_per_epoch} per epoch) on mesh {dict(mesh.shape)}, "
        f"workdir {workdir}", flush=True)

  self_signal = _self_signal_at()

  def save(at_step: int, force: bool = False) -> None:
    checkpointer.save(at_step, state, train_iter.get_state(), force=force)

  try:
    with _PreemptionFlag() as preemption:
      while step < total_steps:
        if preemption.any_process():
          save(step, force=True)
          checkpointer.wait()
          print(f"preempted: saved step {step}; rerun the same command to resume", flush=True)
          return RunResult(state, last)
        batch = sharding_lib.global_batch(next(train_iter), mesh)
        state, metrics = train_fn(state, batch)
        step += 1
        log_now = step % config.log_every_steps == 0 or step == total_steps
        save_now = step % config.checkpoint_every_steps == 0 or step == total_steps
        if log_now or save_now:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if not _is_finite(metrics):
            raise NonFiniteLossError(
                f"non-finite training metrics at step {step}: {metrics}; stopping without "
                f"saving (last checkpoint: step {checkpointer.latest_step()})")
          if log_now:
            writer.write(step, metrics)
            writer.progress(step, metrics)
            last.update(metrics)
        if save_now:
          save(step)
        if self_signal and self_signal[0] == step:
          checkpointer.wait()
          os.kill(os.getpid(), self_signal[1])
        if (eval_every > 0 and step % eval_every == 0) or step == total_steps:
          eval_metrics = evaluate(eval_fn, state.params, config, mesh)
          writer.write(step, eval_metrics)
          print(f"eval at step {step}: " +
                " | ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()), flush=True)
          last.update(eval_metrics)
          writer.reset_clock()
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  return RunResult(state, last)
