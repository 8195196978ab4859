"""SimMIM pretraining on the embedded MNIST digits, the ``make demo`` classifier's Swin.

The encoder is the demo classifier's (32 px, 2 x 2 patches, width 32, 4 x 4 windows,
depths 2-2-2, heads 2-4-8; total stride 8, so the decoder predicts 8 x 8 pixel blocks);
masks have 4 px cells (8 x 8 of them, 39 masked at ratio 0.6). Labels are not read. At the
end the run writes ``reconstructions/step_<N>.png`` (masked input, reconstruction, original)
for the first 8 test digits.

  python -m swin_jax.main --config=configs/simmim/demo.py --workdir=runs/simmim_demo

Fine-tune the pretrained encoder into the demo classifier (mask token dropped, the rest
loaded; ``experiments/simmim_low_label.md`` measures what it gives):

  python -m swin_jax.main --config=configs/demo.py --workdir=runs/demo_from_simmim \
      --config.init_from=runs/simmim_demo
"""

from configs.demo import DEMO_SWIN
from swin_jax.train.config import base_config


def get_config():
  config = base_config("simmim")
  config.model.name = "simmim_swin_tiny_window6_192"
  config.model.overrides.update(dict(**DEMO_SWIN, encoder_stride=8, drop_path_rate=0.0))
  config.dataset.name = "swin_demo_mnist"
  config.dataset.train_split = "train"
  config.dataset.eval_split = "test"
  config.dataset.num_classes = 10        # unused: SimMIM reads no labels
  config.dataset.image_size = 32
  config.dataset.eval_crop = False
  config.task.mask_patch_size = 4
  config.task.mask_ratio = 0.6
  config.task.crop_scale = (0.67, 1.0)
  config.task.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  config.task.hflip = 0.0               # a mirrored digit is not a digit
  config.optimizer.update(dict(
      base_lr=1e-3, warmup_lr=1e-5, min_lr=1e-5, reference_batch_size=64, warmup_epochs=1.0,
      schedule="cosine", weight_decay=0.05, clip_grad_norm=5.0))
  config.batch_size = 64
  config.num_epochs = 8.0
  config.log_every_steps = 50
  config.eval_every_steps = 0            # the masked L1 on the test digits, at the end
  config.checkpoint_every_steps = 250
  return config
