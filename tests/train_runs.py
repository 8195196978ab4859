"""Helpers for tests that run the main job: as a real subprocess, or many times in-process.

Runs of one config compile the same XLA programs. A test module shares them through JAX's
persistent compilation cache (``compilation_cache_dir``): in-process with
``persistent_compilation_cache``, in subprocesses with ``compilation_cache_env``. A cache
hit is the executable that compiling the same program gives, so what a test checks (bit-exact
resumes included) is unchanged; only the compile time goes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train import config as config_lib
from swin_jax.train import init_from

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


def compilation_cache_dir(tmp_path_factory) -> str:
  """One cache folder for the whole pytest session, shared by the xdist workers (their
  temporary folders have a common parent; pytest-xdist's recipe for session-wide files)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / "jax_compilation_cache"
  path.mkdir(exist_ok=True)
  return str(path)


# Cache every program however fast it compiled: the many small ones (orbax's per-shape
# slices when it saves a checkpoint) add up to seconds per run.
_CACHE_SETTINGS = {"jax_persistent_cache_min_compile_time_secs": 0,
                   "jax_persistent_cache_min_entry_size_bytes": -1}


def compilation_cache_env(cache_dir: str) -> dict[str, str]:
  """Environment variables that make a subprocess read and fill the cache in ``cache_dir``."""
  return {"JAX_COMPILATION_CACHE_DIR": cache_dir,
          **{name.upper(): str(value) for name, value in _CACHE_SETTINGS.items()}}


@contextlib.contextmanager
def persistent_compilation_cache(cache_dir: str):
  """This process reads and fills the cache in ``cache_dir`` inside the block; JAX's cache
  settings are restored after it, so other test modules compile as before."""
  settings = {"jax_compilation_cache_dir": cache_dir, **_CACHE_SETTINGS}
  previous = {name: getattr(jax.config, name) for name in settings}
  # JAX opens the cache once per process, at the first compile after a reset.
  compilation_cache.reset_cache()
  for name, value in settings.items():
    jax.config.update(name, value)
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def start_predict(cwd, *args: str, env: dict | None = None) -> subprocess.Popen:
  """``python -m swin_jax.predict *args`` on one CPU device, started (not waited for)."""
  env = {**os.environ, "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
         **(env or {})}
  return subprocess.Popen([sys.executable, "-m", "swin_jax.predict", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
  """``(returncode, stdout, stderr)`` of a started process."""
  stdout, stderr = process.communicate(timeout=timeout)
  return process.returncode, stdout, stderr


def resume_from_checkpoint(workdir: str, step: int, resumed: str, config, cache_dir: str):
  """Trains ``config`` in ``resumed`` starting from ``workdir``'s step-``step`` checkpoint
  (copied there alone), with the persistent compilation cache; returns the loop's result."""
  import shutil  # pylint: disable=import-outside-toplevel
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel
  shutil.copytree(os.path.join(workdir, "checkpoints", str(step)),
                  os.path.join(resumed, "checkpoints", str(step)))
  with persistent_compilation_cache(cache_dir):
    return loop.train_and_evaluate(config, resumed)


def assert_same_state(state, other) -> None:
  """Every leaf of two train states equal, bit for bit."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(other)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def two_checkpointed_steps(config) -> None:
  """A tiny detector run's schedule: one device, batches of 2 (eval 8), 2 steps, each
  logged and checkpointed, one evaluation at the end."""
  config.mesh_shape = (1, 1)
  config.batch_size, config.eval_batch_size = 2, 8
  config.total_steps = 2
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1
  config.eval_every_steps = 0


def fake_segmentation_run(workdir, params, name: str, overrides: dict,
                          class_names: tuple[str, ...], model_state=None,
                          dataset: dict | None = None, task: dict | None = None) -> str:
  """A segmentation run dir as the training loop leaves it (config.json and
  checkpoints/3/state) holding ``params`` (and ``model_state``) of model ``name``;
  ``dataset`` and ``task`` update those sections of its config (default: 32 px digit scenes)."""
  config = config_lib.base_config("segmentation")
  config.model.name = name
  config.model.overrides.update(overrides)
  config.dataset.update({"name": "digit_scenes/32px", "num_classes": len(class_names),
                         "image_size": 32, **(dataset or {})})
  config.task.update({"class_names": class_names, **(task or {})})
  os.makedirs(workdir)
  with open(os.path.join(workdir, init_from.RUN_CONFIG_FILE), "w") as f:
    json.dump(json.loads(config.to_json_best_effort()), f, indent=2)
  state = {"params": params, "step": np.int32(3)}
  if model_state:
    state["model_state"] = model_state
  with checkpoint_lib.Checkpointer(workdir) as ckpt:
    ckpt.save(3, state, {"position": 0}, force=True)
    ckpt.wait()
  return str(workdir)
