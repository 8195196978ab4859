"""Attention maps of a Swin model in image coordinates: pure numpy functions for notebooks.

A block's sown probabilities ``(B, nW, heads, N, N)`` (``N = wh * ww``) live in *window
coordinates*: the map was rolled by ``-shift`` (SW-MSA blocks), zero-padded at the bottom/right
to a multiple of the window, and cut into windows (batch-major, then row-major over the window
grid; tokens row-major inside a window). ``slot_tokens`` inverts that bookkeeping once per
geometry, so every function here returns maps over the real ``(H, W)`` token grid of the stage,
with the cyclic shift undone: a query's attention lands on the tokens it really looked at,
including the wrapped border windows of shifted blocks (whose masked, cross-region keys simply
carry ~0 probability).

Keys that fall in the padding (shifted position ``>= H`` or ``>= W``) are no real token: every
map *drops* their mass (a row of ``dense_attention`` sums to ``1 - padding_mass``); use
``padding_mass`` to report it.

``model`` may also be a task model that holds its Swin as a dataclass field (UperNet, a
detector: params and sown probabilities under ``backbone/...``); the functions below find it
with ``swin_jax.models.backbone.find_backbones`` (or take ``backbone_path``).

Typical use::

  probs = collect_attention(model, params, images)          # {(stage, block): (B, nW, h, N, N)}
  geoms = model_geometry(model, images.shape[1:3])          # {(stage, block): BlockGeometry}
  heads = query_attention(probs[0, 1][0], geoms[0, 1], (y, x))   # (heads, H, W) token grid
  pixels = to_pixels(heads, geoms[0, 1].cell, images.shape[1:3])  # (heads, img_h, img_w)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from swin_jax.models import backbone as backbone_lib
from swin_jax.models import scan_layout
from swin_jax.models import window as window_ops
from swin_jax.models.swin import SwinTransformer

Pair = tuple[int, int]
BlockKey = tuple[int, int]  # (stage, block)


@dataclasses.dataclass(frozen=True)
class BlockGeometry:
  """Where one block's windows sit.

  ``grid``: the real runtime token grid ``(H, W)`` of the stage; ``window`` / ``shift``: the
  block's (clamped) window and cyclic shift; ``cell``: pixels per token side
  (``patch_size * 2**stage``).
  """
  grid: Pair
  window: Pair
  shift: Pair
  cell: int

  @property
  def padded(self) -> Pair:
    """The grid padded to a multiple of the window, ``(Hp, Wp)``."""
    (h, w), (wh, ww) = self.grid, self.window
    return (h + window_ops.padding_to_multiple(h, wh), w + window_ops.padding_to_multiple(w, ww))

  @property
  def num_windows(self) -> int:
    (hp, wp), (wh, ww) = self.padded, self.window
    return (hp // wh) * (wp // ww)

  @property
  def num_tokens(self) -> int:
    return self.grid[0] * self.grid[1]


# ------------------------------------------------------------------------------------------
# Forward pass and geometry
# ------------------------------------------------------------------------------------------


def find_backbone(model, backbone_path: str | Sequence[str] | None = None
                  ) -> tuple[tuple[str, ...], SwinTransformer]:
  """``(path, swin)``: the Swin of ``model`` (itself, at ``()``, or a nested backbone).

  ``backbone_path``: where it sits, as field names (``('backbone',)`` or ``'backbone'``;
  ``'a/b'`` for deeper nesting); default: the model's only Swin backbone.
  """
  if backbone_path is None:
    return backbone_lib.the_backbone(model)
  path = tuple(backbone_path.split("/") if isinstance(backbone_path, str) else backbone_path)
  path = tuple(name for name in path if name)
  found = backbone_lib.find_backbones(model)
  if path not in found:
    raise ValueError(f"no Swin backbone at {'/'.join(path) or '<root>'} in "
                     f"{type(model).__name__}; backbones: "
                     f"{['/'.join(p) or '<root>' for p in found]}")
  return path, found[path]


def _with_backbone(model, path: Sequence[str], swin: SwinTransformer):
  """``model`` with the Swin at ``path`` (dataclass fields) replaced by ``swin``."""
  if not path:
    return swin
  field = path[0]
  return model.clone(**{field: _with_backbone(getattr(model, field), path[1:], swin)})


def stage_grids(model, image_hw: Sequence[int]) -> list[Pair]:
  """Runtime token grid of every stage for an input of ``image_hw`` pixels.

  ``image / patch``, then halved with rounding up per merge (PatchMerging pads odd maps).
  ``model``: a ``SwinTransformer`` or a task model holding exactly one.
  """
  model = find_backbone(model)[1]
  h, w = image_hw[0] // model.patch_size, image_hw[1] // model.patch_size
  return [(-(-h // 2**i), -(-w // 2**i)) for i in range(len(model.depths))]


def model_geometry(model, image_hw: Sequence[int]) -> dict[BlockKey, BlockGeometry]:
  """``{(stage, block): BlockGeometry}`` of every block of a ``SwinTransformer`` at ``image_hw``.

  Window and shift come from ``model.block_geometry`` (clamped at construction ``img_size``,
  as the model does); the grid is the runtime one, so other input sizes work too.
  ``model``: a ``SwinTransformer`` or a task model holding exactly one.
  """
  model = find_backbone(model)[1]
  grids = stage_grids(model, image_hw)
  return {(s, b): BlockGeometry(grids[s], *model.block_geometry(s, b),
                                cell=model.patch_size * 2**s)
          for s, depth in enumerate(model.depths) for b in range(depth)}


def collect_attention(model, params: Any, images,
                      backbone_path: str | Sequence[str] | None = None,
                      method: str | None = None) -> tuple[Any, dict[BlockKey, np.ndarray]]:
  """One jitted forward pass: ``(output, {(stage, block): (B, nW, heads, N, N)})``.

  ``images``: ``(B, H, W, 3)`` float32, normalised as the model expects. ``model``: a
  ``SwinTransformer`` (``output``: its logits ``(B, classes)``) or a task model holding one
  as a dataclass field (``output``: whatever the model returns, as numpy); ``backbone_path``
  as in ``find_backbone``. The probabilities are the ones the Swin sows
  (``intermediates/<backbone path>/layers_i/blocks_j/attn/attn_probs``, or the scanned
  ``block_pairs`` layout), as numpy. ``method``: the model method to run, by name
  (``'features'``: a Swin's stage outputs; default ``__call__``). Compiles on every call
  (Flax modules with list fields cannot key a cache).
  """
  path, swin = find_backbone(model, backbone_path)
  swin = swin.clone(attention_impl="explicit")  # the fused kernel sows no probabilities
  model = _with_backbone(model, path, swin)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False, method=method,
                                             mutable=["intermediates"]))
  output, state = forward(params, images)
  sown_by_swin = state["intermediates"]
  for name in path:  # a field submodule sows under its field's name
    sown_by_swin = sown_by_swin[name]
  probs = {}
  for stage, depth in enumerate(swin.depths):
    sown = sown_by_swin[f"layers_{stage}"]
    for block in range(depth):
      if swin.scan_blocks:  # stacked per pair: see swin_jax.models.scan_layout
        (p,) = sown[scan_layout.PAIRS][f"block{block % 2}"]["attn"]["attn_probs"]
        p = p[block // 2]
      else:
        (p,) = sown[f"blocks_{block}"]["attn"]["attn_probs"]
      probs[stage, block] = np.asarray(p)
  return jax.tree.map(np.asarray, output), probs


# ------------------------------------------------------------------------------------------
# Window coordinates -> image coordinates
# ------------------------------------------------------------------------------------------


def slot_tokens(geometry: BlockGeometry) -> np.ndarray:
  """``(nW, N)`` int: the original flat token index ``y * W + x`` held by each window slot.

  The block computed ``shifted[i, j] = x[(i + sh) % H, (j + sw) % W]`` on the unpadded grid,
  then padded and partitioned, so slot ``n`` of window ``w`` (shifted position ``(py, px)`` =
  window origin + ``divmod(n, ww)``) holds original token ``((py + sh) % H, (px + sw) % W)``,
  or ``-1`` where ``(py, px)`` is padding. Every real token occurs exactly once.
  """
  (h, w), (hp, wp), (sh, sw) = geometry.grid, geometry.padded, geometry.shift
  py, px = np.meshgrid(np.arange(hp), np.arange(wp), indexing="ij")
  tokens = np.where((py < h) & (px < w), (py + sh) % h * w + (px + sw) % w, -1)
  return window_ops.window_partition(tokens[None, :, :, None], geometry.window)[..., 0]


def _check(probs: np.ndarray, geometry: BlockGeometry) -> np.ndarray:
  probs = np.asarray(probs)
  n = geometry.window[0] * geometry.window[1]
  if probs.ndim != 4 or probs.shape[0] != geometry.num_windows or probs.shape[2:] != (n, n):
    raise ValueError(f"expected one image's probabilities (nW={geometry.num_windows}, heads, "
                     f"{n}, {n}) for {geometry}, got shape {probs.shape}; index the batch first "
                     "(probs[b])")
  return probs


def query_attention(probs: np.ndarray, geometry: BlockGeometry, query: Pair) -> np.ndarray:
  """Where one query token looked: ``(heads, H, W)``, shift undone, padding mass dropped.

  ``probs``: one image's ``(nW, heads, N, N)``; ``query``: ``(y, x)`` on the stage's token
  grid (pixel ``(py, px)`` is token ``(py // cell, px // cell)``).
  """
  probs = _check(probs, geometry)
  (h, w), heads = geometry.grid, probs.shape[1]
  if not (0 <= query[0] < h and 0 <= query[1] < w):
    raise ValueError(f"query {query} is outside the {h}x{w} token grid")
  slots = slot_tokens(geometry)
  win, slot = np.argwhere(slots == query[0] * w + query[1])[0]
  keys = slots[win] >= 0
  out = np.zeros((heads, h * w), probs.dtype)
  out[:, slots[win][keys]] = probs[win, :, slot, keys].T
  return out.reshape(heads, h, w)


def dense_attention(probs: np.ndarray, geometry: BlockGeometry) -> np.ndarray:
  """The block's full attention matrix in token coordinates: ``(heads, T, T)``, ``T = H*W``.

  Row ``q`` (flat ``y * W + x``) is query token q's distribution over key tokens, shift
  undone; padded keys are dropped (rows sum to ``1 - padding_mass``). Memory is
  ``heads * T**2`` floats: fine for one block of Swin-T stage 0 (T = 3136: 39 MB per head);
  pass ``probs.mean(1, keepdims=True)`` for the head average.
  """
  probs = _check(probs, geometry)
  slots = slot_tokens(geometry)
  queries = np.broadcast_to(slots[:, :, None], probs[:, 0].shape)
  keys = np.broadcast_to(slots[:, None, :], probs[:, 0].shape)
  real = (queries >= 0) & (keys >= 0)
  t = geometry.num_tokens
  out = np.zeros((probs.shape[1], t, t), probs.dtype)
  out[:, queries[real], keys[real]] = probs.transpose(1, 0, 2, 3)[:, real]
  return out


def padding_mass(probs: np.ndarray, geometry: BlockGeometry) -> np.ndarray:
  """``(heads, H, W)``: for each real query token, the probability it put on padded keys."""
  probs = _check(probs, geometry)
  slots = slot_tokens(geometry)
  mass = (probs * (slots < 0)[:, None, None, :]).sum(-1)  # (nW, heads, N) per query slot
  return _scatter_slots(mass, slots, geometry)


def received_attention(probs: np.ndarray, geometry: BlockGeometry) -> np.ndarray:
  """Attention received per key token, averaged over the real queries: ``(heads, H, W)``.

  ``out[h, y, x] = (1 / T) sum_q A_h[q, (y, x)]`` over the ``T`` real query tokens, i.e. the
  column mean of ``dense_attention`` computed without densifying. It sums to
  ``1 - mean padding mass`` per head; uniform attention gives ``1 / T`` everywhere. The same
  function serves W-MSA and SW-MSA blocks, so their maps are directly comparable and can be
  averaged (``stage_received_attention``).
  """
  probs = _check(probs, geometry)
  slots = slot_tokens(geometry)
  real_queries = (slots >= 0)[:, None, :, None]
  received = (probs * real_queries).sum(2)  # (nW, heads, N) per key slot
  return _scatter_slots(received, slots, geometry) / geometry.num_tokens


def _scatter_slots(values: np.ndarray, slots: np.ndarray, geometry: BlockGeometry) -> np.ndarray:
  """``(nW, heads, N)`` per slot -> ``(heads, H, W)`` per real token (each occurs once)."""
  real = slots >= 0
  out = np.zeros((values.shape[1], geometry.num_tokens), values.dtype)
  out[:, slots[real]] = values.transpose(1, 0, 2)[:, real]
  return out.reshape(values.shape[1], *geometry.grid)


def stage_received_attention(probs: Mapping[BlockKey, np.ndarray],
                             geometries: Mapping[BlockKey, BlockGeometry],
                             stage: int) -> np.ndarray:
  """W-MSA and SW-MSA combined: the head- and block-mean received attention of a stage,
  ``(H, W)``. ``probs`` values are one image's ``(nW, heads, N, N)``."""
  maps = [received_attention(p, geometries[key]).mean(0)
          for key, p in probs.items() if key[0] == stage]
  return np.mean(maps, axis=0)


def to_pixels(token_map: np.ndarray, cell: int, image_hw: Sequence[int]) -> np.ndarray:
  """Nearest upsampling ``(..., H, W) -> (..., img_h, img_w)``: each token covers ``cell``
  pixels per side (crops the part of the last token that covered merge padding)."""
  up = np.repeat(np.repeat(token_map, cell, axis=-2), cell, axis=-1)
  return up[..., :image_hw[0], :image_hw[1]]


# ------------------------------------------------------------------------------------------
# Rollout
# ------------------------------------------------------------------------------------------


def rollout_matrix(attention: np.ndarray, residual: float = 0.5) -> np.ndarray:
  """One block's rollout factor ``residual * I + (1 - residual) * A``, ``(T, T)``.

  ``attention``: a head-averaged ``dense_attention`` ``(T, T)``. Its rows are first
  renormalised over the real keys (padding mass dropped), so every factor is row-stochastic;
  ``residual`` accounts for the skip connection (Abnar & Zuidema's 0.5).
  """
  rows = attention.sum(-1, keepdims=True)
  attention = attention / np.where(rows > 0, rows, 1.0)
  return residual * np.eye(attention.shape[0], dtype=attention.dtype) + (1 - residual) * attention


def stage_rollout(attentions: Sequence[np.ndarray], residual: float = 0.5) -> np.ndarray:
  """Rollout through a stage's blocks: ``R = Â_last ... Â_first``, ``(T, T)``.

  ``attentions``: the head-averaged ``dense_attention`` ``(T, T)`` of each block, in order.
  Row ``q`` says how much the stage output at token q draws on each stage-input token (rows
  sum to 1). Costs ``T**3`` per block (Swin-T stage 0: 3136**3; prefer ``model_rollout``'s
  right-to-left product when only some rows are needed).
  """
  result = np.eye(attentions[0].shape[0], dtype=attentions[0].dtype)
  for attention in attentions:
    result = rollout_matrix(attention, residual) @ result
  return result


def merge_matrix(fine_grid: Pair) -> np.ndarray:
  """PatchMerging as a rollout factor: ``(T_coarse, T_fine)``.

  Coarse token ``(i, j)`` concatenates fine tokens ``(2i + a, 2j + b)``, ``a, b in {0, 1}``;
  rollout treats that as *averaging*: each real child gets ``1 / (number of real children)``
  (4 inside the map; fewer where the merge padded an odd map), so rows sum to 1.
  """
  h, w = fine_grid
  hc, wc = -(-h // 2), -(-w // 2)
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  parent = (y // 2 * wc + x // 2).ravel()
  m = np.zeros((hc * wc, h * w), np.float32)
  m[parent, np.arange(h * w)] = 1.0
  return m / m.sum(-1, keepdims=True)


def model_rollout(attentions: Mapping[BlockKey, np.ndarray], grids: Sequence[Pair],
                  residual: float = 0.5, last_stage: int | None = None, first_stage: int = 0,
                  rows: Sequence[int] | None = None) -> np.ndarray:
  """Rollout from the output of ``last_stage`` back to the input of ``first_stage``.

  ``attentions``: ``{(stage, block): head-averaged dense_attention (T_s, T_s)}`` for the
  blocks of the stages involved (a missing block counts as the identity); ``grids``: the
  stage token grids (``stage_grids``); ``last_stage`` defaults to the last stage of
  ``grids``. The product ``R = Â_last ... M_s ... Â_first`` (``Â`` from ``rollout_matrix``,
  ``M`` from ``merge_matrix``) is taken right-to-left from the last stage, so intermediate
  matrices are only ``(T_last, T_s)``: cheap even for Swin-T at 224. ``rows``: only these
  output tokens (flat indices on the ``last_stage`` grid), e.g. one query.

  Returns ``(len(rows) or T_last, T_first)``; each row sums to 1 over the
  ``grids[first_stage]`` tokens (reshape to that grid for a map). With
  ``first_stage == last_stage`` it is that stage's ``stage_rollout`` (rows of it).
  """
  last = len(grids) - 1 if last_stage is None else last_stage
  t_last = grids[last][0] * grids[last][1]
  result = np.eye(t_last, dtype=np.float32)
  if rows is not None:
    result = result[np.asarray(rows)]
  for stage in range(last, first_stage - 1, -1):
    blocks = sorted(b for s, b in attentions if s == stage)
    for block in reversed(blocks):
      result = result @ rollout_matrix(attentions[stage, block], residual)
    if stage > first_stage:
      result = result @ merge_matrix(grids[stage - 1])
  return result
