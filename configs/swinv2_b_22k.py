"""Swin-V2-B pretraining on ImageNet-22K at 192 with window 12 (stage 4 clamps to 6),
weight decay 0.1, 90 epochs, batch 4096, lr 1e-3.

  python -m swin_jax.main --config=configs/swinv2_b_22k.py --workdir=runs/swinv2_b_22k
"""

from configs import common


def get_config():
  return common.imagenet22k("swinv2_base_window12_192", drop_path_rate=0.2, image_size=192,
                            weight_decay=0.1)
