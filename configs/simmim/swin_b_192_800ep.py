"""SimMIM pretraining of Swin-B (window 6, 192 px) for 800 epochs on ImageNet-1K (see common.py).

  python -m swin_jax.main --config=configs/simmim/swin_b_192_800ep.py --workdir=runs/simmim_b_800ep
"""

from configs.simmim import common


def get_config():
  return common.pretrain(800)
