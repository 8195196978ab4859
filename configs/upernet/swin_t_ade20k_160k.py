"""UperNet Swin-T on ADE20K, 160k iterations: the official recipe (see ``common.py``).

Official result (Swin-Transformer-Semantic-Segmentation): 44.51 mIoU single scale, from
the ImageNet-1K ``swin_tiny_patch4_window7_224.pth``. The pipeline, loss, schedule
and whole-image evaluation are the official ones (``common.py``); this config has not
been trained to that number here (no ADE20K and no GPU on our machines).

  python -m swin_jax.main --config=configs/upernet/swin_t_ade20k_160k.py \\
      --workdir=runs/upernet_swin_t_ade20k \\
      --config.init_from=/path/to/swin_tiny_patch4_window7_224.pth
"""

from configs.upernet import common


def get_config():
  return common.ade20k_160k("upernet_swin_tiny_patch4_window7_512")
