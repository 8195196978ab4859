"""Predicted masks of a segmentation run (Swin-Unet, UperNet) on its held-out scenes, under
the ground truth.

  python experiments/segmentation_figure.py --run runs/unet_demo \\
      --out experiments/figures/swin_unet/demo_predictions.png

Takes the first ``--count`` examples of the run's eval split, runs the newest checkpoint
(params and, for UperNet, its BN statistics) on the task's own eval transform and draws one
column per scene: the input, the ground truth and the prediction, each class in the colour
``swin_jax.visualize.overlay`` gives it (background left clear). Prints each scene's true and
predicted classes with their pixel counts.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ZOOM = 4   # small scenes drawn 4x (nearest), so strokes stay visible


def predict_eval_scenes(run: str, count: int) -> dict[str, np.ndarray]:
  """The first ``count`` eval examples of ``run``: ``images (N, H, W, 3)`` uint8 as stored,
  ``labels (N, H, W)`` and ``predictions (N, H, W)`` int."""
  # pylint: disable=import-outside-toplevel
  import jax
  import ml_collections
  from swin_jax import tasks
  from swin_jax.data import sources
  from swin_jax.train import init_from

  config = ml_collections.ConfigDict(init_from.run_config(run))
  task = tasks.get_task(config)
  source = sources.open_source(config.dataset, config.dataset.eval_split)
  if count > len(source):
    raise ValueError(f"--count {count}: the eval split of {run} has {len(source)} examples")
  examples = [source[i] for i in range(count)]
  transform = task.eval_transform()
  inputs = np.stack([transform(example)["image"] for example in examples])
  model, variables = init_from.latest_run_variables(run)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, inputs)
  if logits.shape[1:3] != inputs.shape[1:3]:
    raise ValueError(f"{run}: logits {logits.shape} do not cover the input {inputs.shape}")
  images = np.stack([np.asarray(e[config.task.image_key]) for e in examples])
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, -1)
  return dict(images=images,
              labels=np.stack([np.asarray(e[config.task.label_key]) for e in examples]),
              predictions=np.asarray(np.argmax(logits, -1)),
              class_names=tuple(task.class_names()))


def draw(found: dict[str, np.ndarray], title: str):
  """A matplotlib figure: input, ground truth and prediction rows, one column per scene."""
  # pylint: disable=import-outside-toplevel
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from swin_jax.visualize import overlay

  names = found["class_names"]
  colors = overlay.class_colors(len(names))
  zoom = lambda a: np.repeat(np.repeat(a, ZOOM, 0), ZOOM, 1)
  count = len(found["images"])
  fig, axes = plt.subplots(3, count, figsize=(1.6 * count, 5.2), squeeze=False)
  for j in range(count):
    image = zoom(found["images"][j])
    for row, (what, labels) in enumerate((("input", None), ("truth", found["labels"][j]),
                                          ("predicted", found["predictions"][j]))):
      ax = axes[row, j]
      ax.imshow(image if labels is None else overlay.blend(image, zoom(labels), colors, 0.6))
      ax.set_xticks([])
      ax.set_yticks([])
      if labels is not None:
        shown = [names[c] for c in np.unique(labels) if c != overlay.BACKGROUND]
        ax.set_title(", ".join(shown) or "-", fontsize=9)
      if j == 0:
        ax.set_ylabel(what)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def describe(found: dict[str, np.ndarray]) -> list[str]:
  """One line per scene: the true and predicted classes with their pixel counts."""
  names = found["class_names"]
  def counts(labels):
    values, sizes = np.unique(labels, return_counts=True)
    return ", ".join(f"{names[v]}:{s}" for v, s in zip(values, sizes) if v != 0) or "-"
  return [f"scene {j}: truth {counts(t)} | predicted {counts(p)}"
          for j, (t, p) in enumerate(zip(found["labels"], found["predictions"]))]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", required=True, help="a segmentation run dir")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--count", type=int, default=8, help="eval scenes to draw")
  args = parser.parse_args(argv)
  found = predict_eval_scenes(args.run, args.count)
  for line in describe(found):
    print(line)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig = draw(found, f"{os.path.basename(os.path.normpath(args.run))}: held-out scenes")
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
