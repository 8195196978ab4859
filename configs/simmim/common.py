"""The official SimMIM recipes for Swin-B (microsoft/SimMIM ``configs/swin_base__{100,800}ep``),
shared by ``swin_b_192_{100,800}ep.py`` (pretraining) and ``swin_b_224_ft_{100,800}ep.py``
(fine-tuning).

Pretraining (``task.name='simmim'``, model ``simmim_swin_base_window6_192``): Swin-B with
window 6 at 192 px, drop path 0, a mask token after the patch-embed norm, a 1x1 conv +
pixel-shuffle decoder and L1 on the masked pixels. Masks: 32 px cells, ratio 0.6 (22 of
the 6 x 6 cells), one random permutation per image on the host. Data: RandomResizedCrop
192 (scale 0.67-1, ratio 3/4-4/3), horizontal flip, ImageNet normalisation; ImageNet-1K
train images, labels unused. AdamW (betas 0.9/0.999, eps 1e-8), weight decay 0.05 except
1-D params, biases, ``mask_token``, ``absolute_pos_embed`` and the bias tables; gradient
clip 5; batch 2048 (16 GPUs x 128). Learning rates per 512 images, scaled linearly to the
batch as the official ``BASE_LR * batch / 512``. SimMIM's schedulers are timm's without a
warmup prefix (``warmup_mode='timm_absolute'``): after the linear warmup, the cosine runs
on the absolute iteration over the whole run (``t_initial`` = all iterations) and the
multistep milestones are absolute iterations:

* 100 epochs: lr 2e-4 (8e-4 at 2048), 10 warmup epochs from 1e-6, cosine to 1e-5;
* 800 epochs: lr 1e-4 (4e-4 at 2048), 10 warmup epochs from 5e-7, multistep x0.1 at
  epoch 700.

Fine-tuning (classification, ``swin_base_patch4_window7_224``, from the pretraining run:
``--config.init_from=runs/simmim_b_100ep``): the encoder is loaded without the mask token,
its W6 bias tables remapped to W7 on the official geometric grid
(``swin_jax.convert.simmim``); 100 epochs, 20 warmup from 2.5e-7, lr 1.25e-3 (5e-3 at
2048), cosine to 2.5e-7, weight decay 0.05, drop path 0.1, layer-wise lr decay 0.9 (after
100 ep of pretraining) or 0.8 (after 800 ep): each param's lr times
``decay ** (25 - layer id)`` (patch embed 0, block j of stage i ``sum(depths[:i]) + j + 1``,
a stage's downsample ``sum(depths[:i + 1])``, head and final norm 25); the standard timm
augmentation (RandAugment m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8, cutmix 1.0,
label smoothing 0.1); eval 256 -> 224 centre crop. Official top-1: 82.8 (100 ep, at 192),
83.5 (100 ep, 224), 84.0 (800 ep, 224).

Both work in the scanned-block layout (``scan_blocks=True``, used here): layer decay is
applied per stacked block.
"""

from ml_collections import ConfigDict

from configs import common as swin_common
from swin_jax.train.config import base_config

PRETRAIN_BATCH = 2048
FINETUNE_BATCH = 2048


def pretrain(epochs: int) -> ConfigDict:
  """SimMIM pretraining of Swin-B/W6 at 192 for ``epochs`` (100: cosine, 800: multistep)."""
  config = base_config("simmim")
  config.model.name = "simmim_swin_base_window6_192"
  config.model.overrides.update(dict(scan_blocks=True, remat="dots_no_batch"))
  config.dataset.name = "imagenet2012"
  config.dataset.num_classes = 1000     # unused: SimMIM reads no labels
  config.dataset.image_size = 192
  config.task.mask_patch_size = 32
  config.task.mask_ratio = 0.6
  config.task.crop_scale = (0.67, 1.0)
  config.task.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  config.task.hflip = 0.5
  opt = dict(reference_batch_size=512, warmup_epochs=10.0, warmup_mode="timm_absolute",
             weight_decay=0.05,
             clip_grad_norm=5.0, b1=0.9, b2=0.999, eps=1e-8)
  if epochs == 100:
    opt.update(base_lr=2e-4, warmup_lr=1e-6, min_lr=1e-5, schedule="cosine")
  elif epochs == 800:
    opt.update(base_lr=1e-4, warmup_lr=5e-7, min_lr=5e-6, schedule="step",
               step_epochs=(700.0,), step_gamma=0.1)
  else:
    raise ValueError(f"the official SimMIM Swin-B recipes are 100 and 800 epochs, not {epochs}")
  config.optimizer.update(opt)
  config.num_epochs = float(epochs)
  config.batch_size = PRETRAIN_BATCH
  config.eval_every_steps = 0            # the masked L1 on the validation images, at the end
  config.checkpoint_every_steps = 2000
  return config


def finetune(layer_decay: float) -> ConfigDict:
  """Swin-B/W7 at 224 fine-tuned from a SimMIM run: 100 epochs, ``layer_decay``."""
  config = base_config("classification")
  config.model.name = "swin_base_patch4_window7_224"
  config.model.overrides.update(dict(num_classes=1000, drop_path_rate=0.1, scan_blocks=True,
                                     remat="dots_no_batch"))
  config.dataset.name = "imagenet2012"
  config.dataset.num_classes = 1000
  config.dataset.image_size = 224
  config.optimizer.update(dict(
      base_lr=1.25e-3, warmup_lr=2.5e-7, min_lr=2.5e-7, reference_batch_size=512,
      warmup_epochs=20.0, warmup_mode="timm_absolute", schedule="cosine", weight_decay=0.05,
      clip_grad_norm=5.0, layer_decay=layer_decay))
  swin_common.official_augmentation(config)
  config.num_epochs = 100.0
  config.batch_size = FINETUNE_BATCH
  return config
