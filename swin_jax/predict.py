"""Predict on one image: a classifier's top classes, a segmentation mask, or detections;
or on one 3-D volume: a volume segmentation.

  python -m swin_jax.predict --model swin_tiny_patch4_window7_224 \
      --checkpoint swin_tiny_patch4_window7_224.pth --image cat.jpg
  python -m swin_jax.predict --model swin_t --image chelsea     # random weights: a smoke run
  python -m swin_jax.predict --checkpoint runs/unet_demo --image scene.png \
      [--overlay scene_mask.png --alpha 0.5]                     # a segmentation run
  python -m swin_jax.predict --checkpoint runs/detection_demo --image scene.png \
      [--overlay scene_detections.png --min_score 0.3]           # a detection run
  python -m swin_jax.predict --checkpoint runs/nnformer_demo --volume eval:0 \
      [--overlay slices.png --no_mirroring]                      # a 3-D (nnFormer) run
  python -m swin_jax.predict --checkpoint runs/nnformer_demo --volume ct.nii.gz  # or x.npy

``--checkpoint`` is a PyTorch file (official/timm/Swin-Unet), a directory written by
``python -m swin_jax.convert``, or a swin_jax training run directory (``config.json`` and
``checkpoints/``; its latest checkpoint, its own model, class names and input
normalisation; ``--model`` is ignored). Without one the model keeps random weights and the
classes mean nothing (the run still shows shapes, parameter count and timings).

What is predicted follows the model's output: ``(B, classes)`` logits print the top classes;
``(B, H, W, classes)`` logits (Swin-Unet) write ``--overlay``, a PNG of the input at its own
size with each pixel's predicted class blended in a fixed colour per class (class 0, the
background, left transparent), and print the colour and pixel share of every predicted
class. A segmentation input is resized to the model's ``img_size`` (bicubic, as the
training transforms zoom), and the predicted mask back to the input's size (nearest).

Detectors (Mask / Faster R-CNN) take the image as their test pipeline does (mmdet's
keep-ratio resize to the run's ``task.test_scale``, padded onto its canvas; other
checkpoints: (1333, 800) on the model's canvas); the detections, mapped back to the image's
pixels (masks pasted as mmdet does), are drawn into ``--overlay`` (boxes, ``'<class>
<score>'`` labels, masks blended) and printed, those scoring at least ``--min_score``.

``--volume`` (instead of ``--image``) takes a ``volume_segmentation`` run dir (nnFormer) and
one volume: ``eval:N``, the N-th volume of the run's eval split (its label drawn as the
ground truth, Dice per class printed); a ``.npy`` ``(D, H, W)`` or ``(D, H, W, C)`` array
taken as already normalised; or a ``.nii``/``.nii.gz`` file (preprocessed with the stored
plan of the run's ``medical_volumes/...`` dataset, else z-scored). It is labelled by
nnU-Net's sliding windows (the run's step size, Gaussian weighting, mirroring TTA unless
``--no_mirroring``); the voxels per class are printed and ``--overlay`` (default
``<volume stem>_slices.png``, or ``<run>/eval_N_slices.png``) gets axial, coronal and
sagittal slices through the predicted foreground's centre with the classes blended in the
colours above (``swin_jax.predict_volume``, ``swin_jax.visualize.volume_slices``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from swin_jax import cli
from swin_jax.convert import params_dir
from swin_jax.convert.torch_checkpoint import init_variables, input_size, load_torch_variables
from swin_jax.data import class_names, images
from swin_jax.models import registry
from swin_jax.models.backbone import find_backbones

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "swin_tiny_patch4_window7_224",
                    f"Model name, one of: {', '.join(registry.list_models())}.")
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint, converted-params directory or "
                    "training run directory.")
flags.DEFINE_string("image", "chelsea", "Image path, or a bundled scikit-image name "
                    f"({', '.join(images.BUNDLED_IMAGES)}).")
flags.DEFINE_integer("num_classes", None, "Override the head size (e.g. 21841 for 22K).")
flags.DEFINE_integer("top", 5, "How many classes to print.")
flags.DEFINE_string("overlay", None, "Segmentation, detection and volumes: the PNG to write "
                    "(default <image name>_segmentation.png / _detections.png in the current "
                    "directory; <volume stem>_slices.png, or <run>/eval_N_slices.png).")
flags.DEFINE_float("alpha", 0.5, "Segmentation / detection / volume overlay: opacity of the "
                   "class colours, 0..1.")
flags.DEFINE_float("min_score", 0.3, "Detection: draw and list detections scoring at least "
                   "this (the model keeps those above its own 0.05).")
flags.DEFINE_string("volume", None, "A 3-D volume for a volume_segmentation run (instead of "
                    "--image): eval:N (the run's N-th eval volume), a .npy (D, H, W[, C]) "
                    "array, already normalised, or a .nii/.nii.gz file.")
flags.DEFINE_bool("no_mirroring", False, "--volume: skip the mirroring test-time "
                  "augmentation (the run's task.eval.mirror_axes).")
flags.DEFINE_enum("normalize", None, ["imagenet", "none"], "Segmentation input: ImageNet "
                  "mean/std after scaling to [0, 1], or [0, 1] only. Default: what the "
                  "run trained with; 'imagenet' for other checkpoints.")

# Datasets whose images are floats in [0, 1] that training feeds as they are (task.normalize
# 'auto'): a PNG of such an image is scaled to [0, 1] only.
FLOAT_IMAGE_DATASETS = ("synapse",)


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model, its params, and what is known of where they came from."""
  model: Any
  params: Any
  source: str                          # for the printout
  name: str                            # registry name
  run_config: dict | None = None       # a training run's config.json
  model_state: dict = dataclasses.field(default_factory=dict)  # UperNet's batch_stats


