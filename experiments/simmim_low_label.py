"""Does SimMIM pretraining help with few labels? The embedded MNIST digits, measured.

  python experiments/simmim_low_label.py                  # ~20 minutes on 2 CPU cores
  python experiments/simmim_low_label.py --seeds 0 --fractions 1 --steps 50   # a smoke run
  python experiments/simmim_low_label.py --simmim_layer_decay 1.0 --reuse_pretrain \
      --out experiments/simmim_low_label_no_layer_decay    # both arms with one optimizer

1. Pretrain ``configs/simmim/demo.py`` (the demo classifier's Swin with a mask token and
   the SimMIM decoder) on all 4,000 training digits, labels unused.
2. For each label fraction (1 %, 5 %, 10 % of the training split: its first 40, 200, 400
   digits) and seed, train ``configs/demo.py``'s classifier for the same number of steps
   twice: from scratch, and from the SimMIM run (``init_from``: the encoder without its mask
   token, the head at init) with the official fine-tune's layer-wise lr decay
   (``--simmim_layer_decay``, 0.9 as the 100-epoch recipe; 1.0: the scratch arm's optimizer).
3. Report top-1 on the 1,000 held-out test digits: the mean, the spread (sample standard
   deviation) and every seed, and the gain of the SimMIM start.

The seed changes the model init, the order of the labelled examples and every
augmentation draw; the labelled subset is the same for every seed. Writes
``<out>.json`` (every run) and ``<out>_table.md`` (the table of
``experiments/simmim_low_label.md``); copies the pretraining run's reconstruction figure
to ``experiments/figures/simmim/``.
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


def load_config(relative: str):
  # pylint: disable=import-outside-toplevel
  import importlib.util
  path = os.path.join(REPO, relative)
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def pretrain(workdir: str, data_dir: str, epochs: float | None):
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = load_config("configs/simmim/demo.py")
  config.dataset.data_dir = data_dir
  if epochs is not None:
    config.num_epochs = epochs
  result = loop.train_and_evaluate(config, workdir)
  return result.metrics


def finetune(workdir: str, data_dir: str, fraction: int, seed: int, steps: int,
             init_from: str, layer_decay: float = 1.0) -> dict:
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = load_config("configs/demo.py")
  config.dataset.data_dir = data_dir
  config.dataset.train_split = f"train[:{fraction}%]"
  config.seed = seed
  config.init_from = init_from
  config.optimizer.layer_decay = layer_decay
  config.batch_size = 32
  config.optimizer.reference_batch_size = 32   # the demo's lr per image, at batch 32
  config.total_steps = steps
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.warmup_steps = steps // 10
  config.log_every_steps = steps
  config.checkpoint_every_steps = steps
  config.eval_every_steps = 0
  result = loop.train_and_evaluate(config, workdir)
  return {"top1": result.metrics["eval/top1"], "loss": result.metrics["eval/loss"]}


def summarise(runs: list[dict], fractions, seeds) -> str:
  lines = ["| labels | from scratch | from SimMIM | gain (points) |",
           "|---|---|---|---|"]
  for fraction in fractions:
    cells = []
    means = {}
    for start in ("scratch", "simmim"):
      values = [100 * r["top1"] for r in runs
                if r["fraction"] == fraction and r["start"] == start]
      means[start] = statistics.mean(values)
      spread = statistics.stdev(values) if len(values) > 1 else 0.0
      cells.append(f"{means[start]:.1f} ± {spread:.1f} "
                   f"({', '.join(f'{v:.1f}' for v in values)})")
    lines.append(f"| {fraction} % | {cells[0]} | {cells[1]} | "
                 f"{means['simmim'] - means['scratch']:+.1f} |")
  lines.append("")
  lines.append(f"top-1 (%) on the 1,000 test digits: mean ± sample std over seeds "
               f"{list(seeds)} (each seed's value in brackets).")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/simmim_low_label")
  parser.add_argument("--data_dir", default="", help="TFDS dir ('' = the TFDS default)")
  parser.add_argument("--fractions", default="1,5,10", help="percent of the train labels")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=300, help="fine-tune steps (batch 32)")
  parser.add_argument("--pretrain_epochs", type=float, default=None,
                      help="default: the demo config's")
  parser.add_argument("--simmim_layer_decay", type=float, default=0.9,
                      help="layer decay of the fine-tunes from SimMIM (scratch: 1.0)")
  parser.add_argument("--reuse_pretrain", action="store_true",
                      help="use the SimMIM run already in <workdir>/simmim")
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "simmim_low_label"))
  args = parser.parse_args(argv)
  fractions = [int(f) for f in args.fractions.split(",")]
  seeds = [int(s) for s in args.seeds.split(",")]

  import jax  # pylint: disable=import-outside-toplevel
  # The many fine-tunes share two programs (init and step of one classifier): compile once.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  from swin_jax.data import demo_dataset  # pylint: disable=import-outside-toplevel
  data_dir = args.data_dir or os.environ.get("TFDS_DATA_DIR", "")
  if data_dir:
    demo_dataset.ensure_demo_dataset(data_dir)

  simmim_dir = os.path.abspath(os.path.join(args.workdir, "simmim"))
  started = time.time()
  if args.reuse_pretrain:
    from swin_jax.train import init_from  # pylint: disable=import-outside-toplevel
    pretrain_metrics = {}
    print(f"reusing the SimMIM run {simmim_dir} "
          f"({init_from.run_config(simmim_dir)['model']['name']})", flush=True)
  else:
    print(f"pretraining SimMIM in {simmim_dir}", flush=True)
    pretrain_metrics = pretrain(simmim_dir, data_dir, args.pretrain_epochs)
  pretrain_minutes = (time.time() - started) / 60
  runs = []
  for fraction in fractions:
    for seed in seeds:
      for start, init, decay in (("scratch", "", 1.0),
                                 ("simmim", simmim_dir, args.simmim_layer_decay)):
        workdir = os.path.join(args.workdir, f"{fraction}pct_seed{seed}_{start}")
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"fine-tuning {fraction}% seed {seed} from {start}", flush=True)
        metrics = finetune(workdir, data_dir, fraction, seed, args.steps, init, decay)
        runs.append(dict(fraction=fraction, seed=seed, start=start, **metrics))
        print(f"  top1 {metrics['top1']:.4f}", flush=True)

  table = summarise(runs, fractions, seeds)
  print(table)
  figure_dir = os.path.join(REPO, "experiments", "figures", "simmim")
  os.makedirs(figure_dir, exist_ok=True)
  figures = sorted(os.listdir(os.path.join(simmim_dir, "reconstructions")))
  figure = os.path.join(figure_dir, "demo_reconstructions.png")
  shutil.copy(os.path.join(simmim_dir, "reconstructions", figures[-1]), figure)
  record = dict(command=" ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                pretrain_eval=pretrain_metrics, pretrain_minutes=pretrain_minutes,
                finetune_steps=args.steps, finetune_batch=32,
                simmim_layer_decay=args.simmim_layer_decay, runs=runs,
                total_minutes=(time.time() - started) / 60, figure=os.path.relpath(figure, REPO))
  with open(args.out + ".json", "w") as f:
    json.dump(record, f, indent=1)
  with open(args.out + "_table.md", "w") as f:
    f.write(table + "\n")
  print(f"wrote {args.out}.json, {args.out}_table.md and {figure}")


if __name__ == "__main__":
  main()
