"""A killed or preempted run resumes exactly: real subprocesses of the main job, real signals.
A Swin-Unet segmentation run resumes exactly too (in-process).

A watcher reads the run's progress lines and sends the signal once the run has logged a
given step (and, for SIGKILL, committed a checkpoint), the way a scheduler would: the
production loop has no fault-injection hook. Where the signal lands is up to timing, so the
tests check what must hold wherever it lands: the resumed run's losses equal the
uninterrupted run's at every step.

All launches after the first load their compiled programs from a shared persistent
compilation cache (``train_runs.compilation_cache_env``); the tests of the main job share
one uninterrupted reference run, so one worker runs them (``REFERENCE_GROUP``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from swin_jax.data import demo_dataset
from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train import loop
from train_runs import (REPO, TINY_CONFIG, assert_same_state, check, compilation_cache_dir,
                        compilation_cache_env, metric_lines, persistent_compilation_cache,
                        resume_from_checkpoint, run_main, train_losses)

# Long enough that a signal sent from step 6 on lands mid-run: SIGTERM stops the run at its
# next step, and a committed checkpoint exists by step 2 * EVERY + 1 at the latest (each save
# waits for the previous one to be committed), so SIGKILL lands before the end too. Saves
# are few (each costs about a second on 2 loaded cores) but resumes still cross one.
TOTAL = 32
EVERY = 8
RUN_FLAGS = (f"--config.total_steps={TOTAL}", f"--config.checkpoint_every_steps={EVERY}")
UNET_CONFIG = os.path.join(REPO, "tests", "configs", "tiny_unet.py")
_STEP_LINE = re.compile(r"^step\s+(\d+)/")
REFERENCE_GROUP = pytest.mark.xdist_group("train_resume_reference")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  demo_dataset.ensure_demo_dataset(path)
  return path


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
  """The environment of every launch: the shared compilation cache."""
  return compilation_cache_env(compilation_cache_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir, cache_env):
  """The uninterrupted run: ``{step: loss}`` for steps 1..TOTAL, and its workdir."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  check(run_main(workdir, data_dir, *RUN_FLAGS, env=cache_env))
  losses = train_losses(workdir)
  assert [step for step, _ in losses] == list(range(1, TOTAL + 1))
  return dict(losses), workdir


def _main_command(workdir: str, data_dir: str, *flags: str) -> list[str]:
  return [sys.executable, "-m", "swin_jax.main", f"--config={TINY_CONFIG}",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}", *RUN_FLAGS, *flags]


def _committed_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit() and
                checkpoint_lib.is_committed(os.path.join(directory, name)))


def signal_when(processes: list[subprocess.Popen], watched: int, target: int, signum: int,
                at_step: int, workdir: str, need_checkpoint: bool) -> list[str]:
  """Reads ``processes[watched]``'s stdout; once it logs step >= ``at_step`` (and, with
  ``need_checkpoint``, a committed checkpoint exists) sends ``signum`` to
  ``processes[target]``. Returns every process's stdout."""
  outputs = [[] for _ in processes]
  sent = False
  for line in processes[watched].stdout:
    outputs[watched].append(line)
    match = _STEP_LINE.match(line)
    if (not sent and match and int(match.group(1)) >= at_step and
        (not need_checkpoint or _committed_steps(workdir))):
      processes[target].send_signal(signum)
      sent = True
  assert sent, "the run ended before the watcher signalled it:\n" + "".join(outputs[watched])
  for i, process in enumerate(processes):
    rest, _ = process.communicate(timeout=600)
    outputs[i].append(rest)
  return ["".join(lines) for lines in outputs]


def _popen(command: list[str], env: dict | None = None) -> subprocess.Popen:
  return subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          bufsize=1)


def assert_same_as_reference(workdir, reference_losses, rel=0.0):
  logged = train_losses(workdir)
  assert {step for step, _ in logged} == set(reference_losses)
  for step, loss in logged:
    assert loss == pytest.approx(reference_losses[step], rel=rel, abs=rel and 1e-6), step


@REFERENCE_GROUP
def test_sigkill_after_a_checkpoint_resumes_bit_for_bit(tmp_path, data_dir, reference,
                                                        cache_env):
  """Killed once it has committed a checkpoint (step >= 6), then the same command rerun."""
  workdir = str(tmp_path / "run")
  process = _popen(_main_command(workdir, data_dir), cache_env)
  signal_when([process], 0, 0, signal.SIGKILL, at_step=6, workdir=workdir,
              need_checkpoint=True)
  assert process.returncode == -signal.SIGKILL
  saved = checkpoint_lib.Checkpointer(workdir).latest_step()
  assert saved is not None and EVERY <= saved < TOTAL and saved % EVERY == 0
  resumed = check(run_main(workdir, data_dir, *RUN_FLAGS, env=cache_env))
  assert f"resuming from checkpoint at step {saved}" in resumed.stdout
  steps = [s for s, _ in train_losses(workdir)]
  assert steps[-(TOTAL - saved):] == list(range(saved + 1, TOTAL + 1))
  assert_same_as_reference(workdir, reference[0])


