"""Mask R-CNN Swin-T, 3x (36 epochs) on COCO: the official recipe (see ``common.py``).

Official result (Swin-Transformer-Object-Detection): box AP 46.0, mask AP 41.6 on COCO
val2017, from the ImageNet-1K ``swin_tiny_patch4_window7_224.pth``.

  python -m swin_jax.main --config=configs/detection/mask_rcnn_swin_t_3x_coco.py \\
      --workdir=runs/mask_rcnn_swin_t_3x --config.dataset.data_dir=/data/tfds \\
      --config.init_from=/path/to/swin_tiny_patch4_window7_224.pth
"""

from configs.detection import common


def get_config():
  return common.mask_rcnn_coco("mask_rcnn_swin_tiny_patch4_window7_fpn", "3x")
