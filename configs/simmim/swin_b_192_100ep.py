"""SimMIM pretraining of Swin-B (window 6, 192 px) for 100 epochs on ImageNet-1K (see common.py).

  python -m swin_jax.main --config=configs/simmim/swin_b_192_100ep.py --workdir=runs/simmim_b_100ep
"""

from configs.simmim import common


def get_config():
  return common.pretrain(100)
