"""Checkpoints with orbax: the sharded train state plus the input iterator's position.

    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    step = ckpt.latest_step()                              # None: start from scratch
    if step is not None:
      state, data_state = ckpt.restore(step, abstract_state)   # leaves carry shardings
    ...
    ckpt.save(step, state, data_iter.get_state())          # async: returns at once
    ckpt.close()                                           # waits for the last write

Layout: ``<workdir>/checkpoints/<step>/{state,data}``. ``state`` is any pytree of arrays
(orbax ``StandardSave``), ``data`` a JSON document.

Atomicity. orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and, once every item
is written, puts ``commit_success.txt`` in it and renames it to ``<step>`` (on GCS, where
rename is not atomic, the commit file alone marks completion). A crash mid-write leaves
the tmp directory, which orbax ignores and (``cleanup_tmp_directories``) deletes. But on a
local filesystem orbax treats *any* ``<step>`` directory as complete, so a step directory
without the commit file (an interrupted copy or rsync, a hand-made directory) would be
restored and crash, and, being the newest step, would make orbax skip every later save.
This class therefore only counts steps that have ``commit_success.txt``: at start-up it
moves any other step directory aside to ``<step>.incomplete`` (logging a warning naming
it), and ``latest_step`` only returns committed steps.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

PyTree = Any

# orbax's commit marker (orbax.checkpoint._src.path.atomicity_types.COMMIT_SUCCESS_FILE),
# written into every finalised step directory on every filesystem. tests/test_checkpoint.py
# checks that a real save writes it, so an orbax upgrade that drops it fails loudly.
COMMIT_FILE = "commit_success.txt"
INCOMPLETE_SUFFIX = ".incomplete"


# orbax's replica-parallel save (its default off GPU) cuts every replicated array into one
# slice per replica so that replicas share the writing; each (array shape, device) pair
# compiles its own slice program. For small arrays that costs more than it saves (a tiny
# Swin's 35 params on 8 devices: 280 compiles, ~9 s per new model): slices under 1 MiB are
# not split, the array is written whole by replica 0. Large params still split.
MIN_REPLICA_SLICE_BYTES = 1 << 20
_array_handler_registered = False


def _register_array_handler() -> None:
  """Registers (once) orbax's jax.Array handler with ``MIN_REPLICA_SLICE_BYTES``."""
  global _array_handler_registered  # pylint: disable=global-statement
  if _array_handler_registered:
    return
  default = ocp.type_handlers.get_type_handler(jax.Array)
  ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
          # The default handler's per-host array-metadata store, kept as it was.
          array_metadata_store=getattr(default, "_array_metadata_store", None),
          min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
      override=True)
  _array_handler_registered = True


def is_committed(step_dir: epath.PathLike) -> bool:
  """Whether a step directory is a complete (committed) orbax checkpoint."""
  return (epath.Path(step_dir) / COMMIT_FILE).exists()


def _abstract_with_shardings(tree: PyTree) -> PyTree:
  """Arrays or ``ShapeDtypeStruct``s -> ``ShapeDtypeStruct``s that all carry a sharding."""
  def to_struct(x):
    sharding = getattr(x, "sharding", None)
    if sharding is None:
      raise ValueError(
          f"restore target leaf {x} has no sharding; pass jax.ShapeDtypeStruct(shape, "
          "dtype, sharding=...) leaves (see swin_jax.train.sharding.state_shardings)")
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(to_struct, tree)


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the train state asked for (another model/optimizer)."""


class Checkpointer:
  """Async, atomic, keep-the-newest-N checkpoints of ``(state, data_state)``.

  Every process must make the same calls (orbax synchronises them internally).
  """

  def __init__(self, workdir: epath.PathLike, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    self.directory = epath.Path(workdir) / "checkpoints"
    _register_array_handler()
    self._move_aside_incomplete_steps()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=True,
            # Deletes `<step>.orbax-checkpoint-tmp` left by a crash mid-write.
            cleanup_tmp_directories=True,
            create=True,
        ),
        item_names=("state", "data"),
    )
    self._warned: set[int] = set()

  def _move_aside_incomplete_steps(self) -> None:
    """Renames uncommitted ``<step>`` dirs to ``<step>.incomplete`` so orbax never sees them."""
    if jax.process_index() == 0 and self.directory.exists():
      for path in sorted(self.directory.iterdir()):
        if path.name.isdigit() and path.is_dir() and not is_committed(path):
          target = self.directory / (path.name + INCOMPLETE_SUFFIX)
          if target.exists():
            target = self.directory / f"{path.name}{INCOMPLETE_SUFFIX}-{time.time_ns()}"
          logging.warning(
              "checkpoint %s has no %s (an interrupted write or copy); ignoring it and "
              "moving it to %s", path, COMMIT_FILE, target)
          path.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("swin_jax.Checkpointer:move_aside_incomplete")

  def save(self, step: int, state: PyTree, data_state: Any, force: bool = False) -> bool:
    """Starts an async save of ``state`` and ``data_state`` (JSON) at ``step``.

    Returns once device arrays are copied to host memory; the write finishes in the
    background (``wait()`` blocks for it). Returns False when orbax's policy skips the
    step (a step not newer than the latest saved); ``force=True`` saves regardless.
    """
    try:
      json.dumps(data_state)
    except TypeError as e:
      raise TypeError(f"data_state must be JSON-serialisable (the input iterator's state "
                      f"dict): {e}") from e
    return self._manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data_state)),
        force=force)

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first (a save still in flight is not included)."""
    return [s for s in self._manager.all_steps() if self._committed(s)]

  def latest_step(self) -> int | None:
    """The newest committed step, or None when there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def _committed(self, step: int) -> bool:
    step_dir = self.directory / str(step)
    if is_committed(step_dir):
      return True
    # A missing directory is a save in flight (orbax writes to a tmp dir) or deleted.
    if step_dir.exists() and step not in self._warned and not (
        self._manager.is_saving_in_progress()):
      self._warned.add(step)
      logging.warning("checkpoint %s has no %s; ignoring it", step_dir, COMMIT_FILE)
    return False

  def restore(self, step: int | None, abstract_state: PyTree) -> tuple[PyTree, Any]:
    """``(state, data_state)`` saved at ``step`` (None: the latest).

    ``abstract_state`` has the state's structure with ``jax.ShapeDtypeStruct`` (or array)
    leaves that carry shardings; the arrays come back with exactly those shardings, so a
    checkpoint written under one mesh restores onto another.
    """
    self.wait()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no complete checkpoint under {self.directory}")
    step = int(step)
    if step not in self.all_steps():
      raise FileNotFoundError(f"no complete checkpoint for step {step} under "
                              f"{self.directory}; complete steps: {self.all_steps()}")
    target = _abstract_with_shardings(abstract_state)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                        data=ocp.args.JsonRestore()))
    except (ValueError, KeyError) as e:
      # A workdir reused with another model or optimizer: orbax names only the array.
      raise CheckpointMismatchError(
          f"the checkpoint of step {step} under {self.directory} does not fit this run's "
          f"train state ({type(e).__name__}: {str(e)[:300]}). It was written by another "
          f"config (see {self.directory.parent / 'config.json'}): resume with that config, "
          "or use a fresh --workdir.") from e
    return restored.state, restored.data

  def wait(self) -> None:
    """Blocks until every pending save is committed (and old steps deleted)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
