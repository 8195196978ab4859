"""Swin-B on ImageNet-1K from scratch: the official 300-epoch recipe (83.5 top-1 officially).

  python -m swin_jax.main --config=configs/swin_b_1k.py --workdir=runs/swin_b_1k
"""

from configs import common


def get_config():
  return common.imagenet1k("swin_base_patch4_window7_224", drop_path_rate=0.5)
