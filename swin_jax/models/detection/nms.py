"""Greedy non-maximum suppression with static shapes: ``torchvision.ops.nms`` /
``batched_nms`` semantics, padded to a fixed number of outputs.

    indices, valid = nms(boxes, scores, iou_threshold=0.7, max_output=1000)
    kept = boxes[indices]          # (1000, 4); rows where ``valid`` is False are padding

torchvision's rule, which this follows exactly:
* boxes are visited by score, descending, with a *stable* sort: of equal scores the lower
  index comes first;
* a visited box that no kept box suppresses is kept, and suppresses every later box whose IoU
  with it is ``> iou_threshold`` (strictly);
* IoU = inter / (area_i + area_j - inter), areas ``(x2 - x1) * (y2 - y1)`` (no ``+1``);
* the kept indices come out in visiting order.
The threshold is a float64 in torchvision, compared against float32 IoUs; here the bound is
the largest float32 not above it, so that ``iou > bound`` decides as torchvision does even at
the threshold itself (0.7 is not a float32). One caveat: XLA may fuse the IoU's
``a + b - w * h`` into a multiply-add, so an IoU within an ulp of the threshold can round to
the other side (integer boxes are exact).

Static shapes: the greedy pass runs over tiles of ``TILE`` boxes in score order. Boxes of a
tile are first suppressed by the kept boxes of earlier tiles (one (TILE, N) IoU block), then
the tile settles its own boxes by iterating ``keep_i = live_i and no kept j < i overlaps
i`` to its fixed point. The greedy result is the only fixed point (position i depends only
on positions before it), and the iteration reaches it in at most TILE steps, usually a few.
Memory is O(TILE * N), never N x N.

mmdet itself calls mmcv's compiled ``nms``: the same rule, except that its score sort is not
stable (equal scores in an unspecified order, so exactly tied overlapping boxes may keep
another copy) and its threshold is a float32 (the same decisions at the official 0.5 and 0.7).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

TILE = 256


def iou_threshold_bound(iou_threshold: float) -> np.float32:
  """The largest float32 ``b <= iou_threshold``: for float32 ``iou``, ``iou > b`` iff
  ``iou > iou_threshold`` compared in float64 (torchvision's comparison)."""
  bound = np.float32(iou_threshold)
  if float(bound) > float(iou_threshold):
    bound = np.nextafter(bound, np.float32(-np.inf))
  return bound


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """``(M, 4), (N, 4) -> (M, N)`` IoU of x1y1x2y2 boxes, torchvision's float32 arithmetic."""
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  w = jnp.maximum(0.0, jnp.minimum(a[:, None, 2], b[None, :, 2]) -
                  jnp.maximum(a[:, None, 0], b[None, :, 0]))
  h = jnp.maximum(0.0, jnp.minimum(a[:, None, 3], b[None, :, 3]) -
                  jnp.maximum(a[:, None, 1], b[None, :, 1]))
  inter = w * h
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def _greedy_keep(boxes: jnp.ndarray, live: jnp.ndarray, bound, tile: int) -> jnp.ndarray:
  """``(N, 4)`` boxes in visiting order, ``live (N,)`` -> ``keep (N,)`` of greedy NMS.
  ``N`` is a multiple of ``tile``."""
  n = boxes.shape[0]
  earlier = np.triu(np.ones((tile, tile), bool), k=1)   # [j, i]: j is visited before i

  def settle_tile(t, keep):
    start = t * tile
    box_t = jax.lax.dynamic_slice_in_dim(boxes, start, tile)
    live_t = jax.lax.dynamic_slice_in_dim(live, start, tile)
    # Kept boxes so far all lie in earlier tiles (later entries of ``keep`` are still False).
    suppressed = jnp.any((pairwise_iou(box_t, boxes) > bound) & keep[None, :], axis=1)
    candidate = live_t & ~suppressed
    overlaps = (pairwise_iou(box_t, box_t) > bound) & earlier   # [j, i]

    def step(state):
      current, _ = state
      new = candidate & ~jnp.any(overlaps & current[:, None], axis=0)
      return new, jnp.any(new != current)

    keep_t, _ = jax.lax.while_loop(lambda s: s[1], step, (candidate, jnp.array(True)))
    return jax.lax.dynamic_update_slice_in_dim(keep, keep_t, start, axis=0)

  return jax.lax.fori_loop(0, n // tile, settle_tile, jnp.zeros((n,), bool))


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, iou_threshold: float, max_output: int,
        valid: Optional[jnp.ndarray] = None, tile: int = TILE
        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Greedy NMS of ``boxes (N, 4)`` x1y1x2y2 by ``scores (N,)``.

  Returns ``(indices (max_output,) int32, valid (max_output,) bool)``: the first
  ``max_output`` kept indices into ``boxes`` in torchvision's order (score descending, ties
  by index), then padding (index 0, ``valid`` False). ``valid (N,)``, if given, marks the
  real inputs of a padded array: the result is then torchvision's on those boxes alone.
  ``iou_threshold`` must be a Python float (it is part of the program).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  n = boxes.shape[0]
  live = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
  # Stable descending sort: equal scores keep index order. Invalid entries may sit anywhere
  # in it: they are never kept, so they neither suppress nor take an output place.
  order = jnp.argsort(scores, descending=True, stable=True)
  tile = max(1, min(tile, n))
  padded = -(-n // tile) * tile
  sorted_boxes = jnp.pad(boxes[order], ((0, padded - n), (0, 0)))
  sorted_live = jnp.pad(live[order], (0, padded - n))
  keep = _greedy_keep(sorted_boxes, sorted_live, iou_threshold_bound(iou_threshold), tile)
  if max_output > padded:
    keep = jnp.pad(keep, (0, max_output - padded))
  # top_k returns equal values lowest index first: the kept positions in visiting order.
  kept, position = jax.lax.top_k(keep.astype(jnp.int32), max_output)
  order = jnp.pad(order, (0, keep.shape[0] - n))
  is_valid = kept.astype(bool)
  return jnp.where(is_valid, order[position], 0).astype(jnp.int32), is_valid


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, idxs: jnp.ndarray,
                iou_threshold: float, max_output: int, valid: Optional[jnp.ndarray] = None,
                tile: int = TILE) -> tuple[jnp.ndarray, jnp.ndarray]:
  """NMS within each category ``idxs (N,)`` (classes, or pyramid levels for proposals):
  ``torchvision.ops.batched_nms`` / mmcv's ``batched_nms``, same outputs as ``nms``.

  Both references shift each category's boxes by ``idx * (max coordinate + 1)`` so that
  boxes of different categories never overlap, then run one NMS; this does the same, so
  the shifted float32 coordinates, and so the IoUs, are theirs. (torchvision switches to a
  per-category loop above 4,000 boxes on CPU; the kept set is the same, and its final sort
  is not stable, so the order among equal scores may then differ.) The maximum is over the
  ``valid`` boxes only.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  live = jnp.ones(boxes.shape[:1], bool) if valid is None else jnp.asarray(valid, bool)
  max_coordinate = jnp.max(jnp.where(live[:, None], boxes, -jnp.inf), initial=-jnp.inf)
  max_coordinate = jnp.where(jnp.isfinite(max_coordinate), max_coordinate, 0.0)
  offsets = jnp.asarray(idxs).astype(jnp.float32) * (max_coordinate + 1.0)
  return nms(boxes + offsets[:, None], scores, iou_threshold, max_output, valid, tile)
