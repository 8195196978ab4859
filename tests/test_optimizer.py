"""The optimizer recipe (spec section 5) against timm / torch.optim where they exist."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from swin_jax.models import SwinTransformer
from swin_jax.models import scan_layout
from swin_jax.train import config as config_lib
from swin_jax.train import optimizer as opt_lib

TINY = dict(img_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
            num_classes=10)


def make_config(**optimizer):
  config = config_lib.base_config()
  config.batch_size = 512
  config.optimizer.update(optimizer)
  return config


def tiny_params(**overrides):
  model = SwinTransformer(**{**TINY, **overrides})
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return shapes["params"]


def flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


# ---------------------------------------------------------------------------------------
# Learning rates.


def test_learning_rates_scale_linearly_with_images_per_update():
  opt = make_config().optimizer
  np.testing.assert_allclose(opt_lib.scaled_learning_rates(opt, 1024), (1e-3, 1e-6, 1e-5))
  opt.grad_accum_steps = 2
  np.testing.assert_allclose(opt_lib.scaled_learning_rates(opt, 512), (1e-3, 1e-6, 1e-5))


def timm_lrs(lr, warmup_lr, min_lr, warmup, total, steps):
  """The official scheduler: timm CosineLRScheduler stepped per iteration."""
  import torch
  from timm.scheduler.cosine_lr import CosineLRScheduler
  torch_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
  scheduler = CosineLRScheduler(torch_opt, t_initial=total - warmup, lr_min=min_lr,
                                warmup_lr_init=warmup_lr, warmup_t=warmup, cycle_limit=1,
                                t_in_epochs=False, warmup_prefix=True)
  out = []
  for t in range(steps):
    scheduler.step_update(t)
    out.append(torch_opt.param_groups[0]["lr"])
  return np.array(out)


def test_cosine_schedule_matches_timm_per_iteration():
  # 10 warmup + 40 cosine updates, then 5 more past the end (timm stays at min_lr).
  opt = make_config(warmup_epochs=2.0).optimizer
  schedule = opt_lib.learning_rate_schedule(opt, 1024, total_updates=50, updates_per_epoch=5)
  expected = timm_lrs(1e-3, 1e-6, 1e-5, warmup=10, total=50, steps=55)
  ours = np.array([schedule(t) for t in range(55)])
  assert np.max(np.abs(ours - expected) / expected) < 1e-9
  assert ours[0] == 1e-6 and ours[10] == 1e-3 and ours[50] == ours[54] == 1e-5
  # Inside jit (as optax calls it) the same curve in float32.
  traced = jax.jit(jax.vmap(schedule))(jnp.arange(55))
  np.testing.assert_allclose(traced, expected, rtol=1e-5)


def test_linear_and_constant_schedules_after_warmup():
  linear = opt_lib.learning_rate_schedule(make_config(warmup_epochs=1.0, schedule="linear")
                                          .optimizer, 512, 30, 10)
  np.testing.assert_allclose([linear(t) for t in (0, 5, 10, 20, 30, 40)],
                             [5e-7, 5e-7 + 5 * (5e-4 - 5e-7) / 10, 5e-4,
                              (5e-4 + 5e-6) / 2, 5e-6, 5e-6], rtol=1e-12)
  constant = opt_lib.learning_rate_schedule(make_config(warmup_epochs=1.0,
                                                        schedule="constant").optimizer,
                                            512, 30, 10)
  assert [constant(t) for t in (10, 29, 100)] == [5e-4] * 3


def test_warmup_longer_than_the_run_is_shortened_to_half_of_it():
  """A smoke run of a long recipe still warms up, then decays, instead of refusing."""
  schedule = opt_lib.learning_rate_schedule(make_config(warmup_epochs=2.0).optimizer, 512,
                                            20, 10)
  values = [schedule(t) for t in range(21)]
  assert values[0] == pytest.approx(5e-7)
  assert values[10] == pytest.approx(5e-4)       # warmup ends at 20 // 2 updates
  assert max(values) == pytest.approx(5e-4)
  assert values[20] == pytest.approx(5e-6)


def test_schedule_errors_name_the_problem():
  with pytest.raises(ValueError, match="'exponential'"):
    opt_lib.learning_rate_schedule(make_config(schedule="exponential").optimizer, 512, 20, 10)


# ---------------------------------------------------------------------------------------
# Weight-decay mask and layer decay.


def test_weight_decay_mask_on_swin_v1_params():
  mask = flat(opt_lib.weight_decay_mask(tiny_params(ape=True)))
  decayed = sorted(k for k, v in mask.items() if v)
  kernels = [f"layers_{i}/blocks_{j}/{m}/kernel" for i in range(2) for j in range(2)
             for m in ("attn/proj", "attn/qkv", "mlp/fc1", "mlp/fc2")]
  assert decayed == sorted(kernels + ["head/kernel", "layers_0/downsample/reduction/kernel",
                                      "patch_embed/proj/kernel"])
  # The 2-D and 3-D tables are excluded by name, not by rank.
  assert not mask["absolute_pos_embed"]
  assert not mask["layers_0/blocks_0/attn/relative_position_bias_table"]


def test_weight_decay_mask_on_swin_v2_names():
  s = jax.ShapeDtypeStruct
  params = {"layers_0": {"blocks_0": {"attn": {
      "qkv": {"kernel": s((16, 48), jnp.float32)},
      "q_bias": s((16,), jnp.float32), "v_bias": s((16,), jnp.float32),
      "logit_scale": s((2, 1, 1), jnp.float32),
      "cpb_mlp_0": {"kernel": s((2, 512), jnp.float32), "bias": s((512,), jnp.float32)},
      "cpb_mlp_2": {"kernel": s((512, 2), jnp.float32)},
  }}}}
  mask = flat(opt_lib.weight_decay_mask(params))
  assert [k for k, v in mask.items() if v] == ["layers_0/blocks_0/attn/qkv/kernel"]


def test_weight_decay_mask_is_the_same_in_every_layout_and_nesting():
  """The official names decayed do not depend on scan_blocks or on a ``backbone/`` prefix;
  the old rank rule decayed the stacked (2-D) norm scales."""
  per_block = opt_lib.decayed_official_names(tiny_params(depths=(2, 4), ape=True))
  scanned_params = tiny_params(depths=(2, 4), ape=True, scan_blocks=True)
  assert opt_lib.decayed_official_names(scanned_params) == per_block
  nested = {"backbone": scanned_params, "head": {"kernel": jnp.ones((4, 3)),
                                                 "bias": jnp.ones((3,))}}
  assert opt_lib.decayed_official_names(nested) == (
      {f"backbone.{name}" for name in per_block} | {"head.weight"})
  assert "layers.1.blocks.3.norm1.weight" not in per_block
  mask = flat(opt_lib.weight_decay_mask(scanned_params))
  assert mask["layers_1/block_pairs/block1/mlp/fc1/kernel"] is True
  assert mask["layers_1/block_pairs/block1/norm1/scale"] is False


def test_weight_decay_mask_reads_the_rule_from_the_config():
  params = tiny_params(scan_blocks=True)
  config = make_config(no_decay_1d_and_bias=False, no_decay_keywords=("norm",))
  mask = flat(opt_lib.weight_decay_mask(params, config.optimizer))
  assert mask["layers_0/block_pairs/block0/attn/qkv/bias"] is True
  assert mask["layers_0/block_pairs/block0/attn/relative_position_bias_table"] is True
  assert mask["layers_0/block_pairs/block0/norm2/scale"] is False
  assert mask["layers_0/downsample/norm/bias"] is False
  assert mask["head/bias"] is True


def test_a_rule_that_splits_a_stacked_leaf_is_an_error():
  params = tiny_params(depths=(2, 4), scan_blocks=True)
  rule = opt_lib.DecayRule(no_decay_keywords=("layers.1.blocks.2.",))
  with pytest.raises(ValueError, match="differs between the blocks stacked in "
                     "layers_1/block_pairs/block0/attn/proj/kernel"):
    opt_lib.weight_decay_mask(params, rule)
  # Per block the same rule is fine.
  assert "layers.1.blocks.2.mlp.fc1.weight" not in opt_lib.decayed_official_names(
      tiny_params(depths=(2, 4)), rule)
  with pytest.raises(TypeError, match="sequence of strings"):
    opt_lib.DecayRule(no_decay_keywords="norm")


def test_layer_ids_follow_official_simmim_rules():
  ids = {k: opt_lib.layer_id(k.split("/"), (2, 2)) for k in flat(tiny_params(ape=True))}
  assert ids["patch_embed/proj/kernel"] == ids["patch_embed/norm/scale"] == 0
  assert ids["layers_0/blocks_0/attn/qkv/kernel"] == 1
  assert ids["layers_0/blocks_1/norm2/bias"] == 2
  assert ids["layers_0/downsample/reduction/kernel"] == 2   # = last block of stage 0
  assert ids["layers_0/downsample/norm/scale"] == 2
  assert ids["layers_1/blocks_0/mlp/fc1/kernel"] == 3
  assert ids["layers_1/blocks_1/attn/relative_position_bias_table"] == 4
  # Not matched by the official rules -> num_layers + 1 (scale 1).
  assert ids["norm/scale"] == ids["head/kernel"] == ids["absolute_pos_embed"] == 5
  assert opt_lib.layer_id(("params", "mask_token"), (2, 2)) == 0


def test_layer_decay_scales():
  params = tiny_params()
  scales = flat(opt_lib.layer_decay_scales(params, 0.5))
  assert scales["patch_embed/proj/kernel"] == 0.5**5
  assert scales["layers_1/blocks_1/mlp/fc2/bias"] == 0.5
  assert scales["head/kernel"] == 1.0
  assert set(flat(opt_lib.layer_decay_scales(params, 1.0)).values()) == {1.0}
  with pytest.raises(ValueError, match="block 1 of stage 1 but depths"):
    opt_lib.layer_id(("layers_1", "blocks_1", "mlp", "fc2", "bias"), (2, 1))
  with pytest.raises(ValueError, match="needs the params of a Swin backbone"):
    opt_lib.layer_decay_scales({"dense": {"kernel": jnp.ones((2, 2))}}, 0.5)


def test_layer_decay_scales_along_the_stacked_axis():
  """Scanned stage of 4 blocks: block0 stacks blocks 0, 2 and block1 blocks 1, 3."""
  params = tiny_params(depths=(2, 4), scan_blocks=True)
  scales = flat(opt_lib.layer_decay_scales(params, 0.5))
  top = 2 + 4 + 1
  qkv = "layers_1/block_pairs/block{}/attn/qkv/kernel"
  assert scales[qkv.format(0)].shape == (2, 1, 1)
  np.testing.assert_array_equal(scales[qkv.format(0)].ravel(), [0.5**(top - 3), 0.5**(top - 5)])
  np.testing.assert_array_equal(scales[qkv.format(1)].ravel(), [0.5**(top - 4), 0.5**(top - 6)])
  table = scales["layers_0/block_pairs/block1/attn/relative_position_bias_table"]
  assert table.shape == (1, 1, 1) and table.item() == 0.5**(top - 2)
  assert scales["layers_0/downsample/reduction/kernel"] == 0.5**(top - 2)
  assert scales["patch_embed/proj/kernel"] == 0.5**top and scales["head/kernel"] == 1.0


# ---------------------------------------------------------------------------------------
# make_optimizer.


def test_decay_mask_effect_on_one_update():
  config = make_config(warmup_epochs=0.0, weight_decay=0.1)
  tx, schedule = opt_lib.make_optimizer(config, total_steps=10, steps_per_epoch=5)
  params = {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  lr = schedule(0)
  assert lr == 5e-4
  np.testing.assert_array_equal(new["dense"]["bias"], params["dense"]["bias"])
  np.testing.assert_allclose(new["dense"]["kernel"], 2.0 - lr * 0.1 * 2.0, rtol=1e-7)


def test_clipping_bounds_the_global_norm_adam_sees():
  config = make_config(warmup_epochs=0.0, clip_grad_norm=5.0, b1=0.9)
  tx, _ = opt_lib.make_optimizer(config, total_steps=10, steps_per_epoch=5)
  params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4,))}
  grads = {"a": jnp.full((4, 4), 30.0), "b": jnp.full((4,), -40.0)}  # norm ~ 144
  _, state = tx.update(grads, tx.init(params), params)
  # Adam's first moment after one step is (1 - b1) * the gradient it was given.
  mu = optax.tree_utils.tree_get(state, "mu")
  np.testing.assert_allclose(optax.tree.norm(mu), 0.1 * 5.0, rtol=1e-6)


def test_accumulating_two_batches_equals_one_step_on_the_mean_gradient():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  g1, g2, g3, g4 = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                 params) for _ in range(4)]
  # Same images per update: 2 x 256 accumulated vs one batch of 512.
  accum_cfg = make_config(warmup_epochs=1.0, grad_accum_steps=2)
  accum_cfg.batch_size = 256
  tx2, sched2 = opt_lib.make_optimizer(accum_cfg, total_steps=20, steps_per_epoch=4)
  tx1, sched1 = opt_lib.make_optimizer(make_config(warmup_epochs=1.0), total_steps=10,
                                       steps_per_epoch=2)
  p2, s2 = params, tx2.init(params)
  p1, s1 = params, tx1.init(params)
  for a, b in ((g1, g2), (g3, g4)):
    u, s2 = tx2.update(a, s2, p2)
    assert all(np.all(x == 0) for x in jax.tree.leaves(u))     # no update mid-accumulation
    p2 = optax.apply_updates(p2, u)
    u, s2 = tx2.update(b, s2, p2)
    p2 = optax.apply_updates(p2, u)
    mean = jax.tree.map(lambda x, y: (x + y) / 2, a, b)
    u, s1 = tx1.update(mean, s1, p1)
    p1 = optax.apply_updates(p1, u)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), p2, p1)
  assert [sched2(t) for t in range(8)] == [sched1(t // 2) for t in range(8)]


def test_one_adamw_update_matches_torch():
  import torch
  config = make_config(warmup_epochs=0.0, schedule="constant", clip_grad_norm=0.0, base_lr=1e-2,
                       weight_decay=0.05, b1=0.8, b2=0.95, eps=1e-6)
  tx, schedule = opt_lib.make_optimizer(config, total_steps=10, steps_per_epoch=5)
  rng = np.random.default_rng(1)
  w = rng.normal(size=(3, 4)).astype(np.float32)
  grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2)]

  tw = torch.nn.Parameter(torch.tensor(w))
  torch_opt = torch.optim.AdamW([tw], lr=schedule(0), betas=(0.8, 0.95), eps=1e-6,
                                weight_decay=0.05)
  params, state = {"w": jnp.asarray(w)}, None
  state = tx.init(params)
  for g in grads:   # two steps: bias correction at t = 1 and t = 2
    tw.grad = torch.tensor(g)
    torch_opt.step()
    updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["w"], tw.detach().numpy(), atol=1e-6, rtol=0)


def test_layer_decay_scales_each_update():
  # Depths (2, 2) are read from the tree: its highest block index per stage.
  names = ("patch_embed/proj/kernel", "layers_0/blocks_1/mlp/fc1/kernel",
           "layers_0/downsample/reduction/kernel", "layers_1/blocks_0/attn/qkv/bias",
           "layers_1/blocks_1/mlp/fc2/kernel", "norm/scale", "head/kernel")
  params = flax.traverse_util.unflatten_dict({k: jnp.full((2, 2), 0.5) for k in names},
                                             sep="/")
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.1, p.dtype), params)
  plain = make_config(warmup_epochs=0.0)
  decayed = make_config(warmup_epochs=0.0, layer_decay=0.5)

  def one_update(config):
    tx, _ = opt_lib.make_optimizer(config, total_steps=10, steps_per_epoch=5)
    return tx.update(grads, tx.init(params), params)[0]

  u1, u2 = flat(one_update(plain)), flat(one_update(decayed))
  expected = dict(zip(names, (0.5**5, 0.5**3, 0.5**3, 0.5**2, 0.5, 1.0, 1.0)))
  for name, scale in expected.items():
    np.testing.assert_allclose(u2[name], u1[name] * scale, rtol=1e-6)


def random_tree(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), tree)


@pytest.mark.parametrize("nested", [False, True], ids=["root", "nested"])
def test_scanned_layer_decay_update_is_the_per_block_update_restacked(nested):
  """Same params and grads in both layouts, layer decay 0.8: per-block ids along the
  stacked axis, and (nested) the task head outside the backbone at the top id."""
  depths = (2, 4)
  if nested:
    from nested_models import tiny_nested_model
    depths = (2, 4, 2)
    models = [tiny_nested_model(depths=depths, num_heads=(1, 2, 4), scan_blocks=scan)
              for scan in (False, True)]
    root, size = ("backbone",), 64
  else:
    models = [SwinTransformer(**{**TINY, "depths": depths, "scan_blocks": scan})
              for scan in (False, True)]
    root, size = (), 32
  images = jnp.zeros((1, size, size, 3))
  params = random_tree(jax.eval_shape(models[0].init, jax.random.key(0), images)["params"], 0)
  grads = random_tree(params, 1)
  restack = lambda tree: scan_layout.stack_blocks_at(tree, root, depths)
  scanned_shapes = jax.eval_shape(models[1].init, jax.random.key(0), images)["params"]
  assert (jax.tree.map(lambda x: x.shape, restack(params))
          == jax.tree.map(lambda x: x.shape, scanned_shapes))

  def one_update(layer_decay, params, grads):
    config = make_config(warmup_epochs=0.0, weight_decay=0.05, layer_decay=layer_decay)
    tx, _ = opt_lib.make_optimizer(config, total_steps=10, steps_per_epoch=5)
    # Compiled once: op-by-op dispatch over ~100 leaves of distinct shapes is slow.
    return jax.jit(lambda p, g: tx.update(g, tx.init(p), p)[0])(params, grads)

  per_block = one_update(0.8, params, grads)
  scanned = one_update(0.8, restack(params), restack(grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12),
               scanned, restack(per_block))
  # And the per-block update carries the official SimMIM scales.
  plain = flat(one_update(1.0, params, grads))
  per_block = flat(per_block)
  prefix = "/".join(root + ("",)) if root else ""
  top = sum(depths) + 1
  expected = {"patch_embed/proj/kernel": 0.8**top,
              "layers_1/blocks_3/attn/qkv/kernel": 0.8**(top - (2 + 3 + 1)),
              "layers_1/blocks_0/norm1/scale": 0.8**(top - 3),
              "layers_0/downsample/reduction/kernel": 0.8**(top - 2)}
  for name, scale in expected.items():
    np.testing.assert_allclose(per_block[prefix + name], plain[prefix + name] * scale, rtol=1e-6)
  np.testing.assert_allclose(per_block["head/kernel"], plain["head/kernel"], rtol=1e-6)


# ---------------------------------------------------------------------------------------
# SGD + poly (Swin-Unet's trainer.py).


def test_poly_schedule_is_the_official_formula_per_update():
  config = make_config(schedule="poly", poly_power=0.9, warmup_epochs=0.0, base_lr=0.05,
                       reference_batch_size=24)
  config.batch_size = 24
  total = 150 * 93   # 150 epochs of 2211 slices at batch 24
  schedule = opt_lib.learning_rate_schedule(config.optimizer, 24, total, 93)
  for t in (0, 1, 92, 5000, total - 1, total):
    assert schedule(t) == pytest.approx(0.05 * (1.0 - t / total) ** 0.9, rel=1e-12, abs=0)
  assert schedule(total + 10) == 0.0
  # Traced (float32) counts give the same values.
  np.testing.assert_allclose(jax.jit(schedule)(jnp.arange(0, total, 997)),
                             [schedule(t) for t in range(0, total, 997)], rtol=1e-5)
  # With warmup, the poly decay runs over the updates after it.
  config.optimizer.update(dict(warmup_epochs=1.0, warmup_lr=0.0))
  schedule = opt_lib.learning_rate_schedule(config.optimizer, 24, 1000, 100)
  assert schedule(50) == pytest.approx(0.025)
  assert schedule(100) == pytest.approx(0.05)
  assert schedule(550) == pytest.approx(0.05 * 0.5 ** 0.9)


def test_unknown_optimizer_name_is_rejected():
  with pytest.raises(ValueError, match="optimizer.name"):
    opt_lib.make_optimizer(make_config(name="lamb"), total_steps=10, steps_per_epoch=5)


def test_three_sgd_updates_match_torch_sgd_with_coupled_weight_decay():
  """torch.optim.SGD(momentum=0.9, weight_decay=1e-4) stepped with the poly lr; every param
  decays (Swin-Unet: ``SGD(model.parameters(), ...)``), biases included."""
  import torch
  config = make_config(name="sgd", momentum=0.9, weight_decay=1e-4, schedule="poly",
                       poly_power=0.9, warmup_epochs=0.0, base_lr=0.05,
                       reference_batch_size=512, clip_grad_norm=0.0,
                       no_decay_1d_and_bias=False, no_decay_keywords=())
  tx, schedule = opt_lib.make_optimizer(config, total_steps=6, steps_per_epoch=3)
  rng = np.random.default_rng(4)
  values = {"fc": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))}}
  values = jax.tree.map(lambda x: x.astype(np.float32), values)
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), values)
           for _ in range(3)]

  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in values["fc"].items()}
  torch_opt = torch.optim.SGD(list(torch_params.values()), lr=schedule(0), momentum=0.9,
                              weight_decay=1e-4)
  params = jax.tree.map(jnp.asarray, values)
  state = tx.init(params)
  for t, g in enumerate(grads):
    for group in torch_opt.param_groups:
      group["lr"] = schedule(t)
    for k, p in torch_params.items():
      p.grad = torch.tensor(g["fc"][k])
    torch_opt.step()
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
  for k, p in torch_params.items():
    np.testing.assert_allclose(params["fc"][k], p.detach().numpy(), atol=1e-6, rtol=0)
  # The lr really moved between the updates (poly), and decay reached the bias.
  assert schedule(0) > schedule(1) > schedule(2)


def mmcv_poly_with_linear_warmup(t: int, base_lr: float, max_iters: int, warmup_iters: int,
                                 warmup_ratio: float, power: float, min_lr: float) -> float:
  """mmcv 1.x ``PolyLrUpdaterHook(by_epoch=False, warmup='linear')`` before iteration
  ``t`` (``runner.iter``): ``get_regular_lr`` is the poly value of ``t`` over the whole
  run; during warmup ``get_warmup_lr`` scales *that* value by ``1 - k``."""
  regular = (base_lr - min_lr) * (1 - t / max_iters) ** power + min_lr
  if t >= warmup_iters:
    return regular
  k = (1 - t / warmup_iters) * (1 - warmup_ratio)
  return regular * (1 - k)


def test_mmcv_warmup_scales_the_scheduled_poly_lr():
  """The mmseg ADE20K schedule: lr 6e-5, warmup 1500 (ratio 1e-6), poly 1.0 to 0, 160k."""
  config = make_config(base_lr=6e-5, reference_batch_size=16, schedule="poly", poly_power=1.0,
                       min_lr=0.0, warmup_mode="mmcv", warmup_steps=1500, warmup_ratio=1e-6)
  total = 160_000
  schedule = opt_lib.learning_rate_schedule(config.optimizer, 16, total, 1263)
  steps = [0, 1, 2, 749, 750, 1498, 1499, 1500, 1501, 80_000, 159_999, total]
  for t in steps:
    expected = mmcv_poly_with_linear_warmup(t, 6e-5, total, 1500, 1e-6, 1.0, 0.0)
    # mmcv's 1 - (1 - t/W)(1 - 1e-6) loses ~1e-11 to cancellation even in float64.
    assert schedule(t) == pytest.approx(expected, rel=1e-9, abs=0), t
  assert schedule(0) == pytest.approx(6e-5 * 1e-6)
  # Not the base lr times the factor: at t = 750 the poly value is already below 6e-5.
  base_times_factor = 6e-5 * (1 - 0.5 * (1 - 1e-6))
  assert schedule(750) < base_times_factor
  assert schedule(750) == pytest.approx(base_times_factor * (1 - 750 / total), rel=1e-12)
  # Traced (float32, as optax calls it).
  np.testing.assert_allclose(jax.jit(schedule)(jnp.asarray(steps)),
                             [schedule(t) for t in steps], rtol=1e-5, atol=1e-16)


def test_mmcv_poly_decays_to_min_lr_and_timm_mode_is_unchanged():
  mmcv = opt_lib.learning_rate_schedule(
      make_config(schedule="poly", poly_power=0.9, base_lr=0.01, reference_batch_size=512,
                  min_lr=1e-4, warmup_mode="mmcv", warmup_steps=0).optimizer, 512, 100, 10)
  assert mmcv(0) == pytest.approx(0.01)
  assert mmcv(50) == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
  assert mmcv(100) == pytest.approx(1e-4)
  # warmup_steps replaces warmup_epochs in the timm rule too; min_lr stays unused by poly.
  timm = opt_lib.learning_rate_schedule(
      make_config(schedule="poly", poly_power=0.9, base_lr=0.01, reference_batch_size=512,
                  min_lr=1e-4, warmup_lr=0.0, warmup_epochs=5.0, warmup_steps=10).optimizer,
      512, 110, 10)
  assert timm(5) == pytest.approx(0.005)
  assert timm(10) == pytest.approx(0.01)
  assert timm(60) == pytest.approx(0.01 * 0.5 ** 0.9)
  with pytest.raises(ValueError, match="optimizer.warmup_mode 'linear' is not one of"):
    opt_lib.learning_rate_schedule(make_config(warmup_mode="linear").optimizer, 512, 20, 10)


def mmcv_step_with_linear_warmup(t: int, base_lr: float, iters_per_epoch: int,
                                 step_epochs, warmup_iters: int, warmup_ratio: float,
                                 gamma: float = 0.1) -> float:
  """mmcv 1.x ``StepLrUpdaterHook(step=..., by_epoch=True, warmup='linear')`` before iteration
  ``t``: the epoch's lr is ``base * gamma ** (milestones passed)`` (``runner.epoch``, set at
  the epoch's start); during warmup (by iteration) ``get_warmup_lr`` scales *that* value."""
  epoch = t // iters_per_epoch
  exp = len(step_epochs)
  for i, s in enumerate(step_epochs):
    if epoch < s:
      exp = i
      break
  regular = base_lr * gamma ** exp
  if t >= warmup_iters:
    return regular
  return regular * (1 - (1 - t / warmup_iters) * (1 - warmup_ratio))


