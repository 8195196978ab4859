"""Swin-S on ImageNet-1K from scratch: the official 300-epoch recipe (83.2 top-1 officially).

  python -m swin_jax.main --config=configs/swin_s_1k.py --workdir=runs/swin_s_1k
"""

from configs import common


def get_config():
  return common.imagenet1k("swin_small_patch4_window7_224", drop_path_rate=0.3)
