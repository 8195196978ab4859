"""The nnFormer / nnU-Net v1 training recipe shared by the nnFormer configs.

nnFormer's trainers (``nnFormerTrainerV2_nnformer_{synapse,acdc,tumor}``, on nnU-Net v1's
``nnUNetTrainerV2``): SGD lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5 on every
param, gradients clipped to norm 12, lr ``1e-2 * (1 - epoch / 1000) ** 0.9`` set once per
epoch of 250 iterations, 1000 epochs; Dice + CE with deep supervision where the network has
it; patches of the network's crop with a third of them forced onto foreground, rotation
+-30 degrees and scaling 0.7-1.4 (each with p 0.2), mirroring. Evaluation: sliding windows
at step 0.5 with Gaussian weighting and mirroring, Dice and HD95 per class.

Two differences from nnU-Net, both in how batches are drawn: nnU-Net's loader picks random
cases with replacement and forces foreground into the last third of each batch; here the
data pipeline goes through the cases in shuffled epochs and each example is forced onto
foreground with probability 1/3.
"""

from swin_jax.train.config import base_config

ITERATIONS_PER_EPOCH = 250   # nnU-Net's num_batches_per_epoch
EPOCHS = 1000


def nnunet_config(model: str, dataset: str, num_classes: int, batch_size: int):
  """A volume_segmentation run of ``model`` on ``dataset`` with the official recipe."""
  config = base_config("volume_segmentation")
  config.model.name = model
  config.model.overrides.update(dict(num_classes=num_classes))
  config.dataset.name = dataset
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.num_classes = num_classes
  config.optimizer.update(dict(
      name="sgd", base_lr=1e-2, reference_batch_size=batch_size, momentum=0.99, nesterov=True,
      weight_decay=3e-5, no_decay_1d_and_bias=False, no_decay_keywords=(),
      clip_grad_norm=12.0, schedule="poly", poly_power=0.9, warmup_mode="mmcv",
      warmup_epochs=0.0, warmup_steps=0, min_lr=0.0,
      schedule_every_steps=ITERATIONS_PER_EPOCH))
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  config.total_steps = EPOCHS * ITERATIONS_PER_EPOCH
  config.log_every_steps = 50
  config.eval_every_steps = 0              # the sliding-window evaluation at the end
  config.checkpoint_every_steps = 50 * ITERATIONS_PER_EPOCH   # nnU-Net saves every 50 epochs
  return config
