"""The official UperNet-Swin ADE20K 160k recipe (Swin-Transformer-Semantic-Segmentation,
``configs/swin/upernet_swin_*_patch4_window7_512x512_160k_ade20k.py`` on mmseg 0.11's
``_base_`` files), shared by ``swin_{t,s,b}_ade20k_160k.py``.

What the config reproduces:
- model: UperNet on the dense-mode Swin (``upernet_swin_*_patch4_window7_512``), 150
  classes, drop path 0.3, decode + auxiliary heads;
- loss (``task.loss='ce_aux'``): CE(decode) + 0.4 CE(aux), both resized bilinearly to the
  label, ignore index 255, averaged over all label pixels as mmseg does
  (``task.avg_non_ignore=False``);
- ``reduce_zero_label`` (ADE20K's 'other' label 0 is ignored; 1..150 -> 0..149);
- AdamW lr 6e-5, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 with ``paramwise_cfg``
  decay_mult 0 for names containing ``absolute_pos_embed``, ``relative_position_bias_table``
  or ``norm`` (76 tensors of UperNet Swin-T; biases and the heads' BN weights, ``.bn.``,
  are decayed), no gradient clipping;
- mmcv's ``lr_config``: poly power 1.0 to min_lr 0 over the 160k iterations, linear warmup
  over 1,500 iterations with ratio 1e-6 that scales the poly value of each iteration
  (``optimizer.warmup_mode='mmcv'``);
- 160k iterations of batch 16 (8 GPUs x 2); SyncBN (BatchNorm under ``jit`` averages over
  the global batch); evaluation and checkpoints every 16k iterations, whole-image mIoU from
  the dataset-wide intersection and union (``eval/miou``, ``eval/macc``, ``eval/aacc``) at
  each image's original size.

Learning rates are given per ``reference_batch_size`` images here and scaled linearly to the
batch (mmseg does not scale): 6e-5 at the official batch 16.

Data pipeline. Training (``task.pipeline='mmseg'``, ``swin_jax.data.mmseg_transforms``):
mmseg's ``ADE20K_TRAIN_PIPELINE`` below on host numpy: reduce_zero_label, a random keep-ratio
resize of (2048, 512) by a ratio in [0.5, 2), a 512 x 512 random crop re-drawn (10 tries)
while one class covers >= 75 % of it, horizontal flip with p 0.5, PhotoMetricDistortion,
ImageNet mean/std on 0..255, padding to 512 x 512 with 0 (image) and 255 (label); OpenCV's
bilinear/nearest resize and uint8 HSV numerics are reproduced (see that module).
Evaluation (``swin_jax.tasks.seg_inference``): mmseg's test pipeline, ``ADE20K_TEST_PIPELINE``
below: a keep-ratio resize to (2048, 512) (short side 512), ``test_cfg mode='whole'`` (the
official Swin UperNet configs), the decode logits resized back to the original label (reduced
by reduce_zero_label, 255 ignored). The ms+flip numbers are the official fork's
``aug_test``: ratios 0.5 .. 1.75 of (2048, 512) plus horizontal flips, the mean of the
softmax; select it with ``--config.task.mmseg.tta_ratios='(0.5,0.75,1.0,1.25,1.5,1.75)'
--config.task.mmseg.tta_flip=True`` (12 forward passes per image). Sliding-window testing:
``--config.task.mmseg.test_mode=slide`` (crop 512, stride 341). Images are padded onto a few
static canvases (each side a multiple of 32, 4 sizes per octave: 512 x {512, 640, 768, 896,
1024, 1280, 1536, 1792, 2048} and the portrait ones; labels likewise), one compiled program
per canvas pair; the first evaluation prints ``eval compiles: N``. Whole mode on a padded
canvas lets the model see the padding (as mmseg 1.2.2 does with a test-time pad size); the
official fork ran each image unpadded, so numbers may differ slightly at padded borders.

Data: TFDS ``scene_parse150`` (ArrayRecord build under ``dataset.data_dir``; its 'test'
split is ADEChallengeData2016's 2,000 validation images). TFDS builds its ``annotation``
from the 2017 challenge's ``annotations_instance`` archive and stores it as 3 channels; the
segmentation task reads the first channel. In that archive the first (red) channel is the
*instance* task's category ID and the second the instance ID (placeschallenge
``instancesegmentation/README.md``: 100 categories), not the 150-class scene-parsing label of
ADEChallengeData2016 that the official recipe trains on: check the labels of a TFDS build
before training on it. Users who build ADEChallengeData2016 themselves must provide
single-channel labels 0..150 (0 = 'other', reduced to the ignore index).

Starting weights: the official runs start from the ImageNet checkpoints of the same Swin
(``pretrained='pretrained/swin_{tiny,small,base}_patch4_window7_224.pth'``). Set
``--config.init_from=/path/to/swin_tiny_patch4_window7_224.pth`` (an official or timm
``.pth``, a converted dir or a classification run): only the backbone is filled (the
classifier's ``norm`` and ``head`` are dropped; ``norm0..3`` and the heads stay at init),
and the run prints what it loaded. Nothing is downloaded.
"""

