"""Swin-B 22K -> 1K fine-tuning at 224 (85.2 top-1 officially): 30 epochs, lr 4e-5 at 1024.

The 21,841-class head is reduced to 1,000 classes with the official 22K->1K map.
  python -m swin_jax.main --config=configs/swin_b_22kto1k.py --workdir=runs/swin_b_22kto1k \
      --config.init_from=runs/swin_b_22k        # or a converted dir / an official .pth
"""

from configs import common


def get_config():
  return common.finetune_1k("swin_base_patch4_window7_224", drop_path_rate=0.2,
                            image_size=224)
