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
