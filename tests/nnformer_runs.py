"""The tiny nnFormer run that the 3D task tests and the volume command tests share.

``tiny_config`` is configs/nnformer/demo.py shrunk: 20 x 40 x 40 organ phantoms (4 train,
2 test) and the Synapse network at width 8 on 16 x 32 x 32 crops (the smallest whose four
stages halve exactly: 8^3, 4^3, 2^3, 1 tokens), 8 eval windows a volume mirrored in depth,
4 steps on a (2, 1) mesh. The session fixtures ``nnformer_data_dir`` and ``nnformer_tiny_run`` (in
conftest.py) train it once per worker; the modules using it share the xdist group
``GROUP``.
"""

from __future__ import annotations

import importlib

from swin_jax.data import organ_phantoms
from swin_jax.train import config as config_lib

GROUP = "nnformer_run"
SIZE = (20, 40, 40)
TINY_MODEL = dict(crop_size=(16, 32, 32), embed_dim=8, num_heads=(1, 1, 2, 2),
                  drop_path_rate=0.1)


def load(name: str):
  """A configs/nnformer recipe, validated."""
  config = importlib.import_module(f"configs.nnformer.{name}").get_config()
  config_lib.validate_config(config)
  return config


def tiny_config(data_dir: str, **overrides):
  config = load("demo")
  config.dataset.name = organ_phantoms.dataset_name(size=SIZE, num_train=4, num_test=2)
  config.dataset.data_dir = data_dir
  config.dataset.read_threads = 1
  config.model.overrides.update(TINY_MODEL)
  config.batch_size = config.eval_batch_size = 2
  config.optimizer.schedule_every_steps = 2
  # Mirroring TTA over one axis: the eval step's program holds a forward per mirroring
  # (2, not 8); every axis's flips are checked in test_volume_inference.
  config.task.eval.mirror_axes = (0,)
  config.update(dict(total_steps=4, log_every_steps=1, checkpoint_every_steps=2,
                     mesh_shape=(2, 1)))
  config.update(overrides)
  return config
