"""Test session set-up: 8 simulated CPU devices and a safe torch/TensorFlow import order."""

import os

# Must happen before jax is imported anywhere: every test sees 8 CPU devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torch 2.14 + TensorFlow in one process can segfault when triton is first imported after
# tensorflow (timm imports it lazily). Importing triton first avoids it
# (shared/reference/environment.md).
try:
  import triton  # noqa: F401
except ImportError:
  pass

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# --- the tiny nnFormer run (tests/nnformer_runs.py), once per worker -------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def nnformer_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("nnformer_tfds"))


@pytest.fixture(scope="session")
def nnformer_tiny_run(nnformer_data_dir, tmp_path_factory):
  """``(workdir, result)`` of ``nnformer_runs.tiny_config`` trained through the loop."""
  # pylint: disable=import-outside-toplevel
  import nnformer_runs
  from swin_jax.train import loop
  from train_runs import compilation_cache_dir, persistent_compilation_cache
  workdir = str(tmp_path_factory.mktemp("nnformer_run"))
  with persistent_compilation_cache(compilation_cache_dir(tmp_path_factory)):
    result = loop.train_and_evaluate(nnformer_runs.tiny_config(nnformer_data_dir), workdir)
  return workdir, result
