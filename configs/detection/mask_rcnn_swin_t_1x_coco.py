"""Mask R-CNN Swin-T, 1x (12 epochs) on COCO: the official recipe (see ``common.py``).

Official result (Swin-Transformer-Object-Detection): box AP 43.7, mask AP 39.8 on COCO
val2017, from the ImageNet-1K ``swin_tiny_patch4_window7_224.pth``.

  python -m swin_jax.main --config=configs/detection/mask_rcnn_swin_t_1x_coco.py \\
      --workdir=runs/mask_rcnn_swin_t_1x --config.dataset.data_dir=/data/tfds \\
      --config.init_from=/path/to/swin_tiny_patch4_window7_224.pth
"""

from configs.detection import common


def get_config():
  return common.mask_rcnn_coco("mask_rcnn_swin_tiny_patch4_window7_fpn", "1x")
