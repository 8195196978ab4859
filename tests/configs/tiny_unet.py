"""configs/swin_unet/demo.py shrunk for test_train_resume: a tiny Swin-Unet on 32 px scenes."""

from configs.swin_unet import demo
from swin_jax.data import digit_scenes


def get_config():
  config = demo.get_config()
  # 8 x 8 tokens in 4 x 4 windows (shifted), merged to 4 x 4; drop path exercises the
  # dropout RNG across a resume, the demo's random rotations the host-side RNG.
  config.model.overrides.update(dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2),
                                     num_heads=(1, 2), window_size=4, drop_path_rate=0.1))
  # 64 scenes: 8 batches per epoch, so a run crosses epoch boundaries (reshuffles).
  config.dataset.name = digit_scenes.dataset_name(size=32, num_train=64, num_test=8)
  config.dataset.image_size = 32
  config.init_from = ""          # the demo starts from runs/demo; this one from its own init
  config.dataset.read_threads = 2
  config.batch_size = 8
  config.eval_batch_size = 8
  config.total_steps = 12
  config.log_every_steps = 1
  config.checkpoint_every_steps = 4
  config.eval_every_steps = 0
  return config