def is_run_dir(path: str | None) -> bool:
  from swin_jax.train import init_from  # pylint: disable=import-outside-toplevel
  return bool(path) and os.path.isfile(os.path.join(path, init_from.RUN_CONFIG_FILE))


def _run_task(path: str) -> str | None:
  from swin_jax.train import init_from  # pylint: disable=import-outside-toplevel
  return init_from.run_config(path).get("task", {}).get("name")


def load(name: str, checkpoint: str | None, **overrides) -> Loaded:
  """The model and variables of a run dir, a converted dir, a PyTorch file, or a random init."""
  if is_run_dir(checkpoint):
    from swin_jax.train import init_from  # pylint: disable=import-outside-toplevel
    model, variables = init_from.latest_run_variables(checkpoint)
    config = init_from.run_config(checkpoint)
    params = variables.pop("params")
    return Loaded(model, params, f"training run {checkpoint} (latest checkpoint)",
                  config["model"]["name"], config, variables)
  if checkpoint and os.path.isdir(checkpoint):
    model, params = params_dir.load_params_dir(checkpoint)
    with open(os.path.join(checkpoint, params_dir.MODEL_FILE)) as f:
      name = json.load(f)["model"]
    return Loaded(model, params, checkpoint, name,
                  model_state=params_dir.load_model_state(checkpoint))
  name = registry.resolve_name(name)
  model = registry.create_model(name, **overrides)
  if checkpoint:
    variables = _load_file(checkpoint, model)
    source = checkpoint
  else:
    variables = init_variables(model)
    source = "random init (no --checkpoint: classes are meaningless)"
  params = variables.pop("params")
  return Loaded(model, params, source, name, model_state=variables)


def _load_file(path: str, model: Any) -> dict[str, Any]:
  from swin_jax.convert import swin_unet  # pylint: disable=import-outside-toplevel
  if swin_unet.is_swin_unet(model):
    # Tables resized to the model's window.
    return {"params": swin_unet.load_swin_unet(path, model)[0]}
  return load_torch_variables(path, model)


def load_model_and_params(name: str, checkpoint: str | None, **overrides):
  """``(model, params, source)``: from a run dir, a converted dir, a PyTorch file, or a
  random init."""
  loaded = load(name, checkpoint, **overrides)
  return loaded.model, loaded.params, loaded.source


def window_size(model: Any) -> Any:
  """The window of the model's (first) Swin backbone, for the printout."""
  backbone = next(iter(find_backbones(model).values()), None)
  return getattr(model, "window_size", None) or getattr(backbone, "window_size", None)


def load_input_image(path_or_name: str) -> Image.Image:
  """An RGB PIL image; a file PIL cannot read is a ValueError naming it."""
  try:
    return images.load_image(path_or_name)
  except UnidentifiedImageError as e:
    raise ValueError(f"{path_or_name} is not an image file that PIL can read "
                     "(PNG, JPEG, BMP, TIFF, ...)") from e


def top_classes(logits: np.ndarray, k: int) -> list[tuple[int, str, float]]:
  """``[(index, name, probability)]`` of the ``k`` most probable classes of ``(classes,)``."""
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)))
  names = class_names.class_names(logits.shape[-1])
  order = np.argsort(-probs)[:k]
  return [(int(i), names[i], float(probs[i])) for i in order]


