"""Swin-B pretraining on ImageNet-22K (21,841 classes): 90 epochs, batch 4096, lr 1e-3.

  python -m swin_jax.main --config=configs/swin_b_22k.py --workdir=runs/swin_b_22k
"""

from configs import common


def get_config():
  return common.imagenet22k("swin_base_patch4_window7_224", drop_path_rate=0.2)
