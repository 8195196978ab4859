"""UperNet on a small Swin over the embedded digit scenes (draft; see the report)."""

from swin_jax.train.config import base_config


def get_config():
  config = base_config("segmentation")
  config.model.name = "upernet_swin_tiny_patch4_window7_512"
  config.model.overrides.update(dict(
      img_size=64, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
      window_size=4, num_classes=11, drop_path_rate=0.0, channels=32, aux_channels=16))
  config.dataset.name = "digit_scenes/64px"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.num_classes = 11
  config.dataset.image_size = 64
  config.task.image_key = "image"
  config.task.label_key = "segmentation"
  config.task.class_names = ("background",) + tuple(str(d) for d in range(10))
  config.task.aug.rot_flip_prob = 0.0
  config.task.aug.rotate_prob = 0.0
  config.task.loss = "ce_aux"
  config.optimizer.update(dict(
      name="adamw", base_lr=2e-3, reference_batch_size=16, weight_decay=0.01,
      clip_grad_norm=0.0, schedule="poly", poly_power=1.0, min_lr=0.0, warmup_mode="mmcv",
      warmup_steps=30, warmup_ratio=1e-6, warmup_epochs=0.0,
      no_decay_1d_and_bias=False,
      no_decay_keywords=("absolute_pos_embed", "relative_position_bias_table", "norm")))
  config.batch_size = 16
  config.num_epochs = 3.0
  config.log_every_steps = 25
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 1000
  return config
