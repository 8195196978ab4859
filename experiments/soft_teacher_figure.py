"""The teacher's pseudo-boxes on unlabelled scenes of a Soft Teacher run, beside the ground
truth the run never saw.

  python experiments/soft_teacher_figure.py --run runs/soft_teacher_demo \\
      --out experiments/figures/soft_teacher/pseudo_boxes.png

Takes ``--count`` scenes of the run's unlabelled share of the train split (its own
``labelled_percent`` and ``fold``), the teacher of its newest checkpoint
(``state.extra['teacher']``) and the task's own ``teacher_pseudo_labels`` on the weak view
without flip (the test resize). Top row: the hidden ground truth; bottom row: the pseudo
boxes that pass the initial 0.5 filter, labelled ``<class> <score>``. Prints each pseudo box
with its score, jitter uncertainty and which targets it feeds (RPN and classification:
score > 0.9; regression: uncertainty < 0.02).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from swin_jax.models.detection.pseudo_labels import CLS_PSEUDO_THRESHOLD, REG_PSEUDO_THRESHOLD

ZOOM = 4   # the 64 px scenes drawn 4x, so labels stay legible


def unlabelled_pseudo_labels(run: str, count: int, seed: int) -> dict[str, np.ndarray]:
  """``count`` unlabelled train scenes of ``run`` and the teacher's pseudo labels on them, in
  source pixels: ``images (N, H, W, 3)`` uint8, ``gt_boxes``, ``gt_labels``, ``gt_valid``,
  and ``boxes (N, D, 4)``, ``scores``, ``classes``, ``valid``, ``uncertainty``."""
  # pylint: disable=import-outside-toplevel
  import jax
  import ml_collections
  from swin_jax import tasks
  from swin_jax.data import sources
  from swin_jax.tasks.soft_teacher_losses import teacher_pseudo_labels
  from swin_jax.train import init_from

  config = ml_collections.ConfigDict(init_from.run_config(run))
  task = tasks.get_task(config)
  source = sources.open_source(config.dataset, config.dataset.train_split)
  _, unlabelled = task.split_positions(source)
  picks = np.sort(np.random.default_rng(seed).choice(unlabelled, count, replace=False))
  examples = [source[int(i)] for i in picks]
  transform = task.eval_transform()
  views = [transform(example) for example in examples]
  batch = {k: np.stack([v[k] for v in views]) for k in ("image", "image_hw", "scale_factor",
                                                         "gt_boxes", "gt_labels", "gt_valid")}
  model, extra = init_from.latest_run_extra(run)
  if "teacher" not in extra:
    raise ValueError(f"{run} is not a Soft Teacher run: its checkpoint has no teacher")
  cfg = config.task
  pseudo, _ = jax.jit(lambda teacher, images, hw, key: model.apply(
      {"params": teacher}, images, hw, key, initial_threshold=float(cfg.initial_score_threshold),
      jitter_times=int(cfg.jitter_times), jitter_scale=float(cfg.jitter_scale),
      method=teacher_pseudo_labels))(extra["teacher"], batch["image"], batch["image_hw"],
                                     jax.random.key(seed))
  pseudo = jax.tree.map(np.asarray, pseudo)
  # Canvas -> source pixels: x by the width scale, y by the height scale.
  h_scale, w_scale = batch["scale_factor"][:, 0], batch["scale_factor"][:, 1]
  per_coord = np.stack([w_scale, h_scale, w_scale, h_scale], -1)[:, None, :]
  reader = task._reader(train=False)  # pylint: disable=protected-access
  return dict(images=np.stack([reader(e)["image"] for e in examples]),
              gt_boxes=batch["gt_boxes"], gt_labels=batch["gt_labels"],
              gt_valid=batch["gt_valid"],
              boxes=pseudo["boxes"] / per_coord, scores=pseudo["scores"],
              classes=pseudo["classes"], valid=pseudo["valid"],
              uncertainty=pseudo["uncertainty"])


def draw(found: dict[str, np.ndarray], names, title: str):
  """A matplotlib figure: ground truth over pseudo boxes, one column per scene."""
  # pylint: disable=import-outside-toplevel
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image
  from swin_jax.visualize.detections import draw_detections

  n = len(found["images"])
  fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), squeeze=False)
  for i in range(n):
    h, w = found["images"][i].shape[:2]
    big = np.asarray(Image.fromarray(found["images"][i]).resize((w * ZOOM, h * ZOOM),
                                                                Image.NEAREST))
    gt = found["gt_valid"][i]
    kept = found["valid"][i]
    rows = [draw_detections(big, found["gt_boxes"][i][gt] * ZOOM, np.ones(gt.sum()),
                            found["gt_labels"][i][gt], names),
            draw_detections(big, found["boxes"][i][kept] * ZOOM, found["scores"][i][kept],
                            found["classes"][i][kept], names)]
    for row, shown in enumerate(rows):
      axes[row, i].imshow(shown)
      axes[row, i].set_xticks([])
      axes[row, i].set_yticks([])
  axes[0, 0].set_ylabel("hidden ground truth")
  axes[1, 0].set_ylabel("teacher pseudo-boxes\n(score > 0.5)")
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def describe(found: dict[str, np.ndarray], names, cls_threshold: float = CLS_PSEUDO_THRESHOLD,
             reg_threshold: float = REG_PSEUDO_THRESHOLD) -> str:
  """One line per pseudo box: scene, class, score, uncertainty and the targets it feeds."""
  lines = ["scene | class | score | uncertainty | targets"]
  for i in range(len(found["images"])):
    for d in np.flatnonzero(found["valid"][i]):
      score, unc = found["scores"][i, d], found["uncertainty"][i, d]
      targets = [t for t, ok in (("rpn+cls", score > cls_threshold),
                                 ("reg", unc < reg_threshold)) if ok]
      lines.append(f"{i} | {names[found['classes'][i, d]]} | {score:.3f} | {unc:.4f} | "
                   f"{'+'.join(targets) or '-'}")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--run", required=True, help="a Soft Teacher run directory")
  parser.add_argument("--out", default="experiments/figures/soft_teacher/pseudo_boxes.png")
  parser.add_argument("--count", type=int, default=4, help="unlabelled scenes to draw")
  parser.add_argument("--seed", type=int, default=0, help="which scenes, and the jitters")
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from swin_jax.predict import detection_class_names  # pylint: disable=import-outside-toplevel
  from swin_jax.train import init_from  # pylint: disable=import-outside-toplevel

  found = unlabelled_pseudo_labels(args.run, args.count, args.seed)
  run_config = init_from.run_config(args.run)
  names = detection_class_names(run_config, int(run_config["dataset"]["num_classes"]))
  task = run_config["task"]
  print(describe(found, names, task["cls_pseudo_threshold"], task["reg_pseudo_threshold"]))
  fig = draw(found, names, f"Soft Teacher: the teacher on unlabelled scenes ({args.run})")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
