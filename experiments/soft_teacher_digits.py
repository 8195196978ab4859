"""Soft Teacher against the supervised detector on the embedded digit scenes, measured.

  python experiments/soft_teacher_digits.py            # ~85 minutes on 2 CPU cores
  python experiments/soft_teacher_digits.py --fractions 10 --seeds 1 --burnin_steps 20 \\
      --steps 10                                       # a smoke run

The detector and scenes of ``configs/soft_teacher/demo.py`` (a small Swin Faster R-CNN,
64 px digit scenes at 2x on a 128 canvas, 2,000 train and 200 held-out test scenes).
For each label fraction (5 %, 10 % of the train scenes, drawn as the official
``semi_coco.py`` with fold = seed) and seed:

1. **Burn-in**: the supervised detector on the labelled scenes alone (the task with
   ``unsup_weight=0``), ``--burnin_steps`` steps. Shared by the four arms.
2. **Four arms**, each ``--steps`` more steps from the burn-in (``init_from`` with
   ``init_from_scope='model'``: every param, the teacher starting as the burned-in
   detector, a fresh AdamW), on the same labelled stream:
   ``supervised`` (``unsup_weight=0``), ``soft_teacher`` (the full method),
   ``no_soft_weights`` (background RoIs weigh 1) and ``no_jitter`` (regression on the
   score > 0.9 boxes).
3. Box AP of the student on the 200 held-out scenes: mean, sample std and every seed.

The burn-in departs from the official recipe, which trains end to end from an ImageNet
backbone: a from-scratch Swin detects nothing above the 0.5 initial threshold for the
first few hundred steps, and the teacher's ``1 - 1/(t+1)`` momentum would average those
useless early students into it for the whole short run. Starting every arm from one
supervised detector plays the part of the pretrained backbone, and makes the arms
differ only in what they add. "Same compute" is the same number of steps with the same
labelled images per step; the Soft Teacher arms also see 2 unlabelled scenes per
labelled one.

Writes ``<out>.json`` (every run) and ``<out>_table.md`` (the table of
``experiments/soft_teacher_digits.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.simmim_low_label import load_config  # noqa: E402  pylint: disable=wrong-import-position

# arm -> task overrides on top of the demo config.
ARMS = {
    "supervised": dict(unsup_weight=0.0),
    "soft_teacher": dict(),
    "no_soft_weights": dict(soft_weights=False),
    "no_jitter": dict(box_jitter=False),
}


def arm_config(fraction: float, seed: int, steps: int, data_dir: str, overrides: dict,
               init_from: str = ""):
  """The demo config for one run: ``fraction`` % labelled (fold ``seed``), ``steps`` steps
  with the LR x0.1 at 85 %, one checkpoint at the end, ``overrides`` on the task."""
  config = load_config("configs/soft_teacher/demo.py")
  config.dataset.data_dir = data_dir
  config.seed = seed
  config.task.labelled_percent = float(fraction)
  config.task.fold = seed
  config.task.burn_in_steps = 0   # the burn-in is the shared run that the arms start from
  config.task.update(overrides)
  config.total_steps = steps
  config.optimizer.warmup_steps = min(50, steps // 5)
  config.optimizer.step_steps = (int(0.85 * steps),)
  config.log_every_steps = max(1, steps // 8)
  config.checkpoint_every_steps = steps
  config.eval_every_steps = 0
  if init_from:
    config.init_from = init_from
    config.init_from_scope = "model"
  return config


def train(config, workdir: str) -> dict:
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel
  shutil.rmtree(workdir, ignore_errors=True)
  started = time.time()
  metrics = loop.train_and_evaluate(config, workdir).metrics
  return {"box_ap": float(metrics["eval/box_ap"]), "box_ap50": float(metrics["eval/box_ap50"]),
          "minutes": (time.time() - started) / 60}


def cell(values: list[float]) -> str:
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return (f"{statistics.mean(values):.3f} ± {spread:.3f} "
          f"({', '.join(f'{v:.3f}' for v in values)})")


def summarise(runs: list[dict], fractions, seeds) -> str:
  arms = ["burn-in"] + list(ARMS)
  lines = ["| labels | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
  for fraction in fractions:
    cells = [cell([r["box_ap"] for r in runs if r["fraction"] == fraction and r["arm"] == arm])
             for arm in arms]
    lines.append(f"| {fraction:g} % | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"COCO box AP of the student on the 200 held-out scenes: mean ± sample std "
               f"over seeds (= folds) {list(seeds)}, each seed's value in brackets.")
  gains = ["", "| labels | " + " | ".join(f"{a} - supervised" for a in list(ARMS)[1:]) + " |",
           "|---" * len(ARMS) + "|"]
  for fraction in fractions:
    by_seed = {(r["arm"], r["seed"]): r["box_ap"] for r in runs if r["fraction"] == fraction}
    cells = [cell([by_seed[(arm, s)] - by_seed[("supervised", s)] for s in seeds])
             for arm in list(ARMS)[1:]]
    gains.append(f"| {fraction:g} % | " + " | ".join(cells) + " |")
  gains.append("")
  gains.append("Paired gains in box AP over the supervised arm (same seed, same burn-in).")
  return "\n".join(lines + gains)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/soft_teacher_digits")
  parser.add_argument("--data_dir", default="", help="TFDS dir ('' = the TFDS default)")
  parser.add_argument("--fractions", default="5,10", help="percent of the train scenes labelled")
  parser.add_argument("--seeds", default="1,2", help="seeds, also the split folds")
  parser.add_argument("--burnin_steps", type=int, default=500)
  parser.add_argument("--steps", type=int, default=100, help="steps of each arm")
  parser.add_argument("--arms", default=",".join(ARMS))
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "soft_teacher_digits"))
  args = parser.parse_args(argv)
  fractions = [float(f) for f in args.fractions.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]
  arms = args.arms.split(",")
  unknown = set(arms) - set(ARMS)
  if unknown:
    parser.error(f"unknown arms {sorted(unknown)}; choose from {list(ARMS)}")

  import jax  # pylint: disable=import-outside-toplevel
  # Every run of an arm is the same program: compile each once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

  runs = []
  started = time.time()
  for fraction in fractions:
    for seed in seeds:
      name = f"{fraction:g}pct_seed{seed}"
      burnin_dir = os.path.abspath(os.path.join(args.workdir, f"{name}_burnin"))
      print(f"[{(time.time() - started) / 60:.0f} min] burn-in {name}", flush=True)
      result = train(arm_config(fraction, seed, args.burnin_steps, args.data_dir,
                                ARMS["supervised"]), burnin_dir)
      runs.append(dict(fraction=fraction, seed=seed, arm="burn-in", **result))
      print(f"  box AP {result['box_ap']:.3f}", flush=True)
      for arm in arms:
        print(f"[{(time.time() - started) / 60:.0f} min] {arm} {name}", flush=True)
        config = arm_config(fraction, seed, args.steps, args.data_dir, ARMS[arm], burnin_dir)
        result = train(config, os.path.join(args.workdir, f"{name}_{arm}"))
        runs.append(dict(fraction=fraction, seed=seed, arm=arm, **result))
        print(f"  box AP {result['box_ap']:.3f}", flush=True)

  table = summarise(runs, fractions, seeds) if arms == list(ARMS) else ""
  print(table)
  with open(args.out + ".json", "w", encoding="utf-8") as f:
    json.dump(dict(burnin_steps=args.burnin_steps, steps=args.steps, seeds=seeds,
                   fractions=fractions, minutes=(time.time() - started) / 60, runs=runs),
              f, indent=1)
  if table:
    with open(args.out + "_table.md", "w", encoding="utf-8") as f:
      f.write(table + "\n")
  print(f"wrote {args.out}.json in {(time.time() - started) / 60:.0f} min", flush=True)


if __name__ == "__main__":
  main()
