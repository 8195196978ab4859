"""A killed or preempted run resumes exactly: real subprocesses of the main job."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from swin_jax.data import demo_dataset
from swin_jax.train import checkpoint as checkpoint_lib
from swin_jax.train.loop import SELF_SIGNAL_ENV
from train_runs import check, run_main, train_losses


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  demo_dataset.ensure_demo_dataset(path)
  return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """The uninterrupted run: ``{step: loss}`` for steps 1..12."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  check(run_main(workdir, data_dir))
  losses = train_losses(workdir)
  assert [step for step, _ in losses] == list(range(1, 13))
  return dict(losses), workdir


def assert_same_as_reference(workdir, reference_losses):
  logged = train_losses(workdir)
  assert {step for step, _ in logged} == set(reference_losses)
  for step, loss in logged:
    assert loss == reference_losses[step], (step, loss, reference_losses[step])


def test_sigkill_after_a_checkpoint_resumes_bit_for_bit(tmp_path, data_dir, reference):
  workdir = str(tmp_path / "run")
  killed = run_main(workdir, data_dir, env={SELF_SIGNAL_ENV: "6:SIGKILL"})
  assert killed.returncode == -signal.SIGKILL
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 4
  resumed = check(run_main(workdir, data_dir))
  assert "resuming from checkpoint at step 4" in resumed.stdout
  # Steps 5 and 6 were logged twice: before the kill and again after the resume.
  assert [s for s, _ in train_losses(workdir)] == [*range(1, 7), *range(5, 13)]
  assert_same_as_reference(workdir, reference[0])


def test_sigterm_saves_the_current_step_exits_0_and_resumes_exactly(tmp_path, data_dir,
                                                                    reference):
  workdir = str(tmp_path / "run")
  preempted = check(run_main(workdir, data_dir, env={SELF_SIGNAL_ENV: "6:SIGTERM"}))
  assert "preempted: saved step 6" in preempted.stdout
  assert checkpoint_lib.Checkpointer(workdir).latest_step() == 6
  resumed = check(run_main(workdir, data_dir))
  assert "resuming from checkpoint at step 6" in resumed.stdout
  assert [s for s, _ in train_losses(workdir)] == list(range(1, 13))
  assert_same_as_reference(workdir, reference[0])


def test_half_written_checkpoint_is_ignored_for_the_last_complete_one(tmp_path, data_dir,
                                                                      reference):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[1], workdir)
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  step_12 = os.path.join(workdir, "checkpoints", "12")
  os.remove(os.path.join(step_12, checkpoint_lib.COMMIT_FILE))  # as if killed mid-write
  resumed = check(run_main(workdir, data_dir))
  assert "resuming from checkpoint at step 8" in resumed.stdout
  assert [s for s, _ in train_losses(workdir)] == [9, 10, 11, 12]
  assert_same_as_reference(workdir, {s: reference[0][s] for s in range(9, 13)})


def _free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_of_four_devices_match_one_process_of_eight(tmp_path, data_dir,
                                                                   reference):
  """Multi-host on localhost: jax.distributed + gloo CPU collectives, 2 x 4 devices."""
  import subprocess  # pylint: disable=import-outside-toplevel
  from train_runs import REPO, TINY_CONFIG  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  processes = [
      subprocess.Popen(
          [sys.executable, "-m", "swin_jax.main", f"--config={TINY_CONFIG}",
           f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}", "--distributed",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"],
          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)
  ]
  outputs = [p.communicate(timeout=400) for p in processes]
  for process, (stdout, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]
  assert "on mesh {'data': 8, 'fsdp': 1}" in outputs[0][0]
  logged = dict(train_losses(workdir))
  assert sorted(logged) == list(range(1, 13))
  for step, loss in logged.items():
    assert loss == pytest.approx(reference[0][step], rel=1e-5, abs=1e-6), step
