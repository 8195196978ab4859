"""Swin-T on ImageNet-1K from scratch: the official 300-epoch recipe (81.2 top-1 officially).

  python -m swin_jax.main --config=configs/swin_t_1k.py --workdir=runs/swin_t_1k
"""

from configs import common


def get_config():
  return common.imagenet1k("swin_tiny_patch4_window7_224", drop_path_rate=0.2)
