"""User errors in every command: one message, a log with the traceback, no stray workdir.

The commands run as real subprocesses, each on a bad input that fails early (before any
compile), three at a time; each gets its own ``TMPDIR`` so its log file is easy to find.
``report_errors`` itself (bugs, Ctrl-C, workdir rules, long messages) is tested in-process.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from swin_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_LINE = re.compile(r"\(traceback in (\S+); --debug or SWIN_JAX_DEBUG=1 prints it\)")

pytestmark = pytest.mark.xdist_group("cli_errors")


def _run(tmp, name: str, module: str, *args: str, debug: bool = False):
  temp = tmp / name / "temp"
  temp.mkdir(parents=True)
  env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(temp))
  if debug:
    env[cli.DEBUG_ENV] = "1"
  process = subprocess.run([sys.executable, "-m", f"swin_jax.{module}", *args], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)
  return dict(code=process.returncode, out=process.stdout + process.stderr, temp=temp)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
  """Every command once, on its bad input."""
  from swin_jax.convert.torch_checkpoint import export_torch_state_dict, init_params  # noqa
  from swin_jax.models import registry  # pylint: disable=import-outside-toplevel
  tmp = tmp_path_factory.mktemp("cli_errors")
  # A tiny Swin's weights: the wrong variant for swin_s.
  tiny = registry.create_model("swin_t", img_size=32, embed_dim=8, depths=(2, 2),
                               num_heads=(1, 1), window_size=4, num_classes=10)
  np.savez(tmp / "tiny.npz", **export_torch_state_dict(init_params(tiny), tiny))
  (tmp / "kept").mkdir()
  (tmp / "kept" / "notes.txt").write_text("mine")
  (tmp / "empty_data").mkdir()
  (tmp / "typo_config.py").write_text(
      "from configs import demo\n\n\ndef get_config():\n  config = demo.get_config()\n"
      "  config.batch_sise = 32\n  return config\n")
  jobs = {
      "main_no_dataset": ("main", "--config=configs/swin_t_1k.py", f"--workdir={tmp}/new_wd",
                          f"--config.dataset.data_dir={tmp}/empty_data"),
      "main_typo_in_file": ("main", f"--config={tmp}/typo_config.py", f"--workdir={tmp}/kept"),
      "main_typo_override": ("main", "--config=configs/swin_t_1k.py",
                             f"--workdir={tmp}/typo_wd", "--config.optimizer.schedul=cosine"),
      "main_debug": ("main", "--config=configs/swin_t_1k.py", f"--workdir={tmp}/debug_wd",
                     "--config.optimizer.schedul=cosine"),
      "convert": ("convert", "--checkpoint", str(tmp / "tiny.npz"), "--model", "swin_s",
                  "--out", str(tmp / "converted")),
      "predict": ("predict", "--model", "swin_t", "--image", str(tmp / "no_such.jpg")),
      "predict_debug_flag": ("predict", "--model", "swin_t", "--image",
                             str(tmp / "no_such.jpg"), "--debug"),
      "visualize": ("visualize", "--checkpoint", str(tmp / "no_such.pth"), "--out",
                    str(tmp / "figures")),
      "bench": ("bench", "--model", "swin_nonexistent", "--macs_only"),
  }
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = {name: pool.submit(_run, tmp, name, *args, debug=name == "main_debug")
               for name, args in jobs.items()}
    results = {name: future.result() for name, future in futures.items()}
  return dict(results=results, tmp=tmp)


def _one_message(result, message: str, code: int = 1) -> str:
  """Checks the exit code, the message and the absence of a traceback; returns the log."""
  out = result["out"]
  assert result["code"] == code, out[-3000:]
  assert f"error: {message}" in out, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  (log,) = LOG_LINE.findall(out)
  with open(log) as f:
    text = f.read()
  assert "Traceback (most recent call last)" in text
  return log


def test_main_missing_dataset_removes_the_workdir_it_created(runs):
  result = runs["results"]["main_no_dataset"]
  log = _one_message(result, f"dataset imagenet2012 not found under {runs['tmp']}/empty_data")
  assert os.path.dirname(log) == str(result["temp"])
  assert "DatasetNotFoundError" in open(log).read()
  assert not os.path.exists(runs["tmp"] / "new_wd")


def test_main_config_typo_keeps_the_existing_workdir_and_logs_into_it(runs):
  log = _one_message(runs["results"]["main_typo_in_file"], "invalid config:")
  assert "unknown config field 'batch_sise'" in runs["results"]["main_typo_in_file"]["out"]
  assert log == str(runs["tmp"] / "kept" / cli.ERROR_LOG)
  assert (runs["tmp"] / "kept" / "notes.txt").read_text() == "mine"


def test_main_unknown_override_is_one_command_line_error(runs):
  result = runs["results"]["main_typo_override"]
  log = _one_message(result, "--config.optimizer.schedul: no config field 'schedul'",
                     code=cli.EXIT_USAGE)
  assert 'Did you mean "schedule"' in result["out"]
  assert os.path.dirname(log) == str(result["temp"])
  assert not os.path.exists(runs["tmp"] / "typo_wd")


def test_debug_shows_the_traceback_and_writes_no_log(runs):
  for name in ("main_debug", "predict_debug_flag"):
    result = runs["results"][name]
    assert result["code"] != 0
    assert "Traceback (most recent call last)" in result["out"], result["out"][-3000:]
    assert not LOG_LINE.search(result["out"]) and not os.listdir(result["temp"])
  assert "FileNotFoundError: image" in runs["results"]["predict_debug_flag"]["out"]
  assert not os.path.exists(runs["tmp"] / "debug_wd")


def test_convert_wrong_variant_is_one_shortened_message(runs):
  result = runs["results"]["convert"]
  log = _one_message(result, "checkpoint does not fit the model")
  # The head and tail of the key list, and the two descriptions at its end.
  assert "more lines (see the log)" in result["out"]
  assert "checkpoint looks like: embed_dim=8" in result["out"]
  assert "CheckpointMismatchError" in open(log).read()
  assert not os.path.exists(runs["tmp"] / "converted")


def test_predict_visualize_and_bench_report_one_line(runs):
  results = runs["results"]
  _one_message(results["predict"], f"image {runs['tmp']}/no_such.jpg not found")
  _one_message(results["visualize"], f"checkpoint {runs['tmp']}/no_such.pth does not exist")
  assert not os.path.exists(runs["tmp"] / "figures")
  _one_message(results["bench"], "unknown model 'swin_nonexistent'")


# ------------------------------------------------------------------------------------------
# report_errors in-process
# ------------------------------------------------------------------------------------------


def _fail(exc, **kwargs) -> int:
  with pytest.raises(SystemExit) as exit_info:
    with cli.report_errors("test", debug=False, **kwargs):
      raise exc
  return exit_info.value.code


def test_a_bug_keeps_its_traceback_on_screen(capsys, tmp_path, monkeypatch):
  monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
  assert _fail(TypeError("unsupported operand")) == cli.EXIT_ERROR
  err = capsys.readouterr().err
  assert "Traceback (most recent call last)" in err
  assert "error: unexpected TypeError: unsupported operand" in err
  (log,) = tmp_path.glob("swin_jax-test-*.log")
  assert "TypeError: unsupported operand" in log.read_text() and str(log) in err


def test_ctrl_c_exits_130_quietly(capsys, tmp_path):
  workdir = tmp_path / "wd"

  def interrupted():
    with cli.report_errors("test", debug=False, workdir=str(workdir)):
      workdir.mkdir()
      raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exit_info:
    interrupted()
  assert exit_info.value.code == cli.EXIT_INTERRUPTED
  assert capsys.readouterr() == ("", "")
  assert not workdir.exists()


def test_workdir_rules(tmp_path, monkeypatch):
  monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
  existing = tmp_path / "existing"
  existing.mkdir()
  _fail(ValueError("bad"), workdir=str(existing))          # existed before: kept, even empty
  assert (existing / cli.ERROR_LOG).exists()

  created = tmp_path / "created"

  def fail_in(path, keep):
    with pytest.raises(SystemExit):
      with cli.report_errors("test", debug=False, workdir=str(path),
                             keep_workdir=lambda p: keep):
        path.mkdir()
        (path / "metrics.jsonl").write_text("{}")
        raise ValueError("bad")

  fail_in(created, keep=False)
  assert not created.exists()
  fail_in(created, keep=True)                              # e.g. it holds a checkpoint
  assert "ValueError: bad" in (created / cli.ERROR_LOG).read_text()


def test_long_messages_keep_their_head_and_tail(capsys, tmp_path, monkeypatch):
  monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
  lines = [f"line {i}" for i in range(100)]
  _fail(ValueError("\n".join(lines)))
  err = capsys.readouterr().err
  assert "line 0" in err and "line 99" in err and "line 50" not in err
  assert "83 more lines" in err
