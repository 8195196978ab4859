"""Params of ``scan_blocks=True`` models <-> the per-block tree with the official names.

Per block (``scan_blocks=False``, the official layout)::

    layers_i/blocks_j/...                     one subtree per block j < depth_i

Scanned (``scan_blocks=True``: each stage is one ``nn.scan`` over (W-MSA, SW-MSA) pairs)::

    layers_i/block_pairs/block0/...           blocks 0, 2, 4, ... stacked on a new axis 0
    layers_i/block_pairs/block1/...           blocks 1, 3, 5, ...

so ``blocks_j`` is ``block_pairs/block{j % 2}[j // 2]``. Everything outside the blocks
(patch embedding, merges, norms, head) is the same in both. Works on numpy or jax arrays
(and on anything ``jax.tree.map`` can stack, e.g. optimizer moments shaped like params).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAIRS = "block_pairs"


def _stack(*leaves: Any) -> Any:
  if all(isinstance(leaf, np.ndarray) for leaf in leaves):
    return np.stack(leaves)
  return jnp.stack(leaves)


def stack_blocks(params: Mapping[str, Any], depths: Sequence[int]) -> dict[str, Any]:
  """Per-block params -> the scanned layout (see module docstring)."""
  out = dict(params)
  for i, depth in enumerate(depths):
    stage = dict(params[f"layers_{i}"])
    if depth % 2:
      raise ValueError(f"stage {i} has an odd depth {depth}; scanned stages hold block pairs")
    blocks = [stage.pop(f"blocks_{j}") for j in range(depth)]
    stage[PAIRS] = {f"block{k}": jax.tree.map(_stack, *blocks[k::2]) for k in (0, 1)}
    out[f"layers_{i}"] = stage
  return out


def unstack_blocks(params: Mapping[str, Any], depths: Sequence[int]) -> dict[str, Any]:
  """Scanned params -> the per-block layout with the official names."""
  out = dict(params)
  for i, depth in enumerate(depths):
    stage = dict(params[f"layers_{i}"])
    pairs = stage.pop(PAIRS)
    for j in range(depth):
      stage[f"blocks_{j}"] = jax.tree.map(lambda x, j=j: x[j // 2], pairs[f"block{j % 2}"])
    out[f"layers_{i}"] = stage
  return out


def is_scanned(params: Mapping[str, Any]) -> bool:
  """Whether a param tree is in the scanned layout."""
  return PAIRS in params.get("layers_0", {})


# ----------------------------------------------------------------------------------------
# Any layout, any nesting: the official (per-block) names of a param path.

_PAIR_CHILD = ("block0", "block1")


def per_block_paths(path: Sequence[str], leading: int | None = None) -> list[tuple[str, ...]]:
  """The per-block paths that a param at ``path`` holds, in stacking order.

  A path through ``.../layers_i/block_pairs/block{k}/...`` is a stack of ``leading``
  blocks (its leading axis): entry ``m`` is ``.../layers_i/blocks_{2m + k}/...``. Any other
  path is one param and maps to itself. Works wherever the backbone sits in the tree
  (``backbone/layers_0/...`` as well as ``layers_0/...``).
  """
  path = tuple(path)
  for k in range(len(path) - 1):
    if path[k] == PAIRS and path[k + 1] in _PAIR_CHILD:
      if leading is None:
        raise ValueError(f"param {'/'.join(path)} is stacked; pass its leading axis size")
      first = _PAIR_CHILD.index(path[k + 1])
      return [path[:k] + (f"blocks_{2 * m + first}",) + path[k + 2:] for m in range(leading)]
  return [path]


def get_subtree(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  """``tree[path[0]][path[1]]...``; ``()`` is the tree itself."""
  for name in path:
    tree = tree[name]
  return tree


def replace_subtree(tree: Mapping[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
  """A copy of ``tree`` (dicts on the way down are copied) with ``value`` at ``path``."""
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = replace_subtree(tree[path[0]], path[1:], value)
  return out


def stack_blocks_at(params: Mapping[str, Any], path: Sequence[str],
                    depths: Sequence[int]) -> dict[str, Any]:
  """``stack_blocks`` on the backbone whose params sit at ``path`` (e.g. ``('backbone',)``)."""
  return replace_subtree(params, path, stack_blocks(get_subtree(params, path), depths))


def unstack_blocks_at(params: Mapping[str, Any], path: Sequence[str],
                      depths: Sequence[int]) -> dict[str, Any]:
  """``unstack_blocks`` on the backbone whose params sit at ``path``."""
  return replace_subtree(params, path, unstack_blocks(get_subtree(params, path), depths))
