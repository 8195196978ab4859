"""UperNet on a small Swin over the embedded digit scenes, its backbone from the ``make demo``
classifier.

Background + the 10 digits (``segmentation`` = 1 + digit) of 32 x 32 scenes: one real MNIST
digit (20-28 px, light on a dark textured background) per scene, 2000 train and 200
held-out test scenes built on first use from disjoint digits (the Swin-Unet demo's scenes).
The backbone is the classifier's Swin in the dense mode (2 x 2 patches, width 32, 4 x 4
windows, depths 2-2-2, heads 2-4-8): stage maps of 16 x 16, 8 x 8 and 4 x 4 through
``norm0..norm2``. UPerHead (PPM bins 1/2/3/6 on the 4 x 4 map, FPN over the three stages) and
the FCN auxiliary head on the second-to-last stage, as the official head reads stage 3 of 4.
As the official recipe starts from ImageNet weights, this one starts its backbone from the
``make demo`` run:

  make demo                      # the classifier, runs/demo
  python -m swin_jax.main --config=configs/upernet/demo.py --workdir=runs/upernet_demo

Loss: mmseg's CE of the decode logits + 0.4 CE of the auxiliary logits, plus the soft Dice
of the decode logits (``task.decode_dice_weight``, an mmseg ``loss_decode`` list [CE, Dice]):
digits cover ~15 % of a scene, and with CE alone the heads learn ink but few digits. Measured
(same scenes and classifier, 1,250 steps): CE alone mIoU 0.37 (lr 1e-3) / 0.10 (lr 3e-4);
+ Dice 0.38 at lr 3e-4, 0.73 at lr 1e-3 (this file); the classifier's timm-mode backbone
(``dense_mode=False``) with Dice 0.78. Augmentation: the small rotations of the Swin-Unet demo
(rot90/flips turn a 6 into a 9 and mirror digits). See README (UperNet section) for the
measured mIoU and wall time of this recipe.
"""

from configs.swin_unet.demo import SCENES
from swin_jax.train.config import base_config


def get_config():
  config = base_config("segmentation")
  config.model.name = "upernet_swin_tiny_patch4_window7_512"
  config.model.overrides.update(dict(
      img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
      window_size=4, num_classes=11, drop_path_rate=0.0, channels=64, aux_channels=32,
      aux_in_index=1))
  config.init_from = "runs/demo"             # the `make demo` classifier
  config.dataset.name = SCENES
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.num_classes = 11
  config.dataset.image_size = 32
  config.task.image_key = "image"            # uint8 RGB: ImageNet mean/std
  config.task.label_key = "segmentation"
  config.task.class_names = ("background",) + tuple(str(d) for d in range(10))
  config.task.aug.rot_flip_prob = 0.0
  config.task.aug.rotate_prob = 0.5
  config.task.aug.max_angle = 20
  config.task.loss = "ce_aux"
  config.task.decode_dice_weight = 1.0
  config.optimizer.update(dict(
      name="adamw", base_lr=1e-3, warmup_lr=1e-5, min_lr=1e-5, reference_batch_size=16,
      warmup_epochs=0.5, schedule="cosine", weight_decay=0.01, clip_grad_norm=0.0,
      no_decay_1d_and_bias=False,
      no_decay_keywords=("absolute_pos_embed", "relative_position_bias_table", "norm")))
  config.batch_size = 16
  config.num_epochs = 10.0                   # 1,250 steps
  config.log_every_steps = 125
  config.eval_every_steps = 0                # evaluate at the end only
  config.checkpoint_every_steps = 625
  return config