# ----------------------------------------------------------------------------------------
# Segmentation.


def segmentation_normalization(run_config: dict | None) -> str:
  """``'imagenet'`` or ``'none'`` for an 8-bit image file, as the run's training fed its
  images: ``task.normalize``, where ``'auto'`` means ImageNet mean/std for uint8 datasets and
  nothing for the float ones (``FLOAT_IMAGE_DATASETS``)."""
  if not run_config:
    return "imagenet"
  normalize = run_config.get("task", {}).get("normalize", "auto")
  if normalize != "auto":
    return normalize
  dataset = str(run_config.get("dataset", {}).get("name", ""))
  return "none" if dataset.split("/")[0] in FLOAT_IMAGE_DATASETS else "imagenet"


def segmentation_input(image: Image.Image, hw: tuple[int, int], normalize: str) -> np.ndarray:
  """An RGB image -> the model input ``(h, w, 3)`` float32: bicubic zoom to ``hw`` (scipy,
  as ``seg_transforms``), scaled to [0, 1], then ``normalize`` (``'imagenet'``/``'none'``)."""
  from scipy import ndimage  # pylint: disable=import-outside-toplevel

  from swin_jax.data import seg_transforms  # pylint: disable=import-outside-toplevel
  pixels = np.asarray(image, np.float32)
  if pixels.shape[:2] != tuple(hw):
    factors = (hw[0] / pixels.shape[0], hw[1] / pixels.shape[1], 1)
    pixels = ndimage.zoom(pixels, factors, order=3)
    pixels = np.clip(pixels[:hw[0], :hw[1]], 0, 255)  # cubic overshoot: keep 8-bit range
  return seg_transforms.to_rgb_input(pixels, np.uint8, normalize)


def segmentation_class_names(run_config: dict | None, num_classes: int) -> list[str]:
  """The run's ``task.class_names``, else ``background, class 1, class 2, ...``."""
  names = list((run_config or {}).get("task", {}).get("class_names") or ())
  if len(names) == num_classes:
    return [str(n) for n in names]
  return ["background"] + [f"class {k}" for k in range(1, num_classes)]


def default_overlay_path(image: str, what: str = "segmentation") -> str:
  stem = os.path.splitext(os.path.basename(image))[0] or "image"
  return f"{stem}_{what}.png"


def write_overlay(image: Image.Image, labels: np.ndarray, colors: np.ndarray, path: str,
                  alpha: float) -> np.ndarray:
  """Writes ``image`` with ``labels`` ``(h, w)`` (resized to the image, nearest) blended in
  ``colors`` ``(K, 3)``, as a PNG at the image's size; returns the written ``(H, W, 3)``."""
  from swin_jax.visualize import overlay  # pylint: disable=import-outside-toplevel
  pixels = np.asarray(image.convert("RGB"), np.uint8)
  shown = overlay.blend(pixels, overlay.upsample_labels(labels, pixels.shape[:2]), colors,
                        alpha)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(shown).save(path, format="PNG")
  return shown


def _predict_segmentation(loaded: Loaded, image: Image.Image, compiled, hw, times) -> None:
  from swin_jax.visualize import overlay  # pylint: disable=import-outside-toplevel
  normalize = FLAGS.normalize or segmentation_normalization(loaded.run_config)
  pixels = segmentation_input(image, hw, normalize)
  start = time.perf_counter()
  logits = np.asarray(compiled(loaded.params, jnp.asarray(pixels[None])))[0]
  run_s = time.perf_counter() - start
  labels = np.argmax(logits, axis=-1)
  num_classes = logits.shape[-1]
  colors = overlay.class_colors(num_classes)
  path = FLAGS.overlay or default_overlay_path(FLAGS.image)
  write_overlay(image, labels, colors, path, FLAGS.alpha)
  names = segmentation_class_names(loaded.run_config, num_classes)
  print(f"input      {image.width}x{image.height} image -> {hw[0]}x{hw[1]} model input "
        f"({normalize} normalisation)")
  print(f"logits     {logits.shape} (H, W, classes); compile {times['compile']:.2f} s, "
        f"forward {run_s:.3f} s")
  print(f"overlay    wrote {path} ({image.width}x{image.height}, alpha {FLAGS.alpha}; "
        "background transparent)")
  print(f"classes    pixel share of the {hw[0]}x{hw[1]} prediction:")
  for line in overlay.legend_lines(labels, colors, names):
    print(line)


