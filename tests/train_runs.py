"""Helpers for tests that run the main job as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "tests", "configs", "tiny_demo.py")


def run_main(workdir: str, data_dir: str, *flags: str, env: dict | None = None,
             config: str = TINY_CONFIG, timeout: int = 300) -> subprocess.CompletedProcess:
  """``python -m swin_jax.main --config=... --workdir=...`` from the repository root."""
  command = [sys.executable, "-m", "swin_jax.main", f"--config={config}",
             f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}", *flags]
  return subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})},
                        capture_output=True, text=True, timeout=timeout)


def metric_lines(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def train_losses(workdir: str) -> list[tuple[int, float]]:
  """Every logged ``(step, train/loss)`` in file order (a resumed run repeats steps)."""
  return [(m["step"], m["train/loss"]) for m in metric_lines(workdir) if "train/loss" in m]


def check(process: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
  return process
