"""Train-step throughput on 1, 2, 4 and 8 simulated CPU devices, data- and FSDP-parallel.

  python experiments/scaling.py                       # Swin-T, global batch 16
  python experiments/scaling.py --model swin_b --batch 16 --devices 1,8 --modes fsdp

Every (devices, mode) runs in its own process, started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the flag must be set before JAX
starts). Each runs the trainer's own pieces: ``sharding.make_mesh`` with mesh ``(N, 1)``
("data": params replicated) or ``(1, N)`` ("fsdp": params and AdamW moments split by the
trainer's FSDP rule; the batch is split over both axes either way), ``state_shardings``,
``batch_sharding`` and the jitted, donated ``train_step`` on a fixed global batch.

Simulated devices share the host's cores, so this measures what partitioning costs
(collectives become memory copies, per-device programs get smaller), not a speed-up.
Per-device memory is the compiled program's ``memory_analysis()`` (XLA's buffer
assignment for one device: arguments + outputs + temporaries - aliased).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MARKER = "SCALING_RESULT "


def measure(model_name: str, devices: int, mode: str, batch: int, steps: int) -> dict:
  """One worker: compile and time the sharded train step. Needs ``devices`` JAX devices."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from swin_jax import tasks  # pylint: disable=import-outside-toplevel
  from swin_jax.models import registry  # pylint: disable=import-outside-toplevel
  from swin_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from swin_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from swin_jax.train import sharding  # pylint: disable=import-outside-toplevel
  from swin_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel

  assert jax.device_count() == devices, (jax.device_count(), devices)
  config = config_lib.base_config()
  config.batch_size = batch
  config.task.mixup.mixup_alpha = config.task.mixup.cutmix_alpha = 0.0
  model = registry.create_model(model_name, scan_blocks=True)
  config.dataset.num_classes = model.num_classes  # the classification task mixes labels
  mesh = sharding.make_mesh((devices, 1) if mode == "data" else (1, devices))
  tx, schedule = optimizer_lib.make_optimizer(config, total_steps=1000, steps_per_epoch=100)
  size = model.img_size

  def init_state(rng):
    params = model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32))["params"]
    return state_lib.create_train_state(params, tx, rng)

  rng = jax.random.PRNGKey(0)
  state_sharding = sharding.state_shardings(jax.eval_shape(init_state, rng), mesh,
                                            config.fsdp_min_weight_size)
  state = jax.jit(init_state, out_shardings=state_sharding)(rng)
  batch_sharding = sharding.batch_sharding(mesh)
  images = jax.device_put(jax.random.normal(rng, (batch, size, size, 3)), batch_sharding)
  labels = jax.device_put(jnp.arange(batch) % model.num_classes, batch_sharding)
  data = {"image": images, "label": labels}
  step_fn = loop.sharded_train_step(tasks.get_task(config), model, tx, schedule,
                                    state_sharding, mesh)
  start = time.perf_counter()
  compiled = step_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
                mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  times = []
  for i in range(steps + 1):  # the first call is a warm-up
    start = time.perf_counter()
    state, metrics = compiled(state, data)
    metrics["train/loss"].block_until_ready()
    if i:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return dict(model=model_name, devices=devices, mode=mode, batch=batch,
              img_per_s=batch / median, median_s=median, times_s=times, compile_s=compile_s,
              xla_mib_per_device=per_device / 2**20, loss=float(metrics["train/loss"]))


def run_worker(model: str, devices: int, mode: str, batch: int, steps: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, __file__, "--worker", "--model", model, "--devices", str(devices),
         "--modes", mode, "--batch", str(batch), "--steps", str(steps)]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith(MARKER):
      return json.loads(line[len(MARKER):])
  return dict(model=model, devices=devices, mode=mode, batch=batch,
              error=proc.stderr.strip()[-1500:])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="swin_t")
  p.add_argument("--batch", type=int, default=16, help="global batch (divisible by devices)")
  p.add_argument("--devices", default="1,2,4,8")
  p.add_argument("--modes", default="data,fsdp")
  p.add_argument("--steps", type=int, default=4, help="timed steps (median) after 1 warm-up")
  p.add_argument("--out", default="", help="also write the rows as JSON")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  devices = [int(d) for d in args.devices.split(",")]
  modes = args.modes.split(",")
  if args.worker:
    print(MARKER + json.dumps(measure(args.model, devices[0], modes[0], args.batch, args.steps)),
          flush=True)
    return
  rows = []
  print("| model | devices | mesh (data, fsdp) | global batch | img/s | vs 1 device | "
        "compile s | XLA MiB per device |")
  print("|---|---|---|---|---|---|---|---|")
  base = {}
  for mode in modes:
    for n in devices:
      print(f"[scaling] {args.model} {mode} x{n} ...", file=sys.stderr, flush=True)
      row = run_worker(args.model, n, mode, args.batch, args.steps)
      rows.append(row)
      mesh = f"({n}, 1)" if mode == "data" else f"(1, {n})"
      if "error" in row:
        print(f"| {args.model} | {n} | {mesh} | {args.batch} | error: {row['error'][-200:]} |")
        continue
      base.setdefault(row["model"], row["img_per_s"]) if n == 1 else None
      rel = row["img_per_s"] / base[row["model"]] if row["model"] in base else float("nan")
      print(f"| {args.model} | {n} | {mesh} {mode} | {args.batch} | {row['img_per_s']:.2f} | "
            f"{rel:.2f} | {row['compile_s']:.1f} | {row['xla_mib_per_device']:.0f} |",
            flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
