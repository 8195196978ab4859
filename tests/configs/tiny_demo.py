"""configs/demo.py shrunk for subprocess tests: a tiny Swin, constant lr, few steps."""

from configs import demo


def get_config():
  config = demo.get_config()
  config.model.overrides.update(dict(img_size=16, patch_size=4, embed_dim=16, depths=(2, 2),
                                     num_heads=(1, 2), window_size=2, drop_path_rate=0.1))
  config.dataset.image_size = 16
  config.dataset.read_threads = 2
  # Constant lr: the schedule does not depend on total_steps, so runs of different
  # lengths share their first steps exactly.
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_epochs = 0.0
  config.task.mixup.mixup_alpha = 0.8       # exercise the on-device RNG across a resume
  config.batch_size = 16
  config.total_steps = 12
  config.log_every_steps = 1
  config.checkpoint_every_steps = 4
  config.eval_every_steps = 0
  config.eval_batch_size = 200
  return config