@pytest.mark.parametrize("recipe,steps", [("1x", (8, 11)), ("3x", (27, 33))])
def test_step_schedule_is_mmcvs_for_the_detection_recipes(recipe, steps):
  """The Mask R-CNN Swin-T recipes: lr 1e-4 at batch 16, x0.1 at the epoch milestones, 500
  warmup iterations at ratio 0.001 scaling the step value."""
  from configs.detection import common  # pylint: disable=import-outside-toplevel
  config = common.mask_rcnn_coco("mask_rcnn_swin_tiny_patch4_window7_fpn", recipe)
  per_epoch = 7392
  epochs = int(config.num_epochs)
  total = epochs * per_epoch
  tx, schedule = opt_lib.make_optimizer(config, total, per_epoch)
  del tx
  a, b = steps
  probes = [0, 1, 250, 499, 500, 501, a * per_epoch - 1, a * per_epoch, a * per_epoch + 1,
            b * per_epoch - 1, b * per_epoch, total - 1]
  for t in probes:
    expected = mmcv_step_with_linear_warmup(t, 1e-4, per_epoch, steps, 500, 0.001)
    assert schedule(t) == pytest.approx(expected, rel=1e-12), t
  assert schedule(0) == pytest.approx(1e-7)
  assert schedule(500) == schedule(a * per_epoch - 1) == pytest.approx(1e-4)
  assert schedule(a * per_epoch) == pytest.approx(1e-5)
  assert schedule(b * per_epoch) == pytest.approx(1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(schedule))(jnp.asarray(probes)),
                             [schedule(t) for t in probes], rtol=1e-5)


