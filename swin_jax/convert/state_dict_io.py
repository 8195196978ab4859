"""Reading PyTorch-style state dicts from files or objects into plain numpy dicts."""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Mapping

import numpy as np

StateDict = dict[str, np.ndarray]

# Keys under which training scripts nest the weights: official Swin saves
# {'model': ..., 'optimizer': ...}; many others use 'state_dict'.
_NESTING_KEYS = ("model", "state_dict", "module")


def _load_torch_file(path: str) -> Any:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch: pip install 'swin_jax[oracle]' "
                      "(or save the state dict as .safetensors / .npz)") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError:
    # Official training checkpoints also pickle their yacs config, which the safe loader
    # refuses. Only do this for files you trust.
    logging.warning("%s holds non-tensor objects; loading it with weights_only=False", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def _read_file(path: str) -> Any:
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return load_file(path)
  if path.endswith(".npz"):
    with np.load(path) as data:
      return dict(data)
  return _load_torch_file(path)


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> StateDict:
  """A flat ``{torch_key: np.ndarray}`` from a path (.pth/.pt/.bin, .safetensors, .npz) or dict.

  Unwraps ``{'model': ...}`` / ``{'state_dict': ...}`` and strips DistributedDataParallel's
  ``module.`` prefix. Floating tensors become float32.
  """
  raw = _read_file(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else source
  if not isinstance(raw, Mapping):
    raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(raw)}")
  for key in _NESTING_KEYS:
    if isinstance(raw.get(key), Mapping):
      raw = raw[key]
      break
  not_arrays = [k for k, v in raw.items() if not hasattr(v, "shape")]
  if not_arrays:
    raise ValueError(f"not a state dict: entries {not_arrays[:5]} are not tensors "
                     f"(top-level keys: {sorted(raw)[:10]})")
  out = {}
  for key, value in raw.items():
    array = _to_numpy(value)
    if np.issubdtype(array.dtype, np.floating):
      array = array.astype(np.float32)
    out[key.removeprefix("module.")] = array
  return out


def finish_export(state_dict: Mapping[str, Any], to_torch: bool = False) -> dict[str, Any]:
  """An exported state dict as C-contiguous numpy arrays, or (``to_torch``) as
  ``torch.Tensor`` copies: tensors must not share the params' read-only memory."""
  if not to_torch:
    return {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  import torch  # pylint: disable=import-outside-toplevel
  return {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in state_dict.items()}
