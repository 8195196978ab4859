"""Where the Swin backbones of a model are: task models nest them (``backbone/...``).

    find_backbones(create_model("swin_t"))            # {(): SwinTransformer(...)}
    find_backbones(upernet_model)                      # {('backbone',): SwinTransformer(...)}

A Flax Linen submodule given as a dataclass field is bound under the field's name, so the
params of ``model.backbone`` live at ``params['backbone']``. The converter, ``init_from``,
the optimizer rules and the visualiser use these paths to work on a backbone wherever it
sits in the param tree.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from swin_jax.models.swin import SwinTransformer

Path = tuple[str, ...]


def find_backbones(model: nn.Module) -> dict[Path, SwinTransformer]:
  """``{param path: SwinTransformer}`` for every Swin backbone held as a dataclass field.

  Searches fields recursively (a teacher holding a detector holding a backbone), not the
  submodules a ``setup`` creates. The model itself, if it is a Swin, is at ``()``.
  """
  if isinstance(model, SwinTransformer):
    return {(): model}
  found: dict[Path, SwinTransformer] = {}
  for field in dataclasses.fields(model):
    if field.name in ("parent", "name"):
      continue
    value = getattr(model, field.name, None)
    if isinstance(value, nn.Module):
      for path, backbone in find_backbones(value).items():
        found[(field.name, *path)] = backbone
  return found


def the_backbone(model: nn.Module) -> tuple[Path, SwinTransformer]:
  """The single Swin backbone of ``model`` and its path; an error if there is not one."""
  found = find_backbones(model)
  if len(found) != 1:
    raise ValueError(f"{type(model).__name__} holds {len(found)} Swin backbones "
                     f"({['/'.join(p) or '<root>' for p in found]}); expected exactly one")
  return next(iter(found.items()))
