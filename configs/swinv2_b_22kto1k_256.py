"""Swin-V2-B 22K -> 1K fine-tuning, 192/W12 -> 256/W16 (86.2 top-1 officially).

The model keeps pretrained_window_sizes (12, 12, 12, 6): its continuous position-bias MLP
takes the W12 checkpoint as it is (no table resizing); the 22K head maps to 1K classes.
  python -m swin_jax.main --config=configs/swinv2_b_22kto1k_256.py \
      --workdir=runs/swinv2_b_22kto1k --config.init_from=runs/swinv2_b_22k
"""

from configs import common


def get_config():
  return common.finetune_1k("swinv2_base_window12to16_192to256", drop_path_rate=0.2,
                            image_size=256)
