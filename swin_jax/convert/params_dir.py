"""A converted-params directory: orbax params plus the model they belong to.

    DIR/params/       orbax checkpoint of the params tree (written atomically by orbax)
    DIR/model_state/  the model's other collections, for models that have them (UperNet's
                      BatchNorm ``batch_stats``)
    DIR/model.json    {"model": name, "overrides": {...}} for ``swin_jax.create_model``

Training runs start from such a directory (``init_from``); ``load_params_dir`` reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import orbax.checkpoint as ocp

from swin_jax.models import registry
from swin_jax.models.swin import SwinTransformer

MODEL_FILE = "model.json"
PARAMS_SUBDIR = "params"
MODEL_STATE_SUBDIR = "model_state"


def save_params_dir(out_dir: str, params: Mapping[str, Any], model_name: str,
                    overrides: Mapping[str, Any] | None = None,
                    model_state: Mapping[str, Any] | None = None) -> str:
  """Writes ``params`` (and ``model_state``, e.g. ``{'batch_stats': ...}``, if not empty)
  and the model spec under ``out_dir``; returns the absolute path."""
  out_dir = os.path.abspath(out_dir)
  params_path = os.path.join(out_dir, PARAMS_SUBDIR)
  if os.path.exists(params_path):
    raise FileExistsError(f"{params_path} exists; choose a new --out directory")
  os.makedirs(out_dir, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_path, dict(params))
  if model_state:
    checkpointer.save(os.path.join(out_dir, MODEL_STATE_SUBDIR), dict(model_state))
  checkpointer.wait_until_finished()
  spec = {"model": registry.resolve_name(model_name), "overrides": dict(overrides or {})}
  with open(os.path.join(out_dir, MODEL_FILE), "w") as f:
    json.dump(spec, f, indent=2)
  return out_dir


def _model_spec(path: str) -> dict[str, Any]:
  spec_file = os.path.join(path, MODEL_FILE)
  if not os.path.exists(spec_file):
    raise FileNotFoundError(f"{path} is not a converted-params directory (no {MODEL_FILE}); "
                            "write one with: python -m swin_jax.convert --checkpoint X.pth "
                            "--model NAME --out DIR")
  with open(spec_file) as f:
    return json.load(f)


def load_params_tree(path: str) -> dict[str, Any]:
  """The params of a directory written by ``save_params_dir``, without building its model."""
  path = os.path.abspath(path)
  _model_spec(path)
  return ocp.StandardCheckpointer().restore(os.path.join(path, PARAMS_SUBDIR))


def load_params_dir(path: str) -> tuple[SwinTransformer, dict[str, Any]]:
  """``(model, params)`` from a directory written by ``save_params_dir``."""
  path = os.path.abspath(path)
  spec = _model_spec(path)
  model = registry.create_model_from_json(spec["model"], spec["overrides"])
  return model, load_params_tree(path)


def load_model_state(path: str) -> dict[str, Any]:
  """The model's other collections saved beside the params (``{}`` when it has none)."""
  state_path = os.path.join(os.path.abspath(path), MODEL_STATE_SUBDIR)
  if not os.path.isdir(state_path):
    return {}
  return ocp.StandardCheckpointer().restore(state_path)
