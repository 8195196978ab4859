"""The main job: train or fine-tune a Swin model from an ml_collections config file.

  python -m swin_jax.main --config=configs/swin_b_22k.py --workdir=runs/swin_b_22k
  python -m swin_jax.main --config=configs/demo.py --workdir=runs/demo --config.batch_size=64

Rerunning the same command on the same workdir resumes from the newest checkpoint.
A failure prints one line and keeps its traceback in a log (see swin_jax/cli.py); a workdir
the run created is removed again unless it holds a complete checkpoint.
Multi-host: pass --distributed (or set SWIN_JAX_DISTRIBUTED=1) on every host; on TPU pods,
Slurm and Open MPI JAX finds its peers itself, elsewhere also give --coordinator_address,
--num_processes and --process_id.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from swin_jax import cli

# Config files import their shared recipe helpers as `configs.common`, relative to the
# repository root (the current directory when run as documented).
sys.path.insert(0, os.getcwd())

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  # Devices must not be touched before initialize(); decide CPU collectives from the env.
  if os.environ.get("JAX_PLATFORMS", "") == "cpu" or FLAGS.coordinator_address:
    # CPU collectives across processes need gloo (shared/reference/environment.md).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax/TFDS INFO lines drown the progress lines
  config = FLAGS.config
  if FLAGS.distributed or config.distributed or os.environ.get("SWIN_JAX_DISTRIBUTED") == "1":
    _initialize_distributed()
  from swin_jax.train import loop  # pylint: disable=import-outside-toplevel
  logging.info("config:\n%s", config)
  loop.train_and_evaluate(config, FLAGS.workdir)


def _has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir`` holds a complete (committed) checkpoint: then it is worth keeping."""
  try:
    from swin_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  except ImportError:  # cannot tell: keep it
    return True
  steps = os.path.join(workdir, "checkpoints")
  return os.path.isdir(steps) and any(
      name.isdigit() and checkpoint.is_committed(os.path.join(steps, name))
      for name in os.listdir(steps))


if __name__ == "__main__":
  cli.run(main, command="main", workdir_flag="workdir", keep_workdir=_has_checkpoint)
