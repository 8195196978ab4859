"""Official (PyTorch) names of the params in a Flax tree, whatever its layout and nesting.

The optimizer's rules (which params skip weight decay, which layer a param belongs to) are
written against the official names, e.g. ``layers.0.blocks.1.norm1.weight``. A Flax leaf
maps to one official name, or, in the ``scan_blocks=True`` layout, to one per block it
stacks along axis 0::

    layers_0/blocks_1/norm1/scale            (C,)    layers.0.blocks.1.norm1.weight
    layers_2/block_pairs/block1/norm1/scale  (3, C)  layers.2.blocks.{1,3,5}.norm1.weight
    backbone/layers_0/blocks_1/norm1/scale   (C,)    backbone.layers.0.blocks.1.norm1.weight

Swin backbones are found in a param tree by their structure (a subtree holding both
``patch_embed`` and ``layers_0``), so task models that nest one (``backbone/...``) work
without the model object.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import jax

from swin_jax.convert.keys import path_to_torch_key
from swin_jax.models import scan_layout

Path = tuple[str, ...]

_BLOCK = re.compile(r"blocks_(\d+)")


def key_path_names(key_path: Sequence[Any]) -> Path:
  """A ``jax.tree_util`` key path -> its component names as strings."""
  names = []
  for entry in key_path:
    if isinstance(entry, jax.tree_util.DictKey):
      names.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      names.append(entry.name)
    elif isinstance(entry, jax.tree_util.SequenceKey):
      names.append(str(entry.idx))
    else:
      names.append(str(entry))
  return tuple(names)


@dataclasses.dataclass(frozen=True)
class ParamNames:
  """One Flax leaf seen through the official names.

  ``block_paths[m]`` is the per-block Flax path of slice ``m`` (``leaf[m]``) of a stacked
  leaf, or the leaf's own path; ``official[m]`` its official dotted name; ``official_ndim``
  the rank of the official tensor (a stacked leaf's rank minus 1; Linear/Conv kernels are
  transposed but keep their rank).
  """
  path: Path
  block_paths: tuple[Path, ...]
  official: tuple[str, ...]
  official_ndim: int
  stacked: bool


def describe(path: Sequence[str], shape: Sequence[int]) -> ParamNames:
  """The official view of the leaf of ``shape`` at Flax ``path``."""
  path = tuple(path)
  leading = shape[0] if len(shape) else None
  block_paths = tuple(scan_layout.per_block_paths(path, leading))
  stacked = block_paths != (path,)
  return ParamNames(path=path, block_paths=block_paths,
                    official=tuple(path_to_torch_key(p) for p in block_paths),
                    official_ndim=len(shape) - 1 if stacked else len(shape), stacked=stacked)


def describe_tree(params: Any) -> Any:
  """Same-structure tree of ``ParamNames`` (leaves: arrays, tracers or ShapeDtypeStructs)."""
  return jax.tree_util.tree_map_with_path(
      lambda key_path, leaf: describe(key_path_names(key_path), leaf.shape), params)


def official_names(params: Any) -> list[str]:
  """Every official name the tree holds, stacked leaves expanded, in tree order."""
  return [name for info in jax.tree.leaves(describe_tree(params),
                                           is_leaf=lambda x: isinstance(x, ParamNames))
          for name in info.official]


# ----------------------------------------------------------------------------------------
# Swin backbones inside a param tree.


def _stage_depth(stage: Mapping[str, Any]) -> int:
  if scan_layout.PAIRS in stage:
    pairs = stage[scan_layout.PAIRS]
    # Each of block0 / block1 stacks its blocks on axis 0 of every leaf.
    return sum(jax.tree.leaves(pairs[child])[0].shape[0] for child in ("block0", "block1")
               if child in pairs)
  indices = [int(m.group(1)) for key in stage if (m := _BLOCK.fullmatch(str(key)))]
  return max(indices) + 1 if indices else 0


def is_backbone(tree: Any) -> bool:
  """Whether ``tree`` is the params of a Swin backbone (by its structure)."""
  return isinstance(tree, Mapping) and "patch_embed" in tree and "layers_0" in tree


def backbone_depths(backbone: Mapping[str, Any]) -> tuple[int, ...]:
  """Blocks per stage of a Swin backbone's params, per-block or scanned layout."""
  depths = []
  while f"layers_{len(depths)}" in backbone:
    depths.append(_stage_depth(backbone[f"layers_{len(depths)}"]))
  return tuple(depths)


def find_backbone_params(params: Any) -> dict[Path, tuple[int, ...]]:
  """``{path: depths}`` of every Swin backbone in a param tree (``()`` for the root).

  The param-tree counterpart of ``swin_jax.models.backbone.find_backbones`` for code that
  holds params but no model (the optimizer). A backbone's own subtrees are not searched.
  """
  found: dict[Path, tuple[int, ...]] = {}

  def visit(tree: Any, path: Path) -> None:
    if is_backbone(tree):
      found[path] = backbone_depths(tree)
    elif isinstance(tree, Mapping):
      for key, child in tree.items():
        visit(child, path + (str(key),))

  visit(params, ())
  return found
