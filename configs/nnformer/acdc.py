"""nnFormer on ACDC cardiac MRI: the official recipe.

``nnFormerTrainerV2_nnformer_acdc``: crops 14 x 160 x 160, batch 4, 4 classes (background,
right ventricle, myocardium, left ventricle), per-axis windows, no deep supervision, the
nnU-Net recipe of ``common``. Paper: DSC 92.06 over the three structures.

Data: ACDC in the nnU-Net raw layout, built with

  python -m swin_jax.data.medical_volumes --manual_dir /path/to/Task001_ACDC --name acdc

  python -m swin_jax.main --config=configs/nnformer/acdc.py --workdir=runs/nnformer_acdc
"""

from configs.nnformer import common

CLASSES = ("background", "right_ventricle", "myocardium", "left_ventricle")


def get_config():
  config = common.nnunet_config("nnformer_acdc", "medical_volumes/acdc", num_classes=4,
                                batch_size=4)
  config.task.class_names = CLASSES
  return config
