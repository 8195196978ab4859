"""nnFormer on brain tumours (MSD Task01 BraTS: FLAIR, T1w, T1gd, T2w): the official recipe.

``nnFormerTrainerV2_nnformer_tumor``: crops 128^3 of the 4 MR modalities, batch 2, 4 classes
(background, edema, non-enhancing tumour, enhancing tumour), no deep supervision, the
nnU-Net recipe of ``common``. The paper reports whole tumour / tumour core / enhancing
tumour, unions of these labels; ``eval/dice/<k>`` here are the per-label scores.

Data: MSD Task01_BrainTumour (its 4-D ``imagesTr``), built with

  python -m swin_jax.data.medical_volumes --manual_dir /path/to/Task01_BrainTumour --name tumor

  python -m swin_jax.main --config=configs/nnformer/tumor.py --workdir=runs/nnformer_tumor
"""

from configs.nnformer import common

CLASSES = ("background", "edema", "non_enhancing_tumour", "enhancing_tumour")


def get_config():
  config = common.nnunet_config("nnformer_tumor", "medical_volumes/tumor", num_classes=4,
                                batch_size=2)
  config.task.class_names = CLASSES
  return config
