"""Swin-B fine-tuning 224 -> 384 with window 7 -> 12 (84.5 top-1 from 1K weights officially).

The relative-position bias tables are resized bicubically (13x13 -> 23x23) on load.
  python -m swin_jax.main --config=configs/swin_b_384_ft.py --workdir=runs/swin_b_384 \
      --config.init_from=runs/swin_b_1k           # or a converted dir / an official .pth
"""

from configs import common


def get_config():
  # The official B-1K -> 384 fine-tune keeps drop-path 0.5.
  return common.finetune_1k("swin_base_patch4_window12_384", drop_path_rate=0.5,
                            image_size=384)
