"""Soft Teacher's box transfer between views (``ssod/models/utils/bbox_utils.py``), in
``jax.numpy``: static shapes, jit/vmap friendly, numpy input accepted.

    M = relative_matrix(teacher_matrix, student_matrix)      # (..., 3, 3): T_s T_t^-1
    boxes_s = transform_boxes(boxes_t, M, student_hw)          # (..., N, 4) x1 y1 x2 y2

Each view's ``*_matrix`` (``swin_jax.data.soft_teacher_views``) maps source-image pixel
coordinates to that view's pixel coordinates, so ``M`` carries the teacher's pseudo boxes
into the student view. ``transform_boxes`` is the official ``Transform2D.transform_bboxes``:
the four corners through the homogeneous matrix (divided by the third coordinate), their
min / max, then ``x`` clamped to ``[0, w]`` and ``y`` to ``[0, h]`` (each of the four
coordinates on its own, as the official ``points2bbox``). Nothing is dropped: boxes that end
up empty keep their slot, and callers carry validity masks (the official
``filter_invalid`` with ``min_size`` is ``(x2 - x1 > s) & (y2 - y1 > s)`` on the result).
"""

from __future__ import annotations

import jax.numpy as jnp


def relative_matrix(from_matrix, to_matrix):
  """``to_matrix @ inv(from_matrix)`` over leading batch dims ``(..., 3, 3)`` (the official
  ``M = T_s T_t^-1``), as a linear solve: ``X from = to``."""
  from_matrix = jnp.asarray(from_matrix)
  to_matrix = jnp.asarray(to_matrix)
  dtype = jnp.result_type(from_matrix, to_matrix, jnp.float32)
  from_matrix, to_matrix = from_matrix.astype(dtype), to_matrix.astype(dtype)
  shape = jnp.broadcast_shapes(from_matrix.shape, to_matrix.shape)
  a = jnp.broadcast_to(jnp.swapaxes(from_matrix, -1, -2), shape)
  b = jnp.broadcast_to(jnp.swapaxes(to_matrix, -1, -2), shape)
  return jnp.swapaxes(jnp.linalg.solve(a, b), -1, -2)


def transform_boxes(boxes, matrix, out_hw):
  """Boxes ``(..., N, 4)`` (x1 y1 x2 y2) through ``matrix (..., 3, 3)`` into an image of
  size ``out_hw (..., 2)`` ``(h, w)``: corners, projective divide, min / max, clamp.
  Returns ``(..., N, 4)`` in the boxes' float dtype (at least float32)."""
  boxes = jnp.asarray(boxes)
  matrix = jnp.asarray(matrix)
  dtype = jnp.result_type(boxes, matrix, jnp.float32)
  boxes, matrix = boxes.astype(dtype), matrix.astype(dtype)
  out_hw = jnp.asarray(out_hw).astype(dtype)
  x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
  # The official corner order: (x1, y1), (x2, y1), (x2, y2), (x1, y2); (..., N, 4) each.
  xs = jnp.stack([x1, x2, x2, x1], axis=-1)
  ys = jnp.stack([y1, y1, y2, y2], axis=-1)
  m = matrix[..., None, None, :, :]                     # (..., 1, 1, 3, 3) over (N, corner)
  px = m[..., 0, 0] * xs + m[..., 0, 1] * ys + m[..., 0, 2]
  py = m[..., 1, 0] * xs + m[..., 1, 1] * ys + m[..., 1, 2]
  pz = m[..., 2, 0] * xs + m[..., 2, 1] * ys + m[..., 2, 2]
  px, py = px / pz, py / pz
  h = out_hw[..., 0][..., None]                         # (..., 1) against (..., N)
  w = out_hw[..., 1][..., None]
  return jnp.stack([jnp.clip(px.min(-1), 0, w), jnp.clip(py.min(-1), 0, h),
                    jnp.clip(px.max(-1), 0, w), jnp.clip(py.max(-1), 0, h)], axis=-1)