# ----------------------------------------------------------------------------------------
# Detection.


def is_detector(model: Any) -> bool:
  # pylint: disable-next=import-outside-toplevel
  from swin_jax.models.detection.rcnn import FasterRCNN, MaskRCNN
  return isinstance(model, (MaskRCNN, FasterRCNN))


def detection_geometry(model: Any, run_config: dict | None) -> tuple[tuple[int, int],
                                                                     tuple[int, int]]:
  """``(test_scale, canvas)``: the run's (``task.test_scale``, ``DetectionTask.canvas()``),
  else mmdet's (1333, 800) on the model's canvas (``img_size``)."""
  from swin_jax.data import detection_transforms as dt  # pylint: disable=import-outside-toplevel
  from swin_jax import tasks  # pylint: disable=import-outside-toplevel
  task_name = (run_config or {}).get("task", {}).get("name")
  # Detection runs and the tasks built on it (Soft Teacher) know their canvas.
  if task_name and issubclass(tasks.task_class(task_name), tasks.DetectionTask):
    import ml_collections  # pylint: disable=import-outside-toplevel

    task = tasks.get_task(ml_collections.ConfigDict(run_config))
    return tuple(int(s) for s in run_config["task"]["test_scale"]), task.canvas()
  return dt.TEST_SCALE, tuple(int(s) for s in input_size(model))


def detection_class_names(run_config: dict | None, num_classes: int) -> list[str]:
  """COCO's names for a COCO run or an 80-class checkpoint, the digits for digit scenes,
  else ``class 0, class 1, ...``."""
  from swin_jax.data import coco  # pylint: disable=import-outside-toplevel
  from swin_jax.data import digit_scenes  # pylint: disable=import-outside-toplevel
  dataset = str((run_config or {}).get("dataset", {}).get("name", ""))
  if digit_scenes.is_digit_scenes(dataset) and num_classes == 10:
    return [str(d) for d in range(10)]
  if (coco.is_coco(dataset) or not dataset) and num_classes == len(coco.COCO_CLASS_NAMES):
    return list(coco.COCO_CLASS_NAMES)
  return [f"class {k}" for k in range(num_classes)]


