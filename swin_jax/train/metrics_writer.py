"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard, and a progress line.

Only process 0 writes files; every process may print.
"""

from __future__ import annotations

import json
import os
import time

from absl import logging
from clu import metric_writers


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class MetricsWriter:
  """Writes scalars per step and prints ``step | loss | lr | img/s | ETA`` lines."""

  def __init__(self, workdir: str, total_steps: int, batch_size: int, is_main: bool):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.is_main = is_main
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
    self._tensorboard = metric_writers.create_default_writer(
        os.path.join(workdir, "tensorboard"), just_logging=not is_main, asynchronous=False)
    self._last_time: float | None = None
    self._last_step: int | None = None

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Appends ``{"step": step, **scalars}`` to metrics.jsonl and TensorBoard."""
    scalars = {k: float(v) for k, v in scalars.items()}
    if self._jsonl:
      self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self._jsonl.flush()
    if self.is_main:
      self._tensorboard.write_scalars(step, scalars)

  def progress(self, step: int, scalars: dict[str, float]) -> None:
    """Prints the progress line; throughput is measured since the previous call."""
    now = time.perf_counter()
    speed = ""
    eta = ""
    if self._last_time is not None and step > self._last_step:
      steps_per_s = (step - self._last_step) / (now - self._last_time)
      speed = f" | {steps_per_s * self.batch_size:8.1f} img/s"
      eta = f" | ETA {_duration((self.total_steps - step) / steps_per_s)}"
    self._last_time, self._last_step = now, step
    loss = scalars.get("train/loss", float("nan"))
    lr = scalars.get("train/lr", float("nan"))
    message = (f"step {step:>7d}/{self.total_steps} | loss {loss:.4f} | lr {lr:.3e}"
               f"{speed}{eta}")
    logging.info(message)
    print(message, flush=True)

  def reset_clock(self) -> None:
    """Forget the last timing (e.g. after an evaluation pause)."""
    self._last_time = None

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    self._tensorboard.flush()
    self._tensorboard.close()
