"""A small nnFormer on the embedded organ phantoms: the nnFormer recipe in minutes on a CPU.

The data: procedural 3D "organ phantoms" (``swin_jax.data.organ_phantoms``; built on first
use, no download): 32 x 64 x 64 volumes at (2, 1, 1) mm, a body holding four organ classes
(liver, kidneys, spleen, vessel) drawn as rotated ellipsoids with their own intensity,
texture and noise, so every label is exact by construction. 24 training and 6 test volumes.

The model: nnFormer's Synapse network (patch 2 x 4 x 4, deep supervision, windows 4-4-8-4,
skip attention) at width 24 on 16 x 32 x 32 crops: stages of 8^3, 4^3, 2^3 and 1 tokens
(shifted 4^3 windows at stage 0, global attention below). The recipe is the official one of
``common`` (SGD 1e-2 Nesterov 0.99, poly per "epoch", Dice + CE over the deep-supervision
outputs, foreground oversampling, rotation / scaling / mirroring), shortened; the test
volumes are scored by sliding windows (step 0.5, Gaussian weighting, mirroring TTA) with
Dice and HD95 per organ.

  python -m swin_jax.main --config=configs/nnformer/demo.py --workdir=runs/nnformer_demo
"""

from configs.nnformer import common
from swin_jax.data import organ_phantoms

STEPS = 600
STEPS_PER_EPOCH = 50    # the lr is held per "epoch", as nnU-Net's 250 iterations


def get_config():
  config = common.nnunet_config("nnformer_synapse", organ_phantoms.dataset_name(),
                                num_classes=organ_phantoms.NUM_ORGANS + 1, batch_size=4)
  config.model.overrides.update(dict(crop_size=(16, 32, 32), embed_dim=24,
                                     num_heads=(1, 2, 4, 8), drop_path_rate=0.1))
  config.dataset.eval_split = "test"
  config.dataset.read_threads = 2
  config.task.class_names = organ_phantoms.CLASS_NAMES
  config.optimizer.schedule_every_steps = STEPS_PER_EPOCH
  config.total_steps = STEPS
  config.log_every_steps = 25
  config.checkpoint_every_steps = 200
  return config
