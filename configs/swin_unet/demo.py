"""A small Swin-Unet on the embedded digit scenes, its encoder from the ``make demo`` classifier.

Background + the 10 digits (``segmentation`` = 1 + digit) of 32 x 32 scenes: one real MNIST
digit (20-28 px, light on a dark textured background) per scene, 2000 train and 200
held-out test scenes built on first use from disjoint digits. The Swin-Unet has the
classifier's encoder (2 x 2 patches, width 32, 4 x 4 windows, depths 2-2-2, heads 2-4-8):
16 x 16 tokens, merged to 8 x 8, then 4 x 4. As the official recipe starts from ImageNet
weights through ``load_from``, this one starts its encoder from the ``make demo`` run:

  make demo                      # the classifier, runs/demo
  python -m swin_jax.main --config=configs/swin_unet/demo.py --workdir=runs/unet_demo

The decoder starts at init: the official mirroring (decoder stage 3 - i from encoder stage i)
assumes four stages, so every mirrored key of this 3-stage model meets a decoder stage of
another width and is left at init (the load report lists them).

Measured: see README (Swin-Unet section) for the mean Dice and wall time of this recipe.

Loss: the official 0.4 CE + 0.6 Dice. Augmentation: only the official small rotations;
rot90/flips are off since they turn a 6 into a 9 and mirror digits. The encoder is
fine-tuned at 3e-4 (AdamW, batch 16), the rate at which the classifier's features survive
the decoder's first, random-gradient steps. Why this layout and the classifier's encoder:
trained from scratch, the same model learns digit identity per pixel slowly (mean Dice 0.67
after 80,000 scenes, where the classifier's encoder gives 0.82 after 20,000; README).
"""

from swin_jax.data import digit_scenes
from swin_jax.train.config import base_config

SCENES = digit_scenes.dataset_name(32, digit_size=(20, 28), digits_per_scene=(1, 1),
                                   polarity="dark")


def get_config():
  config = base_config("segmentation")
  config.model.name = "swin_unet_tiny_patch4_window7_224"
  config.model.overrides.update(dict(
      img_size=32, patch_size=2, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
      window_size=4, num_classes=11, drop_path_rate=0.0))
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
  config.task.evaluation = "pixels"
  config.optimizer.update(dict(
      name="adamw", base_lr=3e-4, warmup_lr=1e-5, min_lr=1e-5, reference_batch_size=16,
      warmup_epochs=0.5, schedule="cosine", weight_decay=0.05, clip_grad_norm=5.0))
  config.batch_size = 16
  config.num_epochs = 10.0                   # 1,250 steps
  config.log_every_steps = 125
  config.eval_every_steps = 0                # evaluate at the end only
  config.checkpoint_every_steps = 625
  return config
