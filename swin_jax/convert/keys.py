"""PyTorch state-dict keys <-> Flax param paths, and tensor layouts.

Official key  ``layers.0.blocks.1.attn.qkv.weight`` (Linear, ``(out, in)``)
Flax path     ``('layers_0', 'blocks_1', 'attn', 'qkv', 'kernel')`` (``(in, out)``)

Numbered PyTorch containers (``layers.0``, ``cpb_mlp.2``) become Flax's list names
(``layers_0``, ``cpb_mlp_2``); ``weight`` is ``kernel`` (Linear, Conv) or ``scale``
(LayerNorm). timm stores Swin V1/V2 with the PatchMerging at the *start* of the next stage
(``layers.{i+1}.downsample``) and the classifier under ``head.fc``; the official layout, which
our params mirror, has ``layers.{i}.downsample`` and ``head``.

The path <-> key rules are generic (any Dense / Conv / LayerNorm / BatchNorm param, numbered
containers, any nesting: ``backbone.layers.0...`` is ``('backbone', 'layers_0', ...)``), so
task heads whose Flax names mirror their PyTorch names convert without rules of their own;
only the timm renames above are Swin-specific, and the converter applies them under each Swin
backbone's prefix.
"""

from __future__ import annotations

import re

import numpy as np

Path = tuple[str, ...]

# Persistent buffers in official checkpoints; all are recomputed from shapes here.
BUFFER_SUFFIXES = ("relative_position_index", "attn_mask", "relative_coords_table", "k_bias")

_NUMBERED = re.compile(r"^(.*)_(\d+)$")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def is_buffer(key: str) -> bool:
  return key.rsplit(".", 1)[-1] in BUFFER_SUFFIXES


def is_timm_layout(keys: list[str], num_stages: int) -> bool:
  """timm layout: a ``head.fc`` classifier, or a downsample in the last stage."""
  if any(k.startswith("head.fc.") for k in keys):
    return True
  stages = {int(m.group(1)) for k in keys if (m := _DOWNSAMPLE.match(k))}
  return 0 not in stages and num_stages - 1 in stages


def timm_to_official_key(key: str) -> str:
  key = _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
  return re.sub(r"^head\.fc\.", "head.", key)


def official_to_timm_key(key: str) -> str:
  key = _DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
  return re.sub(r"^head\.", "head.fc.", key)


def torch_key_to_path(key: str, known: set[Path] | dict) -> Path:
  """``'layers.0.blocks.1.norm1.weight' -> ('layers_0', 'blocks_1', 'norm1', 'scale')``.

  ``weight`` maps to whichever of ``kernel`` / ``scale`` the model has at that place; where it
  has neither, the ``kernel`` path is returned (and reported as unexpected by the caller).
  """
  parts: list[str] = []
  for part in key.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  if parts[-1] == "weight":
    scale_path = tuple(parts[:-1]) + ("scale",)
    return scale_path if scale_path in known else tuple(parts[:-1]) + ("kernel",)
  return tuple(parts)


def module_key(path: Path) -> str:
  """A module path's dotted PyTorch name: ``('backbone', 'layers_0') -> 'backbone.layers.0'``."""
  parts = []
  for part in path:
    match = _NUMBERED.match(part)
    parts.extend([match.group(1), match.group(2)] if match else [part])
  return ".".join(parts)


def path_to_torch_key(path: Path) -> str:
  """Inverse of ``torch_key_to_path``."""
  parts = []
  for part in path:
    match = _NUMBERED.match(part)
    parts.extend([match.group(1), match.group(2)] if match else [part])
  if parts[-1] in ("kernel", "scale"):
    parts[-1] = "weight"
  return ".".join(parts)


def torch_to_flax_array(path: Path, value: np.ndarray) -> np.ndarray:
  """Linear ``(out, in) -> (in, out)``; Conv ``OIHW -> HWIO``, Conv3d ``OIDHW -> DHWIO``;
  anything else unchanged."""
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T
  if path[-1] == "kernel" and value.ndim in (4, 5):
    return value.transpose(*range(2, value.ndim), 1, 0)
  return value


def flax_to_torch_array(path: Path, value: np.ndarray) -> np.ndarray:
  """Inverse of ``torch_to_flax_array``."""
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T
  if path[-1] == "kernel" and value.ndim in (4, 5):
    return value.transpose(value.ndim - 1, value.ndim - 2, *range(value.ndim - 2))
  return value


def torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch-layout shape of a Flax param of ``shape`` at ``path``."""
  return flax_to_torch_array(path, np.empty(shape, np.bool_)).shape
