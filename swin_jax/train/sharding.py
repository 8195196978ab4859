"""Device mesh and shardings: ``jax.jit`` + ``NamedSharding`` over ``('data', 'fsdp')``.

Pure data parallel is ``mesh_shape=(-1, 1)``; FSDP shards every large array (params and
the optimizer moments alike, by shape alone) over ``'fsdp'``. Batches are split over
both axes, so every device holds a different slice of the batch.

    mesh = make_mesh(config.mesh_shape)
    abstract = jax.eval_shape(init_state, rng)
    shardings = state_shardings(abstract, mesh, config.fsdp_min_weight_size)
    state = jax.jit(init_state, out_shardings=shardings)(rng)
    batch = global_batch(host_batch, mesh)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

PyTree = Any

MESH_AXES = ("data", "fsdp")


def make_mesh(mesh_shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(data, fsdp)`` mesh over ``devices`` (default: all devices).

  One entry may be -1: all remaining devices. Axes are ``Auto`` (the classic GSPMD mode;
  ``jax.make_mesh`` would default to ``Explicit`` in jax 0.10).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh_shape {tuple(mesh_shape)} must give sizes of {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh_shape {shape}: sizes must be positive, with at most one -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if n % known:
      raise ValueError(f"mesh_shape {shape} does not divide the {n} devices")
    shape = tuple(n // known if s == -1 else s for s in shape)
  if math.prod(shape) != n:
    raise ValueError(f"mesh_shape {shape} needs {math.prod(shape)} devices but there are "
                     f"{n}; use -1 for 'all remaining devices'")
  return Mesh(np.array(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
  """``P()`` or ``P(None, .., 'fsdp', ..)`` for an array of ``shape`` (see fsdp_sharding)."""
  shape = tuple(shape)
  if fsdp_size <= 1 or not shape or math.prod(shape) < min_size:
    return P()
  divisible = [d for d, s in enumerate(shape) if s % fsdp_size == 0]
  if not divisible:
    return P()
  # Largest dimension, the last one on ties (max over (size, index)).
  dim = max(divisible, key=lambda d: (shape[d], d))
  return P(*([None] * dim), "fsdp")


def fsdp_sharding(shape: Sequence[int], mesh: Mesh, min_size: int) -> NamedSharding:
  """Where an array of ``shape`` lives.

  Arrays with at least ``min_size`` elements split their largest dimension divisible by
  the fsdp axis size (the last such on ties) over ``'fsdp'``; everything else, including
  arrays no dimension of which divides, is replicated.
  """
  return NamedSharding(mesh, fsdp_spec(shape, mesh.shape["fsdp"], min_size))


def state_shardings(abstract_tree: PyTree, mesh: Mesh, min_size: int) -> PyTree:
  """A ``NamedSharding`` per leaf of any pytree of arrays / ``ShapeDtypeStruct``s.

  The rule sees shapes only, so AdamW's mu/nu (and MultiSteps' accumulators) land where
  their param does, and scalars (step, counts) and PRNG keys are replicated.
  """
  return jax.tree.map(lambda x: fsdp_sharding(np.shape(x), mesh, min_size), abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension over both mesh axes, other dimensions whole."""
  return NamedSharding(mesh, P(MESH_AXES))


def global_batch(local_batch: PyTree, mesh: Mesh) -> PyTree:
  """Host-local numpy arrays ``(B_local, ...)`` -> global ``jax.Array``s ``(B_global, ...)``.

  Each process passes its own share (``B_global = B_local * process_count``); works the
  same with one process.
  """
  sharding = batch_sharding(mesh)
  local_devices = len(mesh.local_devices)

  def to_global(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local_devices:
      raise ValueError(f"a host batch of shape {x.shape} cannot be split over this host's "
                       f"{local_devices} devices; make the per-host batch size a multiple "
                       f"of {local_devices}")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(to_global, local_batch)
