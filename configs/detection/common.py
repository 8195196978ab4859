"""The official Mask R-CNN Swin recipes on COCO (Swin-Transformer-Object-Detection, mmdet
2.11: ``configs/swin/mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_adamw_{1x,3x}_coco.py``
on ``_base_/models/mask_rcnn_swin_fpn.py``), shared by ``mask_rcnn_swin_t_{1x,3x}_coco.py``.

What the configs reproduce:
- model: Mask R-CNN on the dense-mode Swin with stage norms, FPN 256, the official RPN / RoI
  heads and train / test cfgs (``mask_rcnn_swin_tiny_patch4_window7_fpn``), 80 classes, drop
  path 0.1 (1x) or 0.2 (3x); compute in bfloat16 (the official runs use fp16 AMP);
- samplers: RPN 256 at 0.5 positive, RCNN 512 at 0.25 positive with the ground truth added
  as proposals (``task.rpn_*``, ``task.rcnn_*``);
- AdamW lr 1e-4 at batch 16, betas (0.9, 0.999), weight decay 0.05 with ``paramwise_cfg``
  decay_mult 0 for names containing ``absolute_pos_embed``, ``relative_position_bias_table``
  or ``norm`` (every backbone LayerNorm, the 12 bias tables and norm0..3: biases ARE
  decayed), no gradient clipping (``grad_clip=None``);
- mmcv's ``lr_config``: step x0.1 at epochs 8 and 11 (1x, 12 epochs) or 27 and 33 (3x, 36
  epochs), linear warmup over 500 iterations with ratio 0.001 scaling the step value
  (``optimizer.warmup_mode='mmcv'``); evaluation and a checkpoint every epoch;
- the train pipeline of both files (their name says ``mstrain_480-800``): RandomFlip 0.5,
  then AutoAugment's two policies with equal odds: a keep-ratio resize to a short side in
  480..800 (step 32, long side at most 1333), or resize to 400/500/600 -> RandomCrop
  absolute_range 384..600 (``allow_negative_crop``) -> the same multi-scale resize; ImageNet
  mean/std; pad. Test: one keep-ratio resize to (1333, 800).

Static shapes: train batches are grouped onto five canvas buckets (``task.train_buckets``,
``TRAIN_BUCKETS``; ``swin_jax.data.detection_buckets``): each image keeps the official draws
above (the same images and scales as one canvas would get, only regrouped, as mmdet's
GroupSampler groups by aspect ratio), and each batch sits on the smallest bucket that holds
all its images, so the train step compiles five times (the loop prints ``train compiles:
N``). On a synthetic COCO-like size mix the buckets cut the padded share of the Swin-T
backbone's window-padded tokens from 70 % (one 1344 x 1344 canvas) to 34 % and its cost to
0.45 of the single canvas's (``experiments/detection_buckets.md``; mmdet's own per-GPU dynamic
padding: 29 %). The buckets were chosen greedily against that cost (window padding
included); sides whose /32 is a multiple of 7 (no window padding) came out worse, as the
larger canvas costs more at stages 1-2 than the padding it saves at stages 3-4. Eval and init
use ``task.canvas``, 1344 x 1344 (= 6 x 224, both orientations of the test scale).

Data: TFDS ``coco/2017`` (ArrayRecord under ``dataset.data_dir``; 118,287 train / 5,000
validation images). TFDS coco has boxes, labels and crowd flags but **no instance masks**:
the masks are read by annotation id from the official ``instances_train2017.json``, and the
evaluation's ground truth is ``instances_val2017.json`` (both from
annotations_trainval2017.zip, under ``{data_dir}/coco_annotations/``; see
``swin_jax.data.coco``). mmdet drops training images without annotations
(``filter_empty_gt``: 117,266 remain); here they stay (their loss is all background).

Starting weights: ``--config.init_from=/path/to/swin_tiny_patch4_window7_224.pth`` (the
official ImageNet-1K checkpoint; only the backbone is filled).
"""

from swin_jax.data import coco
from swin_jax.data import detection_transforms as dt
from swin_jax.train.config import base_config

MMDET_NO_DECAY_KEYWORDS = ("absolute_pos_embed", "relative_position_bias_table", "norm")
SCHEDULES = {"1x": dict(num_epochs=12.0, step_epochs=(8.0, 11.0), drop_path_rate=0.1),
             "3x": dict(num_epochs=36.0, step_epochs=(27.0, 33.0), drop_path_rate=0.2)}
COCO_TRAIN_IMAGES = 118_287
# (h, w) train canvases (experiments/detection_buckets.md, "greedy 5"): the orientation pair
# that holds every output (short side <= 800, long side <= 1333), then a square and a pair.
TRAIN_BUCKETS = ((800, 1344), (1344, 800), (768, 768), (768, 992), (992, 768))


def mask_rcnn_coco(model_name: str, schedule: str, **model_overrides):
  """The recipe of one Mask R-CNN variant and schedule ('1x' or '3x')."""
  plan = SCHEDULES[schedule]
  config = base_config("detection")
  config.model.name = model_name
  config.model.overrides.update(dict(num_classes=80, drop_path_rate=plan["drop_path_rate"],
                                     dtype="bfloat16", **model_overrides))

  config.dataset.name = coco.TFDS_NAME
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.num_classes = 80
  config.dataset.image_size = 1344             # unused by the detection task (task.canvas)

  task = config.task
  task.reader = "coco"
  task.max_instances = 100                     # COCO's most per image is 93
  task.canvas = (1344, 1344)                   # eval (and init)
  task.train_buckets = TRAIN_BUCKETS
  task.train_scales = dt.MSTRAIN_SCALES
  task.flip_prob = 0.5
  task.crop_prob = 0.5                         # AutoAugment: one of two policies
  task.crop_scales = dt.CROP_SCALES
  task.crop_size = dt.CROP_SIZE
  task.test_scale = dt.TEST_SCALE
  task.rpn_samples, task.rpn_pos_fraction = 256, 0.5
  task.rcnn_samples, task.rcnn_pos_fraction = 512, 0.25
  task.category_ids = coco.COCO_CATEGORY_IDS
  task.train_annotations = coco.TRAIN_ANNOTATIONS
  task.eval_annotations = coco.VAL_ANNOTATIONS

  config.optimizer.update(dict(
      name="adamw", base_lr=1e-4, reference_batch_size=16, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.05, clip_grad_norm=0.0,
      schedule="step", step_epochs=plan["step_epochs"], step_gamma=0.1, min_lr=0.0,
      warmup_mode="mmcv", warmup_steps=500, warmup_ratio=0.001, warmup_epochs=0.0,
      warmup_lr=0.0,                           # unused by warmup_mode='mmcv'
      no_decay_1d_and_bias=False, no_decay_keywords=MMDET_NO_DECAY_KEYWORDS))

  config.batch_size = 16                       # 8 GPUs x 2
  config.num_epochs = plan["num_epochs"]
  config.log_every_steps = 50
  config.eval_every_steps = -1                 # every epoch (evaluation interval=1)
  config.checkpoint_every_steps = COCO_TRAIN_IMAGES // 16   # every epoch
  config.keep_checkpoints = 3
  config.init_from = ""
  return config