def detect_image(loaded: Loaded, pixels: np.ndarray, scale, canvas) -> dict[str, np.ndarray]:
  """Detections of one uint8 ``(H, W, 3)`` image in its own pixels: ``boxes (N, 4)``,
  ``scores``, ``classes`` and (Mask R-CNN) ``masks (N, H, W)`` bool, N the model's kept."""
  from swin_jax.data import detection_transforms as dt  # pylint: disable=import-outside-toplevel
  from swin_jax.models.detection import postprocess  # pylint: disable=import-outside-toplevel
  source = {"image": pixels, "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros((0,), np.int32)}
  resized = dt.keep_ratio_resize(source, scale, canvas)
  batch = dt.to_canvas(resized, canvas, max_instances=1, with_masks=False)
  model, state = loaded.model, loaded.model_state
  dets = jax.jit(lambda p, x, hw: model.apply({"params": p, **state}, x, hw))(
      loaded.params, jnp.asarray(batch["image"][None]), jnp.asarray(batch["image_hw"][None]))
  dets = jax.device_get(dets)
  n = int(dets["num_detections"][0])
  sy, sx = (float(v) for v in resized["scale_factor"])
  boxes = np.asarray(dets["boxes"][0, :n], np.float32) / np.float32([sx, sy, sx, sy])
  out = {"boxes": boxes, "scores": np.asarray(dets["scores"][0, :n], np.float32),
         "classes": np.asarray(dets["classes"][0, :n], np.int64)}
  if "masks" in dets:
    out["masks"] = postprocess.paste_masks(dets["masks"][0, :n], boxes, pixels.shape[:2])
  return out


def _predict_detection(loaded: Loaded, image: Image.Image) -> None:
  from swin_jax.visualize import detections  # pylint: disable=import-outside-toplevel
  pixels = np.asarray(image.convert("RGB"), np.uint8)
  scale, canvas = detection_geometry(loaded.model, loaded.run_config)
  start = time.perf_counter()
  dets = detect_image(loaded, pixels, scale, canvas)
  run_s = time.perf_counter() - start
  keep = dets["scores"] >= FLAGS.min_score
  dets = {k: v[keep] for k, v in dets.items()}
  names = detection_class_names(loaded.run_config, loaded.model.num_classes)
  shown = detections.draw_detections(pixels, dets["boxes"], dets["scores"], dets["classes"],
                                     names, masks=dets.get("masks"), alpha=FLAGS.alpha)
  path = FLAGS.overlay or default_overlay_path(FLAGS.image, "detections")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(shown).save(path, format="PNG")
  print(f"input      {image.width}x{image.height} image -> keep-ratio resize to {scale}, "
        f"canvas {canvas[0]}x{canvas[1]}; compile + forward {run_s:.2f} s")
  print(f"overlay    wrote {path} ({len(dets['scores'])} detections with score >= "
        f"{FLAGS.min_score}{', masks' if 'masks' in dets else ''})")
  for box, score, cls in zip(dets["boxes"], dets["scores"], dets["classes"]):
    x0, y0, x1, y1 = (float(v) for v in box)
    print(f"  {score:6.3f}  {names[cls]:>14}  box ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f})")


# ----------------------------------------------------------------------------------------
# The command.


def _predict_classes(loaded: Loaded, image: Image.Image, compiled, size: int, times) -> None:
  crop = size < 384
  if loaded.run_config:  # the run's own eval geometry
    crop = bool(loaded.run_config.get("dataset", {}).get("eval_crop", crop))
  batch = jnp.asarray(images.eval_transform(image, size, crop=crop)[None])
  start = time.perf_counter()
  logits = np.asarray(compiled(loaded.params, batch))[0]
  run_s = time.perf_counter() - start
  print(f"image      {FLAGS.image} -> input {tuple(batch.shape)} (B, H, W, C) float32")
  print(f"logits     {logits.shape[0]} classes; compile {times['compile']:.2f} s, "
        f"forward {run_s:.3f} s")
  if logits.shape[0] == class_names.NUM_CLASSES_22K:
    print(f"note       22K names past head index ~{class_names.APPROXIMATE_22K_FROM} "
          "are approximate (official head order differs from fall11)")
  for rank, (index, name, prob) in enumerate(top_classes(logits, FLAGS.top), 1):
    print(f"  {rank}. {prob:7.2%}  [{index:5d}] {name}")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not 0.0 <= FLAGS.alpha <= 1.0:
    raise app.UsageError(f"--alpha must be in [0, 1], got {FLAGS.alpha}")
  if FLAGS.volume is not None:
    if FLAGS["image"].present:
      raise app.UsageError("give --image or --volume, not both")
    from swin_jax import predict_volume  # pylint: disable=import-outside-toplevel
    predict_volume.run(FLAGS.checkpoint, FLAGS.volume, overlay_path=FLAGS.overlay,
                       alpha=FLAGS.alpha, mirroring=not FLAGS.no_mirroring,
                       predict=sys.modules[__name__])
    return
  if is_run_dir(FLAGS.checkpoint) and _run_task(FLAGS.checkpoint) == "volume_segmentation":
    raise app.UsageError(f"{FLAGS.checkpoint} is a 3-D volume_segmentation run: give "
                         "--volume (eval:N, a .npy array or a .nii/.nii.gz file)")
  overrides = {"num_classes": FLAGS.num_classes} if FLAGS.num_classes else {}
  image = load_input_image(FLAGS.image)  # before the weights: a wrong path fails at once
  loaded = load(FLAGS.model, FLAGS.checkpoint, **overrides)
  model = loaded.model
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(loaded.params))
  if is_detector(model):
    print(f"model      {loaded.name} (window {window_size(model)}, {num_params:,} params, "
          "detection)")
    print(f"weights    {loaded.source}")
    _predict_detection(loaded, image)
    return
  hw = input_size(model)

  # The output's rank says what the model predicts: (B, K) classes or (B, H, W, K) masks.
  # BatchNorm statistics (UperNet) are fixed in eval mode: part of the program.
  state = loaded.model_state
  forward = jax.jit(lambda p, x: model.apply({"params": p, **state}, x, train=False))
  start = time.perf_counter()
  lowered = forward.lower(loaded.params, jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32))
  compiled = lowered.compile()
  times = {"compile": time.perf_counter() - start}
  dense = lowered.out_info.ndim == 4

  print(f"model      {loaded.name} (window {window_size(model)}, {num_params:,} params, "
        f"{'segmentation' if dense else 'classification'})")
  print(f"weights    {loaded.source}")
  if dense:
    _predict_segmentation(loaded, image, compiled, hw, times)
  else:
    _predict_classes(loaded, image, compiled, hw[0], times)


if __name__ == "__main__":
  cli.run(main, command="predict")
