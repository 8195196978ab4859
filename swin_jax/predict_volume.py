"""``python -m swin_jax.predict --checkpoint RUN --volume ...``: a 3-D segmentation run on one
volume (the ``--volume`` part of ``swin_jax.predict``; see its docstring).

The run is a ``volume_segmentation`` training run (nnFormer). The volume, one of

* ``eval:N``: the N-th volume of the run's eval split (``dataset.eval_split``), as the
  run's evaluation reads it; its label is drawn as the ground truth and scored (Dice);
* ``*.npy``: a ``(D, H, W)`` or ``(D, H, W, C)`` array taken as already normalised
  (shown at isotropic spacing);
* ``*.nii`` / ``*.nii.gz``: read with ``medical_volumes.read_nifti``; when the run's dataset
  is a ``medical_volumes/...`` build, preprocessed with its stored plan (nonzero crop,
  resampling to the target spacing, nnU-Net's normalisation) as its training data was;
  otherwise z-scored per channel over the whole volume (nnU-Net's non-CT normalisation, as
  the organ phantoms are) at the header's spacing,

is labelled by nnU-Net's sliding windows (``volume_inference.predict_volume``: the run's
``task.eval.step_size``, Gaussian weighting, mirroring TTA over ``task.eval.mirror_axes``
unless ``--no_mirroring``) in batches of the run's eval batch size, through one jitted
``mirrored_probabilities``. Printed: voxels per class (and for ``eval:N`` the truth's
voxels and Dice per class); written: orthogonal slices with the labels overlaid
(``visualize.volume_slices``), to ``--overlay`` or ``<volume stem>_slices.png`` /
``<run>/eval_N_slices.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from swin_jax.tasks import medical_metrics
from swin_jax.tasks import volume_inference
from swin_jax.visualize import overlay
from swin_jax.visualize import volume_slices

TASK = "volume_segmentation"
EVAL_PREFIX = "eval:"


@dataclasses.dataclass(frozen=True)
class VolumeInput:
  """A volume as the model takes it, and what to show with it."""
  image: np.ndarray                       # (D, H, W, C) float32, normalised
  spacing: tuple[float, float, float] | None   # mm (D, H, W); None: unknown (isotropic)
  label: np.ndarray | None                # (D, H, W) ground truth (eval:N)
  description: str                        # for the printout
  overlay_path: str                       # the default --overlay


def volume_run_config(checkpoint: str | None) -> dict[str, Any]:
  """The run config of ``checkpoint``, which must be a volume_segmentation run dir."""
  from swin_jax.train import init_from  # pylint: disable=import-outside-toplevel
  needs = ("--volume needs --checkpoint to be a volume_segmentation training run directory "
           "(config.json with task.name 'volume_segmentation', e.g. a "
           "configs/nnformer/demo.py run)")
  if not checkpoint:
    raise ValueError(f"{needs}; no --checkpoint given")
  if not os.path.isfile(os.path.join(checkpoint, init_from.RUN_CONFIG_FILE)):
    raise ValueError(f"{needs}; {checkpoint} is not a training run directory")
  config = init_from.run_config(checkpoint)
  task = config.get("task", {}).get("name")
  if task != TASK:
    raise ValueError(f"{needs}; {checkpoint} is a {task!r} run")
  return config


def _stem(path: str) -> str:
  name = os.path.basename(path)
  for ending in (".nii.gz", ".nii", ".npy"):
    if name.endswith(ending):
      return name[:-len(ending)] or "volume"
  return os.path.splitext(name)[0] or "volume"


def _channels_last(image: np.ndarray) -> np.ndarray:
  return image[..., None] if image.ndim == 3 else image


def read_volume(spec: str, run_dir: str, config: dict[str, Any]) -> VolumeInput:
  """The ``--volume`` argument: ``eval:N``, a ``.npy`` or a NIfTI file (module docstring)."""
  from swin_jax.data import medical_volumes  # pylint: disable=import-outside-toplevel
  if spec.startswith(EVAL_PREFIX):
    return eval_volume(spec[len(EVAL_PREFIX):], run_dir, config)
  if spec.endswith(".npy"):
    return npy_volume(spec)
  if spec.endswith(medical_volumes.NIFTI_ENDINGS):
    return nifti_volume(spec, config)
  raise ValueError(f"--volume {spec!r}: expected eval:N, a .npy array or a .nii/.nii.gz file")


def eval_volume(index_text: str, run_dir: str, config: dict[str, Any]) -> VolumeInput:
  from swin_jax.data import sources  # pylint: disable=import-outside-toplevel
  try:
    index = int(index_text)
  except ValueError:
    raise ValueError(f"--volume eval:N needs an integer N, got {index_text!r}") from None
  dataset = ml_collections.ConfigDict(config["dataset"])
  split = dataset.get("eval_split", "test")
  source = sources.open_source(dataset, split)
  if not 0 <= index < len(source):
    raise ValueError(f"--volume eval:{index}: the eval split {split!r} of {dataset.name} has "
                     f"{len(source)} volumes (eval:0 .. eval:{len(source) - 1})")
  example = source[index]
  task = config.get("task", {})
  image = _channels_last(np.asarray(example[task.get("image_key", "image")], np.float32))
  label = np.asarray(example[task.get("label_key", "label")]).astype(np.int64)
  spacing = example.get("spacing")
  case = example.get("case_id", b"")
  case = case.decode() if isinstance(case, bytes) else str(case)
  return VolumeInput(image, None if spacing is None else tuple(float(s) for s in spacing),
                     label, f"eval:{index} ({dataset.name}, split {split}"
                     f"{', ' + case if case else ''})",
                     os.path.join(run_dir, f"eval_{index}_slices.png"))


def npy_volume(path: str) -> VolumeInput:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"volume {path} not found")
  try:
    array = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"{path} is not a numpy array file: {e}") from e
  if array.ndim not in (3, 4) or not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{path}: expected a numeric (D, H, W) or (D, H, W, C) array, got "
                     f"{array.dtype} {array.shape}")
  return VolumeInput(_channels_last(array.astype(np.float32)), None, None,
                     f"{path} (taken as normalised)", f"{_stem(path)}_slices.png")


def stored_plan(config: dict[str, Any]):
  """The preprocessing plan of the run's dataset when it is a ``medical_volumes`` build,
  else None."""
  from swin_jax.data import medical_volumes  # pylint: disable=import-outside-toplevel
  from swin_jax.data import sources  # pylint: disable=import-outside-toplevel
  dataset = ml_collections.ConfigDict(config["dataset"])
  if str(dataset.name).split("/")[0] != medical_volumes.NAME:
    return None
  metadata = sources.prepared_builder(dataset).info.metadata
  if not metadata or "target_spacing" not in metadata:
    return None
  return medical_volumes.Plan.from_metadata(metadata)


def nifti_input(data: np.ndarray, spacing, plan) -> tuple[np.ndarray, tuple[float, ...], str]:
  """``(image (D, H, W, C), spacing, how)`` of a NIfTI's voxels ``(z, y, x)`` or ``(C, z,
  y, x)``: preprocessed by ``plan`` (``medical_volumes.preprocess``), or without one
  z-scored per channel."""
  from swin_jax.data import medical_volumes  # pylint: disable=import-outside-toplevel
  channels = data[None] if data.ndim == 3 else data
  if plan is not None:
    out = medical_volumes.preprocess(channels, spacing, plan)
    how = (f"preprocessed with the plan of medical_volumes/{plan.name} (cropped "
           f"{out.original_shape} -> {out.cropped_shape}, resampled to "
           f"{tuple(round(s, 4) for s in plan.target_spacing)} mm, "
           f"{'/'.join(plan.normalization)} normalisation)")
    return (np.ascontiguousarray(out.image.transpose(1, 2, 3, 0)),
            tuple(float(s) for s in plan.target_spacing), how)
  image = np.empty((*channels.shape[1:], channels.shape[0]), np.float32)
  for c, channel in enumerate(channels.astype(np.float64)):
    image[..., c] = (channel - channel.mean()) / (channel.std() + 1e-8)
  return image, tuple(float(s) for s in spacing), "z-scored per channel (no stored plan)"


def nifti_volume(path: str, config: dict[str, Any]) -> VolumeInput:
  from swin_jax.data import medical_volumes  # pylint: disable=import-outside-toplevel
  data, spacing = medical_volumes.read_nifti(path)
  image, spacing, how = nifti_input(data, spacing, stored_plan(config))
  return VolumeInput(image, spacing, None, f"{path} ({how})", f"{_stem(path)}_slices.png")


def window_probabilities_fn(model, params, model_state, mirror_axes):
  """``windows (b, *crop, C) -> (b, *crop, K)`` probabilities: one jitted program."""
  def probabilities(p, x):
    apply = lambda v: model.apply({"params": p, **model_state}, v, train=False)  # noqa: E731
    return volume_inference.mirrored_probabilities(apply, x, mirror_axes)
  compiled = jax.jit(probabilities)
  return lambda windows: compiled(params, windows)


def class_table(prediction: np.ndarray, names, colors, truth: np.ndarray | None
                ) -> list[str]:
  """Per class: name, colour, predicted voxels and share; with ``truth`` its voxels and
  ``medical_metrics.dice``; then the mean Dice over classes 1..K-1."""
  counts = np.bincount(prediction.ravel(), minlength=len(names))
  width = max(len(n) for n in names + ["class"])
  head = f"  {'class':<{width}}  colour    {'voxels':>9}    share"
  lines = [head + (f"  {'truth':>9}    dice" if truth is not None else "")]
  truth_counts = None if truth is None else np.bincount(truth.ravel(), minlength=len(names))
  dices = []
  for k, name in enumerate(names):
    color = "(none)" if k == overlay.BACKGROUND else overlay.hex_color(colors[k])
    line = f"  {name:<{width}}  {color:<8}  {counts[k]:>9d}  {counts[k] / prediction.size:7.2%}"
    if truth is not None:
      line += f"  {truth_counts[k]:>9d}"
      if k != overlay.BACKGROUND:
        dices.append(medical_metrics.dice(prediction == k, truth == k))
        line += f"  {dices[-1]:.4f}"
    lines.append(line)
  if dices:
    lines.append(f"  mean Dice {np.mean(dices):.4f} over classes 1..{len(names) - 1}")
  return lines


def run(checkpoint: str | None, spec: str, *, overlay_path: str | None = None,
        alpha: float = 0.5, mirroring: bool = True, predict: Any = None) -> np.ndarray:
  """The command: checks, reads the volume, predicts, prints, writes the slices; returns
  the predicted labels ``(D, H, W)``. ``predict``: the ``swin_jax.predict`` module (its
  ``load`` and ``segmentation_class_names``), imported if not given; the command passes
  itself, as under ``python -m`` it is ``__main__`` and a second import would define its
  flags twice."""
  if predict is None:
    from swin_jax import predict  # pylint: disable=import-outside-toplevel,redefined-outer-name
  config = volume_run_config(checkpoint)
  volume = read_volume(spec, checkpoint, config)   # a bad volume fails before the weights
  loaded = predict.load("", checkpoint)
  model = loaded.model
  if volume.image.shape[-1] != model.in_channels:
    raise ValueError(f"the model takes {model.in_channels} channel(s); the volume has "
                     f"{volume.image.shape[-1]} (shape {volume.image.shape})")
  patch = tuple(int(s) for s in model.crop_size)
  evaluation = config.get("task", {}).get("eval", {})
  step_size = float(evaluation.get("step_size", 0.5))
  mirror_axes = tuple(evaluation.get("mirror_axes", (0, 1, 2))) if mirroring else ()
  windows = len(volume_inference.window_plan([volume.image.shape[:3]], patch, step_size))
  batch = max(1, min(int(config.get("eval_batch_size") or config.get("batch_size") or 1),
                     windows))
  probabilities = window_probabilities_fn(model, loaded.params, loaded.model_state,
                                          mirror_axes)
  start = time.perf_counter()
  labels = volume_inference.predict_volume(probabilities, volume.image, patch,
                                           model.num_classes, step_size, batch)
  run_s = time.perf_counter() - start
  names = predict.segmentation_class_names(config, model.num_classes)
  path = overlay_path or volume.overlay_path
  point = volume_slices.foreground_centre(labels, labels.shape)
  volume_slices.write_orthogonal_slices(
      path, volume.image[..., 0], labels, ground_truth=volume.label, point=point,
      spacing=volume.spacing, class_names=names, alpha=alpha)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(loaded.params))
  print(f"model      {loaded.name} (crop {patch}, {num_params:,} params, volume segmentation)")
  print(f"weights    {loaded.source}")
  spacing = "unknown (shown isotropic)" if volume.spacing is None else \
      f"{tuple(round(s, 4) for s in volume.spacing)} mm"
  print(f"volume     {volume.description}: {volume.image.shape[:3]} voxels, "
        f"{volume.image.shape[3]} channel(s), spacing {spacing}")
  print(f"inference  {windows} windows of {patch} at step {step_size}, batches of {batch}, "
        f"mirroring over axes {mirror_axes or 'none'}; compile + run {run_s:.2f} s")
  print(f"overlay    wrote {path} (slices through d, h, w = {point}; alpha {alpha}"
        f"{'; ground truth below' if volume.label is not None else ''})")
  print("classes    voxels per class" + (", truth and Dice:" if volume.label is not None
                                         else ":"))
  for line in class_table(labels, names, overlay.class_colors(model.num_classes),
                          volume.label):
    print(line)
  return labels
