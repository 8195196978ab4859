"""Mesh, FSDP rule and batch sharding on the 8 simulated CPU devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from swin_jax.train import sharding


@pytest.mark.parametrize("shape, expected", [((8, 1), (8, 1)), ((4, 2), (4, 2)),
                                             ((-1, 2), (4, 2)), ((1, -1), (1, 8))])
def test_make_mesh_shapes(shape, expected):
  mesh = sharding.make_mesh(shape)
  assert mesh.axis_names == ("data", "fsdp")
  assert (mesh.shape["data"], mesh.shape["fsdp"]) == expected
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("shape", [(3, 2), (3, -1), (-1, -1), (8,)])
def test_make_mesh_rejects_shapes_that_do_not_fit(shape):
  with pytest.raises(ValueError, match="mesh_shape"):
    sharding.make_mesh(shape)


def test_mesh_error_names_the_shape_and_the_device_count():
  with pytest.raises(ValueError, match=r"mesh_shape \(3, 2\) needs 6 devices but there are 8"):
    sharding.make_mesh((3, 2))


def test_fsdp_rule():
  mesh = sharding.make_mesh((4, 2))
  assert sharding.fsdp_sharding((256, 1024), mesh, 2**10).spec == P(None, "fsdp")
  assert sharding.fsdp_sharding((1024, 256), mesh, 2**10).spec == P("fsdp")
  assert sharding.fsdp_sharding((64, 64), mesh, 2**10).spec == P(None, "fsdp")  # tie: last
  assert sharding.fsdp_sharding((3, 4, 4, 9), mesh, 2**4).spec == P(None, None, "fsdp")
  assert sharding.fsdp_sharding((1024,), mesh, 2**20).spec == P()          # small
  assert sharding.fsdp_sharding((33, 99), mesh, 1).spec == P()             # no even split
  assert sharding.fsdp_sharding((), mesh, 0).spec == P()
  pure_dp = sharding.make_mesh((8, 1))
  assert sharding.fsdp_sharding((256, 1024), pure_dp, 1).spec == P()


def test_jitted_init_places_params_and_adam_moments():
  mesh = sharding.make_mesh((4, 2))
  tx = optax.adamw(1e-3)

  def init(rng):
    params = {"kernel": jax.random.normal(rng, (256, 1024)), "bias": jnp.zeros((1024,))}
    return params, tx.init(params)

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = sharding.state_shardings(abstract, mesh, min_size=2**16)
  params, opt_state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
  kernel = params["kernel"]
  assert kernel.sharding.spec == P(None, "fsdp")
  assert kernel.sharding.shard_shape(kernel.shape) == (256, 512)
  assert {s.data.shape for s in kernel.addressable_shards} == {(256, 512)}
  assert params["bias"].sharding.is_fully_replicated
  mu = optax.tree_utils.tree_get(opt_state, "mu")
  assert mu["kernel"].sharding.spec == P(None, "fsdp")
  assert optax.tree_utils.tree_get(opt_state, "count").sharding.is_fully_replicated


def test_global_batch_splits_over_all_devices():
  mesh = sharding.make_mesh((4, 2))
  local = {"image": np.arange(16 * 2 * 3, dtype=np.float32).reshape(16, 2, 3),
           "label": np.arange(16, dtype=np.int32)}
  batch = sharding.global_batch(local, mesh)
  image = batch["image"]
  assert image.shape == (16, 2, 3)
  assert image.sharding.spec == P(("data", "fsdp"))
  shards = sorted(image.addressable_shards, key=lambda s: s.index[0].start)
  assert len({s.device for s in shards}) == 8
  for k, shard in enumerate(shards):
    np.testing.assert_array_equal(shard.data, local["image"][2 * k:2 * k + 2])
  np.testing.assert_array_equal(batch["label"], local["label"])


def test_global_batch_rejects_a_batch_that_does_not_split():
  with pytest.raises(ValueError, match="multiple of 8"):
    sharding.global_batch({"x": np.zeros((12, 3))}, sharding.make_mesh((8, 1)))
