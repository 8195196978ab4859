"""The training loop: mesh -> data -> model -> sharded state -> restore-or-init -> steps.

``train_and_evaluate(config, workdir)`` is what ``python -m swin_jax.main`` runs, for every
task: what differs per task (model, transforms, loss, eval, post-update hook) comes from
``swin_jax.tasks.get_task(config)``; this loop, the step, sharding, checkpoints,
preemption and logging exist once. A run
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
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from swin_jax import tasks
from swin_jax.data import pipeline
from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train import config as config_lib
from swin_jax.train import init_from as init_from_lib
from swin_jax.train import optimizer as optimizer_lib
from swin_jax.train import sharding as sharding_lib
from swin_jax.train import state as state_lib
from swin_jax.train import step as step_lib
from swin_jax.train.metrics_writer import MetricsWriter


@dataclasses.dataclass
class RunResult:
  """What ``train_and_evaluate`` ends with: the final state and the last metrics."""
  state: state_lib.TrainState
  metrics: dict[str, float]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; no checkpoint of that state was written."""


class Preemption:
  """Decides, the same way on every host, the step at which a preempted run saves and stops.

  Multi-host (``jax.distributed``): JAX's preemption service. Its coordination agent
  catches SIGTERM on any host and ``multihost_utils.reached_preemption_sync_point(step)``
  then turns True on every host at the same step; no collective runs per step.
  One process: a SIGTERM handler sets a flag that the next step boundary sees.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multihost = jax.process_count() > 1

  def __enter__(self) -> Preemption:
    if not self._multihost:  # the JAX service owns SIGTERM in multi-host runs
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint at the current step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if not self._multihost:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    """Whether to save and stop now, before training step ``step + 1``."""
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


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


def evaluate(task, eval_fn, state, config, mesh) -> dict[str, float]:
  """The task's metrics over this run's whole eval split (every host reads its share).

  Prints ``eval compiles: N`` when the pass compiled ``eval_fn`` for N new batch shapes (a
  task with several static eval shapes, e.g. segmentation's mmseg test canvases, compiles
  one program per shape; later passes reuse them).
  """
  del config  # the task reads its own
  evaluator = task.evaluator()
  programs = _compiled_programs(eval_fn)
  for batch in task.eval_batches(jax.process_index(), jax.process_count()):
    outputs = eval_fn(state.params, state.model_state, sharding_lib.global_batch(batch, mesh))
    evaluator.update(jax.device_get(outputs))
  compiled = _compiled_programs(eval_fn) - programs
  if compiled:
    logging.info("eval compiles: %d", compiled)
    print(f"eval compiles: {compiled}", flush=True)
  return evaluator.result()


def _compiled_programs(jitted) -> int:
  """How many programs a ``jax.jit`` function has compiled (0 if JAX does not say)."""
  cache_size = getattr(jitted, "_cache_size", None)
  return int(cache_size()) if callable(cache_size) else 0


def _note_train_compiles(train_fn, known: int, batch) -> int:
  """Prints ``train compiles: N`` when the step has just compiled its N-th program. ``jit``
  compiles one per distinct batch shape (a task whose batches take a few static shapes,
  e.g. detection's ``task.train_buckets``, compiles one per shape); returns N."""
  count = _compiled_programs(train_fn)
  if count > known:
    image = batch.get("image") if isinstance(batch, dict) else None
    shape = f" (image {tuple(image.shape)})" if image is not None else ""
    logging.info("train compiles: %d%s", count, shape)
    print(f"train compiles: {count}{shape}", flush=True)
  return max(count, known)


def sharded_train_step(task, model, tx, schedule, state_sharding: Any,
                       mesh: jax.sharding.Mesh):
  """The jitted ``train_step``: state sharded as ``state_sharding`` and donated, the batch
  split over the mesh, metrics replicated. ``(state, batch) -> (state, metrics)``."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(
      functools.partial(step_lib.train_step, task=task, model=model, tx=tx,
                        schedule=schedule),
      in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh)),
      out_shardings=(state_sharding, replicated), donate_argnums=0)


def sharded_eval_step(task, model, state_sharding: Any, mesh: jax.sharding.Mesh):
  """The jitted ``eval_step``: ``(params, model_state, batch) -> outputs`` (replicated)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(functools.partial(step_lib.eval_step, task=task, model=model),
                 in_shardings=(state_sharding.params, state_sharding.model_state,
                               sharding_lib.batch_sharding(mesh)),
                 out_shardings=replicated)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
  """Runs (or resumes) the training described by ``config`` in ``workdir``.

  Returns the final (sharded) state and the last logged train and eval metrics.
  """
  config_lib.validate_config(config)
  task = tasks.get_task(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  mesh = build_mesh(config)

  # --- data ---
  train_examples = pipeline.train_examples(config)
  total_steps, steps_per_epoch = derive_total_steps(config, train_examples)
  eval_every = config.eval_every_steps if config.eval_every_steps >= 0 else steps_per_epoch

  # --- model and optimizer ---
  model = task.build_model()
  tx, schedule = optimizer_lib.make_optimizer(config, total_steps, steps_per_epoch)

  def init_state(rng):
    init_rng, state_rng = jax.random.split(rng)
    params, model_state = tasks.base.split_variables(task.init_variables(model, init_rng))
    return state_lib.create_train_state(params, tx, state_rng, model_state,
                                        task.init_extra(params))

  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init_state, rng)
  state_sharding = sharding_lib.state_shardings(abstract_state, mesh,
                                                config.fsdp_min_weight_size)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, state_sharding)

  # --- restore or initialise ---
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
  train_iter = task.train_iterator(jax.process_index(), jax.process_count())
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(latest, abstract_state)
    train_iter.set_state(data_state)
    logging.info("resumed from step %d of %s", latest, workdir)
    print(f"resuming from checkpoint at step {latest}", flush=True)
  else:
    state = jax.jit(init_state, out_shardings=state_sharding)(rng)
    if config.init_from:
      state = _init_from(config, model, tx, state, state_sharding, task)
  if is_main:
    _write_run_config(workdir, config)

  # --- compiled steps ---
  train_fn = sharded_train_step(task, model, tx, schedule, state_sharding, mesh)
  eval_fn = sharded_eval_step(task, model, state_sharding, mesh)

  writer = MetricsWriter(workdir, total_steps, config.batch_size, is_main)
  step = int(jax.device_get(state.step))
  last: dict[str, Any] = {}
  overrides = config_lib.model_overrides(config)
  with_overrides = f" with {overrides}" if overrides else ""
  print(f"training {config.model.name} ({task.name}){with_overrides}: {total_steps} steps "
        f"({steps_per_epoch} per epoch) on mesh {dict(mesh.shape)}, workdir {workdir}",
        flush=True)

  train_programs = 0

  def save(at_step: int, force: bool = False) -> None:
    checkpointer.save(at_step, state, train_iter.get_state(), force=force)

  try:
    with Preemption() as preemption:
      while step < total_steps:
        if preemption.reached(step):
          save(step, force=True)
          checkpointer.wait()
          print(f"preempted: saved step {step}; rerun the same command to resume", flush=True)
          return RunResult(state, last)
        batch = sharding_lib.global_batch(next(train_iter), mesh)
        state, metrics = train_fn(state, batch)
        train_programs = _note_train_compiles(train_fn, train_programs, batch)
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
        if (eval_every > 0 and step % eval_every == 0) or step == total_steps:
          eval_metrics = evaluate(task, eval_fn, state, config, mesh)
          writer.write(step, eval_metrics)
          print(f"eval at step {step}: " +
                " | ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()), flush=True)
          last.update(eval_metrics)
          writer.reset_clock()
    if task.writes_figures and step == total_steps:
      _write_figures(task, model, state, workdir, step, is_main)
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  return RunResult(state, last)


def _write_figures(task, model, state, workdir: str, step: int, is_main: bool) -> None:
  """The task's end-of-training figures, drawn by the main process from gathered params
  (every process takes part in the gather)."""
  params, model_state = multihost_utils.process_allgather((state.params, state.model_state),
                                                          tiled=True)
  if is_main:
    task.write_figures(model, params, model_state, workdir, step)


def _init_from(config, model, tx, state, state_sharding, task):
  """``state`` with its params replaced by those of ``config.init_from`` (fresh optimizer).

  A classifier source fills a classifier whole; into a task model it fills the backbone,
  and what it does not cover (heads, feature norms) keeps this run's own init.
  """
  # The run's own init is what uncovered params keep; gathered to the host (every process
  # holds the whole tree: process_allgather of fully replicated or sharded arrays).
  own = multihost_utils.process_allgather(state.params, tiled=True)
  params, report = init_from_lib.load_initial(config.init_from, model,
                                              config.init_from_label_space,
                                              fallback_params=own,
                                              scope=config.init_from_scope)
  print(report.summary(), flush=True)
  params = jax.device_put(params, state_sharding.params)
  state = jax.jit(
      lambda s, p: state_lib.create_train_state(p, tx, s.rng, s.model_state,
                                                task.init_extra(p)),
      out_shardings=state_sharding)(state, params)
  print(f"initialised params from {config.init_from}", flush=True)
  return state
