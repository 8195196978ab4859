"""Swin-V2-T (window 8) on ImageNet-1K from scratch at 256: the official recipe (81.8 top-1).

  python -m swin_jax.main --config=configs/swinv2_t_1k.py --workdir=runs/swinv2_t_1k
"""

from configs import common


def get_config():
  return common.imagenet1k("swinv2_tiny_window8_256", drop_path_rate=0.2, image_size=256)