@REFERENCE_GROUP
def test_sigterm_saves_the_current_step_exits_0_and_resumes_exactly(tmp_path, data_dir,
                                                                    reference, cache_env):
  workdir = str(tmp_path / "run")
  process = _popen(_main_command(workdir, data_dir), cache_env)
  (stdout,) = signal_when([process], 0, 0, signal.SIGTERM, at_step=6, workdir=workdir,
                          need_checkpoint=False)
  assert process.returncode == 0, stdout[-3000:]
  saved = int(re.search(r"preempted: saved step (\d+)", stdout).group(1))
  assert 6 <= saved < TOTAL
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == saved
  resumed = check(run_main(workdir, data_dir, *RUN_FLAGS, env=cache_env))
  assert f"resuming from checkpoint at step {saved}" in resumed.stdout
  assert [s for s, _ in train_losses(workdir)] == list(range(1, TOTAL + 1))
  assert_same_as_reference(workdir, reference[0])


@REFERENCE_GROUP
def test_half_written_checkpoint_is_ignored_for_the_last_complete_one(tmp_path, data_dir,
                                                                      reference, cache_env):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[1], workdir)
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  last = os.path.join(workdir, "checkpoints", str(TOTAL))
  os.remove(os.path.join(last, checkpoint_lib.COMMIT_FILE))  # as if killed mid-write
  resumed = check(run_main(workdir, data_dir, *RUN_FLAGS, env=cache_env))
  previous = TOTAL - EVERY
  assert f"resuming from checkpoint at step {previous}" in resumed.stdout
  assert [s for s, _ in train_losses(workdir)] == list(range(previous + 1, TOTAL + 1))
  assert_same_as_reference(workdir, {s: reference[0][s] for s in range(previous + 1, TOTAL + 1)})


def _free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_hosts(workdir: str, data_dir: str, cache_env: dict) -> list[subprocess.Popen]:
  """The main job as 2 processes x 4 CPU devices (jax.distributed + gloo on localhost)."""
  port = _free_port()
  env = {**cache_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  # Periodic multi-host saves are slow on a loaded CPU machine; the preemption save and
  # the final one are all this test needs (the later flag overrides RUN_FLAGS' interval).
  return [_popen(_main_command(workdir, data_dir, "--config.checkpoint_every_steps=1000",
                               "--distributed",
                               f"--coordinator_address=127.0.0.1:{port}",
                               "--num_processes=2", f"--process_id={i}"), env)
          for i in range(2)]


@REFERENCE_GROUP
def test_two_hosts_agree_on_the_preemption_step_and_resume_like_one_host(tmp_path, data_dir,
                                                                         reference, cache_env):
  """SIGTERM reaches only host 1; JAX's preemption service makes both hosts save the same
  step and exit 0. Resumed on 2 hosts, the losses equal the 1 x 8-device run's."""
  workdir = str(tmp_path / "run")
  hosts = _two_hosts(workdir, data_dir, cache_env)
  outputs = signal_when(hosts, watched=0, target=1, signum=signal.SIGTERM, at_step=6,
                        workdir=workdir, need_checkpoint=False)
  for host, output in zip(hosts, outputs):
    assert host.returncode == 0, output[-3000:]
  assert "on mesh {'data': 8, 'fsdp': 1}" in outputs[0]
  saved = {int(re.search(r"preempted: saved step (\d+)", out).group(1)) for out in outputs}
  assert len(saved) == 1, saved
  (step,) = saved
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == step < TOTAL

  hosts = _two_hosts(workdir, data_dir, cache_env)
  for host in hosts:
    stdout, _ = host.communicate(timeout=600)
    assert host.returncode == 0, stdout[-3000:]
    assert f"resuming from checkpoint at step {step}" in stdout
  assert_same_as_reference(workdir, reference[0], rel=1e-5)


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_a_swin_unet_run_resumed_mid_epoch_ends_bit_for_bit(tmp_path, tmp_path_factory):
  """Segmentation through the same loop, in-process (the SIGKILL and SIGTERM tests above
  cover the kill and the rerun of the main job): Swin-Unet on 64 digit scenes (8 batches
  per epoch, built on first use) with the host-side random rotations and drop path, 12
  steps straight, and resumed from its step-4 checkpoint: mid-epoch, then across the
  epoch boundary (a reshuffle). Losses, final state and end-of-run evaluation all equal."""
  config = _load_config(UNET_CONFIG)
  config.dataset.data_dir = str(tmp_path / "tfds")
  every, total = config.checkpoint_every_steps, config.total_steps
  assert (every, total) == (4, 12)
  cache_dir = compilation_cache_dir(tmp_path_factory)
  straight = str(tmp_path / "straight")
  with persistent_compilation_cache(cache_dir):
    result = loop.train_and_evaluate(config, straight)
  assert [s for s, _ in train_losses(straight)] == list(range(1, total + 1))
  resumed_dir = str(tmp_path / "resumed")
  resumed = resume_from_checkpoint(straight, every, resumed_dir, config, cache_dir)
  assert train_losses(resumed_dir) == train_losses(straight)[every:]
  assert_same_state(resumed.state, result.state)
  assert _final_eval(resumed_dir) == _final_eval(straight)


def _final_eval(workdir: str) -> dict:
  """The metrics of the run's last evaluation (at the end of the run)."""
  return [m for m in metric_lines(workdir) if "eval/loss" in m][-1]
