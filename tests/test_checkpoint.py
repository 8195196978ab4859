"""Checkpointer: exact sharded round trips, keep-N, async saves, incomplete steps ignored."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from orbax.checkpoint._src.path import atomicity

from swin_jax.train import checkpoint as ckpt_lib
from swin_jax.train import sharding

MIN_SIZE = 256  # the (16, 64) kernel and its Adam moments shard; the rest replicates
TX = optax.adamw(1e-3, weight_decay=0.05)


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array


def make_state() -> TrainState:
  """A state after one AdamW update, so every leaf holds distinctive values."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"dense": {"kernel": jax.random.normal(k1, (16, 64)),
                      "bias": jax.random.normal(k2, (64,))}}
  opt_state = TX.init(params)
  updates, opt_state = TX.update(params, opt_state, params)
  return TrainState(step=jnp.int32(7), params=optax.apply_updates(params, updates),
                    opt_state=opt_state, rng=jax.random.PRNGKey(42))


def abstract_state(mesh):
  shapes = jax.eval_shape(make_state)
  shardings = sharding.state_shardings(shapes, mesh, MIN_SIZE)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def sharded_state(mesh):
  return jax.jit(make_state, out_shardings=jax.tree.map(lambda s: s.sharding,
                                                        abstract_state(mesh)))()


def assert_same(restored, expected, target):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for r, e, t in zip(jax.tree.leaves(restored), jax.tree.leaves(expected),
                     jax.tree.leaves(target)):
    assert r.dtype == e.dtype
    assert np.array_equal(np.asarray(r), np.asarray(e))
    assert r.sharding.is_equivalent_to(t.sharding, r.ndim)


def test_round_trip_is_exact_and_keeps_or_changes_the_mesh(tmp_path):
  mesh = sharding.make_mesh((4, 2))
  state = sharded_state(mesh)
  assert state.params["dense"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp")
  data_state = {"epoch": 1, "position": [3, 5], "seed": 0}
  with ckpt_lib.Checkpointer(tmp_path, keep=3) as ckpt:
    assert ckpt.save(7, state, data_state)
    ckpt.wait()
    assert ckpt.latest_step() == 7
    target = abstract_state(mesh)
    restored, restored_data = ckpt.restore(7, target)
    assert isinstance(restored, TrainState)
    assert_same(restored, state, target)
    assert restored_data == data_state
    # Written under (4, 2), read back onto a pure data-parallel (8, 1) mesh.
    other = abstract_state(sharding.make_mesh((8, 1)))
    restored, _ = ckpt.restore(None, other)
    assert_same(restored, state, other)
    assert restored.params["dense"]["kernel"].sharding.mesh.shape["data"] == 8


def test_restore_target_needs_shardings(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"x": jnp.ones(3)}, None)
    with pytest.raises(ValueError, match="has no sharding"):
      ckpt.restore(1, {"x": jax.ShapeDtypeStruct((3,), jnp.float32)})


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
  """A workdir reused with another config: the error names the step, the checkpoint folder
  and the config that wrote it, and what to do."""
  mesh = sharding.make_mesh((-1, 1))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, {"norm": {"scale": jnp.ones(48)}}, None)
    ckpt.wait()
    wider = {"norm": {"scale": jax.ShapeDtypeStruct((64,), jnp.float32, sharding=replicated)}}
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"step 3 .*checkpoints does not fit .*config\.json.*fresh --workdir"):
      ckpt.restore(3, wider)


def test_keeps_only_the_newest(tmp_path):
  state = {"x": jnp.arange(4.0)}
  with ckpt_lib.Checkpointer(tmp_path, keep=2) as ckpt:
    for step in (1, 2, 3, 4):
      ckpt.save(step, state, {"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]


def test_save_is_async_and_wait_completes_it(tmp_path, monkeypatch):
  # Hold orbax's final commit (marker + rename) until the test releases it.
  release = threading.Event()
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def held_finalize(self):
    await asyncio.to_thread(release.wait, 30)
    return await finalize(self)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", held_finalize)
  mesh = sharding.make_mesh((4, 2))
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    start = time.time()
    assert ckpt.save(3, sharded_state(mesh), {"position": 1})
    assert time.time() - start < 20, "save blocked on the commit"
    step_dir = tmp_path / "checkpoints" / "3"
    assert not step_dir.exists()           # still in 3.orbax-checkpoint-tmp
    assert ckpt.latest_step() is None      # a save in flight is not a checkpoint yet
    release.set()
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert (step_dir / ckpt_lib.COMMIT_FILE).exists()


def test_incomplete_steps_are_ignored(tmp_path, caplog):
  root = tmp_path / "checkpoints"
  state = {"x": jnp.arange(4.0)}
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"step": 1})
    ckpt.save(2, state, {"step": 2})
  # orbax marks a committed step with this file (the check below relies on it).
  assert (root / "2" / "commit_success.txt").exists()
  # A newer step that never committed: a copy that lost its marker and metadata...
  shutil.copytree(root / "2", root / "3")
  (root / "3" / "commit_success.txt").unlink()
  (root / "3" / "_CHECKPOINT_METADATA").unlink()
  # ...and orbax's own tmp dir from a crash mid-write.
  shutil.copytree(root / "2", root / "4.orbax-checkpoint-tmp")
  caplog.set_level(logging.WARNING)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2
    assert "checkpoints/3 has no commit_success.txt" in caplog.text
    assert (root / "3.incomplete").exists()
    # Later saves are not blocked by the bogus newer step.
    assert ckpt.save(3, {"x": jnp.arange(4.0) + 1}, {"step": 3})
    ckpt.wait()
    assert ckpt.latest_step() == 3
    target = {"x": jax.ShapeDtypeStruct((4,), jnp.float32,
                                        sharding=jax.sharding.SingleDeviceSharding(
                                            jax.devices()[0]))}
    restored, data = ckpt.restore(3, target)
    np.testing.assert_array_equal(restored["x"], np.arange(4.0) + 1)
    assert data == {"step": 3}
    # An uncommitted dir that appears while running is skipped, not restored.
    shutil.copytree(root / "3", root / "5")
    (root / "5" / "commit_success.txt").unlink()
    ckpt._manager.reload()
    assert ckpt.latest_step() == 3
    with pytest.raises(FileNotFoundError, match="step 5"):
      ckpt.restore(5, target)
  assert not (root / "4.orbax-checkpoint-tmp").exists()


def test_no_checkpoint(tmp_path):
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
      ckpt.restore(None, {"x": jax.ShapeDtypeStruct((1,), jnp.float32)})
