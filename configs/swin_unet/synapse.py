"""Swin-Unet-T on Synapse multi-organ CT: the official recipe (HuCaoFighting/Swin-Unet).

README command: ``train.py --dataset Synapse --img_size 224 --max_epochs 150 --batch_size 24
--base_lr 0.05``; ``trainer.py``: SGD momentum 0.9, weight decay 1e-4 on every param
(``SGD(model.parameters())``), lr ``base_lr * (1 - iter / max_iter) ** 0.9`` per iteration,
loss ``0.4 * CE + 0.6 * Dice``, the RandomGenerator augmentation; seed 1234. Evaluation: the
12 test volumes slice by slice at 224, predictions zoomed back to 512, 3-D Dice/HD95 per
organ (``task.evaluation='volumes'``).

Learning-rate scaling: here 0.05 per 24 images, scaled linearly to the batch size. The
official ``train.py`` scales ``base_lr *= batch_size / 24`` only when ``batch_size != 24``
and ``batch_size % 6 == 0`` (so e.g. batch 16 keeps 0.05); at the official batch 24 both
give 0.05.

The official run starts from the ImageNet-1K Swin-T checkpoint
(``swin_tiny_patch4_window7_224.pth``, encoder weights copied into the decoder too):
set ``--config.init_from=/path/to/swin_tiny_patch4_window7_224.pth``. The Synapse data is
not redistributable; build it with ``python -m swin_jax.data.synapse`` (see that module).

  python -m swin_jax.main --config=configs/swin_unet/synapse.py --workdir=runs/unet_synapse \\
      --config.init_from=/path/to/swin_tiny_patch4_window7_224.pth
"""

from swin_jax.train.config import base_config

# TransUNet's label ids.
SYNAPSE_CLASSES = ("background", "aorta", "gallbladder", "kidney_left", "kidney_right",
                   "liver", "pancreas", "spleen", "stomach")


def get_config():
  config = base_config("segmentation")
  config.model.name = "swin_unet_tiny_patch4_window7_224"
  config.model.overrides.update(dict(num_classes=9, img_size=224, drop_path_rate=0.2))
  config.dataset.name = "synapse"
  config.dataset.train_split = "train"       # 2211 slices of 18 cases
  config.dataset.eval_split = "test"         # 12 volumes, streamed slice by slice
  config.dataset.num_classes = 9
  config.dataset.image_size = 224
  config.task.image_key = "image"            # float32 (H, W) in [0, 1]: repeated to RGB
  config.task.label_key = "label"
  config.task.class_names = SYNAPSE_CLASSES
  config.task.normalize = "auto"             # floats as they are (no ImageNet mean/std)
  config.task.ce_weight = 0.4
  config.task.dice_weight = 0.6
  config.task.aug.rot_flip_prob = 0.5
  config.task.aug.rotate_prob = 0.5
  config.task.aug.max_angle = 20
  config.task.evaluation = "volumes"
  config.task.label_size = 512               # the test volumes' slices (zoomed back to it)
  config.optimizer.update(dict(
      name="sgd", momentum=0.9, weight_decay=1e-4, base_lr=0.05, reference_batch_size=24,
      schedule="poly", poly_power=0.9, warmup_epochs=0.0, clip_grad_norm=0.0,
      # torch SGD(model.parameters(), weight_decay=1e-4): every param decays.
      no_decay_1d_and_bias=False, no_decay_keywords=()))
  config.batch_size = 24
  config.num_epochs = 150.0
  config.seed = 1234
  config.eval_every_steps = 0                # the official code tests once, at the end
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.init_from = ""                      # set: the ImageNet-1K Swin-T checkpoint
  return config
