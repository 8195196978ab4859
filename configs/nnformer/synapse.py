"""nnFormer on Synapse multi-organ CT (BTCV): the official recipe.

``nnFormerTrainerV2_nnformer_synapse``: crops 64 x 128 x 128, batch 2, 14 classes
(background + 13 organs), deep supervision, the nnU-Net recipe of ``common``. The paper's
numbers (DSC 86.57, HD95 10.63) average 8 organs: spleen, right and left kidney,
gallbladder, liver, stomach, aorta, pancreas (``inference_synapse.py``), the
``task.eval.mean_over`` classes below.

Data: the nnU-Net raw layout of BTCV (``imagesTr``/``labelsTr``/``dataset.json``), built with

  python -m swin_jax.data.medical_volumes --manual_dir /path/to/Task002_Synapse --name synapse

(nnFormer's split: put its validation case ids in ``splits.json``), then

  python -m swin_jax.main --config=configs/nnformer/synapse.py --workdir=runs/nnformer_synapse
"""

from configs.nnformer import common

# BTCV label ids.
CLASSES = ("background", "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus",
           "liver", "stomach", "aorta", "inferior_vena_cava", "portal_and_splenic_vein",
           "pancreas", "adrenal_gland_right", "adrenal_gland_left")
PAPER_ORGANS = (1, 2, 3, 4, 6, 7, 8, 11)


def get_config():
  config = common.nnunet_config("nnformer_synapse", "medical_volumes/synapse",
                                num_classes=14, batch_size=2)
  config.task.class_names = CLASSES
  config.task.eval.mean_over = PAPER_ORGANS
  return config
