"""Starting weights for a run (``config.init_from``): converted params, a PyTorch
checkpoint, or another swin_jax training run (e.g. 22K pretraining -> 1K fine-tuning).

Every source goes through the PyTorch-layout converter, so the official fine-tuning
adaptations apply uniformly: relative-position tables are resized when the window changes
(224/W7 -> 384/W12) and a 21,841-class head is reduced to 1,000 classes with the official
22K->1K map.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

from swin_jax.convert import params_dir
from swin_jax.convert.torch_checkpoint import export_torch_state_dict, load_torch_checkpoint
from swin_jax.models import registry
from swin_jax.models.swin import SwinTransformer

RUN_CONFIG_FILE = "config.json"


def latest_run_params(workdir: str) -> tuple[SwinTransformer, Any]:
  """Model and params of the newest complete checkpoint of a swin_jax run directory."""
  workdir = os.path.abspath(os.path.expanduser(workdir))  # orbax wants absolute paths
  with open(os.path.join(workdir, RUN_CONFIG_FILE)) as f:
    model_cfg = json.load(f)["model"]
  model = registry.create_model(model_cfg["name"], **model_cfg["overrides"])
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"run directory {workdir} has no complete checkpoint")
  state = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))
  return model, state["params"]


def load_initial_params(path: str, model: SwinTransformer) -> dict[str, Any]:
  """Params for ``model`` from ``path`` (see module docstring); numpy, nested dict."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path) and os.path.exists(os.path.join(path, RUN_CONFIG_FILE)):
    source_model, params = latest_run_params(path)
  elif os.path.isdir(path):
    source_model, params = params_dir.load_params_dir(path)
  else:
    return load_torch_checkpoint(path, model)
  return load_torch_checkpoint(export_torch_state_dict(params, source_model), model)