from swin_jax.train.config import base_config

# mmseg's ADE20KDataset.CLASSES after reduce_zero_label (label k is CLASSES[k]).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag")

# mmseg configs/_base_/datasets/ade20k.py. Both go to task.mmseg (see the module docstring);
# the ms+flip ratios are selectable, single-scale whole-image testing is the default.
ADE20K_TRAIN_PIPELINE = dict(
    img_scale=(2048, 512),          # Resize, keep ratio, then a random ratio of it
    ratio_range=(0.5, 2.0),
    crop_size=(512, 512),           # RandomCrop
    cat_max_ratio=0.75,             # re-crop (up to 10 tries) while one class covers more
    flip_prob=0.5,                  # RandomFlip (horizontal)
    photometric_distortion=True,    # brightness 32, contrast/saturation 0.5-1.5, hue 18
    pad_size=(512, 512), seg_pad_val=255,
    img_norm=dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), to_rgb=True),
    reduce_zero_label=True)         # task.reduce_zero_label
ADE20K_TEST_PIPELINE = dict(
    img_scale=(2048, 512), keep_ratio=True, mode="whole",
    ms_flip_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75))


def ade20k_160k(model_name: str, **model_overrides):
  """The recipe for one UperNet variant (see the module docstring)."""
  config = base_config("segmentation")
  config.model.name = model_name
  config.model.overrides.update(dict(num_classes=150, drop_path_rate=0.3, **model_overrides))

  config.dataset.name = "scene_parse150"
  config.dataset.train_split = "train"       # 20,210 images
  config.dataset.eval_split = "test"         # ADE20K val, 2,000 images
  config.dataset.num_classes = 150
  config.dataset.image_size = 512

  task = config.task
  task.image_key = "image"
  task.label_key = "annotation"
  task.class_names = ADE20K_CLASSES
  task.normalize = "imagenet"                # SegTransform only; the mmseg pipeline normalises
  task.aug.rot_flip_prob = 0.0               # Swin-Unet's rot90/flip/rotation: not mmseg's
  task.aug.rotate_prob = 0.0
  train = ADE20K_TRAIN_PIPELINE
  task.pipeline = "mmseg"                    # training: mmseg's pipeline (module docstring)
  task.mmseg.update(dict(
      scale=train["img_scale"], ratio_range=train["ratio_range"],
      crop_size=train["crop_size"][0],       # square: dataset.image_size
      cat_max_ratio=train["cat_max_ratio"], flip_prob=train["flip_prob"]))
  test = ADE20K_TEST_PIPELINE
  task.mmseg.update(dict(
      test_scale=test["img_scale"], test_mode=test["mode"],
      tta_ratios=(),                         # ms+flip: test["ms_flip_ratios"] ...
      tta_flip=False))                       # ... and True (module docstring)
  task.evaluation = "pixels"
  task.loss = "ce_aux"
  task.ignore_index = 255
  task.aux_weight = 0.4
  task.avg_non_ignore = False
  task.reduce_zero_label = True

  config.optimizer.update(dict(
      name="adamw", base_lr=6e-5, reference_batch_size=16, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.01, clip_grad_norm=0.0,
      schedule="poly", poly_power=1.0, min_lr=0.0,
      warmup_mode="mmcv", warmup_steps=1500, warmup_ratio=1e-6, warmup_epochs=0.0,
      warmup_lr=0.0,                         # unused by warmup_mode='mmcv'
      no_decay_1d_and_bias=False,
      no_decay_keywords=("absolute_pos_embed", "relative_position_bias_table", "norm")))

  config.batch_size = 16
  config.total_steps = 160_000
  config.log_every_steps = 50                # mmseg log_config interval
  config.eval_every_steps = 16_000           # evaluation interval
  config.checkpoint_every_steps = 16_000     # checkpoint_config interval
  config.keep_checkpoints = 3
  config.init_from = ""                      # the ImageNet checkpoint (see the docstring)
  return config