def test_step_schedule_in_timm_mode_counts_from_the_end_of_warmup():
  config = make_config(schedule="step", step_epochs=(2.0,), step_gamma=0.5, base_lr=0.01,
                       reference_batch_size=512, warmup_lr=0.0, warmup_steps=4)
  schedule = opt_lib.learning_rate_schedule(config.optimizer, 512, 40, 10)
  assert [schedule(t) for t in (0, 2, 4, 23, 24, 39)] == pytest.approx(
      [0.0, 0.005, 0.01, 0.01, 0.005, 0.005])


def mmcv_iter_step_with_linear_warmup(t: int, base_lr: float, steps, warmup_iters: int,
                                      warmup_ratio: float, gamma: float = 0.1) -> float:
  """mmcv 1.x ``StepLrUpdaterHook(step=[...], by_epoch=False, warmup='linear')`` before
  iteration ``t`` (Soft Teacher's IterBasedRunner): ``base * gamma ** #(s <= t)``, scaled
  during warmup."""
  regular = base_lr * gamma ** sum(t >= s for s in steps)
  if t >= warmup_iters:
    return regular
  return regular * (1 - (1 - t / warmup_iters) * (1 - warmup_ratio))


@pytest.mark.parametrize("percent", [10, 100])
def test_soft_teacher_recipes_step_at_their_iterations(percent):
  """SGD 0.01, warmup 500 at 0.001, x0.1 at 120k / 160k of 180k (partial labels) or 480k /
  640k of 720k (full), whatever the epoch length."""
  from configs.soft_teacher import common  # pylint: disable=import-outside-toplevel
  config = common.soft_teacher_coco(percent)
  steps = config.optimizer.step_steps
  assert tuple(steps) == ((120_000, 160_000) if percent < 100 else (480_000, 640_000))
  _, schedule = opt_lib.make_optimizer(config, config.total_steps, steps_per_epoch=14_785)
  a, b = steps
  for t in (0, 1, 499, 500, a - 1, a, b - 1, b, config.total_steps - 1):
    expected = mmcv_iter_step_with_linear_warmup(t, 0.01, steps, 500, 0.001)
    assert schedule(t) == pytest.approx(expected, rel=1e-12), t
  assert config.optimizer.name == "sgd" and config.optimizer.momentum == 0.9
  assert config.optimizer.weight_decay == 1e-4


def test_step_milestones_are_given_in_epochs_or_steps_not_both():
  config = make_config(schedule="step", step_epochs=(1.0,), step_steps=(5,))
  with pytest.raises(ValueError, match="not both"):
    opt_lib.make_optimizer(config, 40, 10)
