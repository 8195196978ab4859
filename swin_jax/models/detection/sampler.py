"""mmdet's ``RandomSampler`` with static shapes, and ground truth added as proposals.

    sample = random_sample(key, assign.gt_inds, RCNN_SAMPLER)
    rois = boxes[sample.inds]        # (512, 4): positives first, then negatives, then padding
    # sample.is_pos, sample.valid (512,) bool; sample.num_pos, sample.num_neg () int32

mmdet's rule: of the candidates assigned positive (``gt_inds > 0``), take
``int(num * pos_fraction)`` at random, or all if there are fewer; then fill the rest of the
``num`` with negatives (``gt_inds == 0``) at random, or all of them if there are fewer, so
a batch can be short. ``neg_pos_ub >= 0`` caps the negatives at ``neg_pos_ub * max(1, #pos)``.
Ignored candidates (-1) are never drawn.

Static shapes without ``nonzero``: every candidate gets a random 31-bit key; ``top_k`` of the
keys with non-positives masked to -1 picks the positives, and ``top_k`` with non-negatives
masked picks the negatives. Both come out valid entries first, so placing the ``p`` drawn
positives in slots ``[0, p)`` and the first ``num - p`` negatives after them is a gather.
Indices are distinct (``top_k`` returns distinct positions; the two pools are disjoint).
Within the drawn set the order differs from mmdet's (``unique`` sorts its indices), which
no loss sees. Random keys can tie (2^31 values), then ``top_k`` prefers the lower index: a
bias of order N / 2^31.

mmdet's sampler with ``add_gt_as_proposals`` prepends the ground truth to the proposals
*after* the assignment, each gt box assigned to itself with IoU 1 (``AssignResult.add_gt_``),
not by IoU: ``add_gt_as_proposals`` below does the same with the padded ground truth (padded
slots come out ignored, so they are never drawn).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from swin_jax.models.detection.assigner import AssignResult


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """``RandomSampler`` settings: ``num`` samples, at most ``int(num * pos_fraction)``
  positive; ``neg_pos_ub < 0`` leaves the negatives uncapped."""
  num: int
  pos_fraction: float
  neg_pos_ub: float = -1
  add_gt_as_proposals: bool = False

  @property
  def max_pos(self) -> int:
    """The positive slots ``[0, max_pos)`` (mmdet's ``num_expected_pos``)."""
    return int(self.num * self.pos_fraction)


# ``train_cfg.rpn.sampler`` and ``train_cfg.rcnn.sampler`` of mask_rcnn_swin_fpn.py.
RPN_SAMPLER = SamplerConfig(num=256, pos_fraction=0.5)
RCNN_SAMPLER = SamplerConfig(num=512, pos_fraction=0.25, add_gt_as_proposals=True)


class SampleResult(NamedTuple):
  """``inds (num,) int32`` candidate indices (positives, then negatives, then padding, whose
  index is 0); ``is_pos``, ``valid (num,)`` bool; ``num_pos``, ``num_neg () int32``."""
  inds: jnp.ndarray
  is_pos: jnp.ndarray
  valid: jnp.ndarray
  num_pos: jnp.ndarray
  num_neg: jnp.ndarray


def _draw(keys: jnp.ndarray, pool: jnp.ndarray, k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``k`` random members of ``pool (N,)`` bool: ``(inds (k,), valid (k,))``, valid first.
  ``k`` larger than ``N`` pads with invalid entries."""
  n = pool.shape[0]
  kk = min(k, n)
  values, inds = jax.lax.top_k(jnp.where(pool, keys, -1), kk)
  valid = values >= 0
  if kk < k:
    inds = jnp.concatenate([inds, jnp.zeros((k - kk,), inds.dtype)])
    valid = jnp.concatenate([valid, jnp.zeros((k - kk,), bool)])
  return inds.astype(jnp.int32), valid


def random_sample(key: jax.Array, gt_inds: jnp.ndarray, cfg: SamplerConfig) -> SampleResult:
  """Draw ``cfg.num`` candidates from an assignment ``gt_inds (N,)`` (0 negative, -1 ignored,
  k >= 1 positive). Pure and jit-able; ``cfg`` is static."""
  n = gt_inds.shape[0]
  num, max_pos = cfg.num, cfg.max_pos
  # 31 random bits per candidate: non-negative int32 keys, -1 free for "not in the pool".
  keys = (jax.random.bits(key, (n,), jnp.uint32) >> 1).astype(jnp.int32)
  pos_inds, pos_ok = _draw(keys, gt_inds > 0, max_pos)
  neg_inds, neg_ok = _draw(keys, gt_inds == 0, num)
  num_pos = pos_ok.sum(dtype=jnp.int32)
  quota = num - num_pos
  if cfg.neg_pos_ub >= 0:
    quota = jnp.minimum(quota, jnp.floor(cfg.neg_pos_ub * jnp.maximum(num_pos, 1)
                                         ).astype(jnp.int32))
  num_neg = jnp.minimum(neg_ok.sum(dtype=jnp.int32), quota)

  slot = jnp.arange(num, dtype=jnp.int32)
  is_pos = slot < num_pos
  neg_slot = jnp.clip(slot - num_pos, 0, num - 1)
  is_neg = (slot >= num_pos) & (slot - num_pos < num_neg)
  pos_pick = (pos_inds[jnp.minimum(slot, max_pos - 1)] if max_pos > 0
              else jnp.zeros((num,), jnp.int32))
  inds = jnp.where(is_pos, pos_pick, neg_inds[neg_slot])
  valid = is_pos | is_neg
  return SampleResult(jnp.where(valid, inds, 0), is_pos, valid, num_pos, num_neg)


def sampled_masks(sample: SampleResult, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(pos (n,), neg (n,))`` bool: which of ``n`` candidates were drawn as positive /
  negative (the RPN's per-anchor view of a sample)."""
  pos = jnp.zeros((n,), bool).at[sample.inds].max(sample.is_pos & sample.valid)
  neg = jnp.zeros((n,), bool).at[sample.inds].max(~sample.is_pos & sample.valid)
  return pos, neg


def add_gt_as_proposals(proposals: jnp.ndarray, assign: AssignResult, gt_boxes: jnp.ndarray,
                        gt_valid: jnp.ndarray, gt_labels: jnp.ndarray
                        ) -> tuple[jnp.ndarray, AssignResult, jnp.ndarray]:
  """Prepend the padded ground truth ``gt_boxes (G, 4)`` to ``proposals (N, 4)`` and their
  assignment, each valid gt assigned to itself with IoU 1 (mmdet's ``add_gt_``), padded ones
  ignored. -> ``(boxes (G + N, 4), assignment (G + N,), is_gt (G + N,) bool)``; gt ``j`` sits
  at index ``j`` as in mmdet."""
  g = gt_boxes.shape[0]
  gt_valid = jnp.asarray(gt_valid, bool)
  self_inds = jnp.where(gt_valid, jnp.arange(1, g + 1, dtype=jnp.int32), -1)
  merged = AssignResult(
      gt_inds=jnp.concatenate([self_inds, assign.gt_inds]),
      max_overlaps=jnp.concatenate([gt_valid.astype(jnp.float32), assign.max_overlaps]),
      labels=jnp.concatenate([jnp.where(gt_valid, jnp.asarray(gt_labels, jnp.int32), -1),
                              assign.labels]))
  boxes = jnp.concatenate([gt_boxes.astype(jnp.float32), proposals.astype(jnp.float32)])
  is_gt = jnp.concatenate([gt_valid, jnp.zeros((proposals.shape[0],), bool)])
  return boxes, merged, is_gt
