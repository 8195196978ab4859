"""The nnFormer configs' recipe: nnU-Net's SGD, lr per epoch, decay on every param."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from swin_jax.train import optimizer as opt_lib
from nnformer_runs import load


@pytest.mark.parametrize("name,batch,classes", [("synapse", 2, 14), ("acdc", 4, 4),
                                                ("tumor", 2, 4)])
def test_lr_is_polynomial_per_250_iteration_epoch(name, batch, classes):
  config = load(name)
  assert (config.batch_size, config.dataset.num_classes) == (batch, classes)
  assert config.total_steps == 1000 * 250
  _, schedule = opt_lib.make_optimizer(config, config.total_steps, steps_per_epoch=10)
  # nnU-Net's poly_lr(epoch, 1000, 1e-2, 0.9), set at the start of each epoch.
  for step in (0, 1, 249, 250, 251, 499, 125_000, 249_999):
    epoch = step // 250
    assert schedule(step) == pytest.approx(1e-2 * (1 - epoch / 1000) ** 0.9, rel=1e-12), step


def test_sgd_is_torchs_nesterov_sgd_with_decay_on_every_param_after_clipping():
  torch = pytest.importorskip("torch")
  config = load("synapse")
  tx, _ = opt_lib.make_optimizer(config, config.total_steps, steps_per_epoch=10)
  rng = np.random.default_rng(0)
  params = {"norm": {"scale": rng.normal(size=(6,)).astype(np.float32)},
            "proj": {"kernel": rng.normal(size=(6, 4)).astype(np.float32),
                     "bias": rng.normal(size=(4,)).astype(np.float32)}}
  grads = [jax.tree.map(lambda p, s=s: (3.0 * np.random.default_rng(s).normal(size=p.shape))
                        .astype(np.float32), params) for s in range(1, 4)]
  state, current = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, current)
    current = optax.apply_updates(current, updates)

  leaves = [torch.tensor(np.array(p), requires_grad=True) for p in jax.tree.leaves(params)]
  sgd = torch.optim.SGD(leaves, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
  for g in grads:
    for leaf, value in zip(leaves, jax.tree.leaves(g)):
      leaf.grad = torch.tensor(np.array(value))
    torch.nn.utils.clip_grad_norm_(leaves, 12.0)   # nnU-Net's run_iteration
    sgd.step()
  for ours, theirs in zip(jax.tree.leaves(current), leaves):
    np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=1e-5, atol=1e-7)
