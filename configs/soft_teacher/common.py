"""The official Soft Teacher recipes (microsoft/SoftTeacher ``configs/soft_teacher/base.py``,
``soft_teacher_faster_rcnn_r50_caffe_fpn_coco_180k.py`` and ``..._full_720k.py``) on the
Swin-T Faster R-CNN, shared by ``swin_t_faster_rcnn_{1,5,10}pct_coco.py`` and
``swin_t_faster_rcnn_full_coco.py``.

What the configs reproduce:
- partial labels: ``percent`` % of COCO train2017 labelled, split as the official
  ``tools/dataset/semi_coco.py`` over ``instances_train2017.json``'s image order with the
  fold as its seed (folds 1..5 in the paper; ``task.fold``), the other images unlabelled;
  ``sample_ratio`` 1:4 with 5 images per GPU on 8 GPUs: 8 labelled + 32 unlabelled per step
  (``batch_size=8``, ``unlabelled_per_labelled=4``); unsup weight 4.0; 180k iterations, lr
  x0.1 at 120k and 160k;
- full labels: all of train2017 labelled, COCO ``unlabeled2017`` (TFDS ``coco/2017``
  split ``unlabeled``) unlabelled, 1:1 with 8 per GPU (32 + 32), unsup weight 2.0, 720k
  iterations, steps at 480k and 640k;
- both: SGD lr 0.01, momentum 0.9, weight decay 1e-4 on every parameter (mmdet's default
  ``paramwise_cfg``: none), mmcv linear warmup over 500 iterations from ratio 0.001
  (``schedule_1x``), no gradient clipping; the train cfg (initial score 0.5, RPN / cls
  pseudo thresholds 0.9, regression uncertainty 0.02, 10 jitters of scale 0.06), the EMA
  teacher (momentum 0.999, every iteration), the views (``RandResize`` short side 400..1200,
  long <= 1333; flip 0.5; the strong view's colour, geometric and erase ops), evaluation of
  the student every 4,000 iterations at (1333, 800), a checkpoint every 4,000; bf16 compute
  where the official runs use fp16.

Departures, by design: the detector is the Swin-T Faster R-CNN of the detection task (the
official configs use an R50-caffe FPN; the paper's Swin results have no released config),
initialised with ``--config.init_from=/path/to/swin_tiny_patch4_window7_224.pth``.
"""

from swin_jax.data import coco
from swin_jax.data import detection_transforms as dt
from swin_jax.train.config import base_config

MODEL = "faster_rcnn_swin_tiny_patch4_window7_fpn"
EVAL_EVERY = 4000
PARTIAL = dict(batch_size=8, ratio=4, unsup_weight=4.0, total_steps=180_000,
               steps=(120_000, 160_000))
FULL = dict(batch_size=32, ratio=1, unsup_weight=2.0, total_steps=720_000,
            steps=(480_000, 640_000))
UNLABELED_SPLIT = "unlabeled"   # TFDS coco/2017: the 123,403 images of unlabeled2017


def soft_teacher_coco(percent: float, fold: int = 1):
  """The recipe with ``percent`` % of train2017 labelled (100: the full-label variant)."""
  plan = FULL if percent >= 100 else PARTIAL
  config = base_config("soft_teacher")
  config.model.name = MODEL
  config.model.overrides.update(dict(num_classes=80, drop_path_rate=0.1, dtype="bfloat16"))

  config.dataset.name = coco.TFDS_NAME
  config.dataset.train_split = "train"
  config.dataset.eval_split = "validation"
  config.dataset.num_classes = 80
  config.dataset.image_size = 1344             # unused (task.canvas)

  task = config.task
  task.reader = "coco"
  task.max_instances = 100
  task.canvas = (1344, 1344)                   # holds every RandResize and test scale
  task.scale_range = ((1333, 400), (1333, 1200))
  task.test_scale = dt.TEST_SCALE
  task.flip_prob = 0.5
  task.category_ids = coco.COCO_CATEGORY_IDS
  task.eval_annotations = coco.VAL_ANNOTATIONS
  task.rpn_samples, task.rpn_pos_fraction = 256, 0.5
  task.rcnn_samples, task.rcnn_pos_fraction = 512, 0.25
  task.labelled_percent = float(min(percent, 100.0))
  task.fold = fold
  task.split_annotations = coco.TRAIN_ANNOTATIONS if percent < 100 else ""
  task.unlabelled_split = UNLABELED_SPLIT if percent >= 100 else ""
  task.unlabelled_per_labelled = plan["ratio"]
  task.unsup_weight = plan["unsup_weight"]

  config.optimizer.update(dict(
      name="sgd", base_lr=0.01, reference_batch_size=plan["batch_size"], momentum=0.9,
      weight_decay=1e-4, clip_grad_norm=0.0, schedule="step", step_epochs=(),
      step_steps=plan["steps"], step_gamma=0.1, min_lr=0.0, warmup_mode="mmcv",
      warmup_steps=500, warmup_ratio=0.001, warmup_epochs=0.0, warmup_lr=0.0,
      no_decay_1d_and_bias=False, no_decay_keywords=()))

  config.batch_size = plan["batch_size"]
  config.total_steps = plan["total_steps"]
  config.log_every_steps = 50
  config.eval_every_steps = EVAL_EVERY
  config.checkpoint_every_steps = EVAL_EVERY
  config.keep_checkpoints = 20                  # max_keep_ckpts
  config.init_from = ""
  return config
