"""Swin-B at 224 fine-tuned from 100-epoch SimMIM pretraining: layer decay 0.9 (83.5 top-1
officially; see common.py).

  python -m swin_jax.main --config=configs/simmim/swin_b_224_ft_100ep.py \
      --workdir=runs/simmim_b_ft_100ep --config.init_from=runs/simmim_b_100ep
"""

from configs.simmim import common


def get_config():
  return common.finetune(layer_decay=0.9)
