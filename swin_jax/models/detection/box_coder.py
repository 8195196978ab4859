"""mmdet's ``DeltaXYWHBBoxCoder``: boxes ``x1y1x2y2`` <-> deltas ``(dx, dy, dw, dh)``.

    deltas = encode(anchors, gt_boxes, stds=RPN_STDS)            # (..., 4)
    boxes = decode(anchors, deltas, stds=RPN_STDS, max_shape=(h, w))

``dx = (gx - px) / pw``, ``dw = log(gw / pw)`` (and the same in y), then ``(delta - mean) /
std``. Decoding inverts it after clamping ``|dw|, |dh| <= |log(wh_ratio_clip)|`` (a box grows
or shrinks at most 1000/16 times) and, given ``max_shape``, clips x to ``[0, W]`` and y to
``[0, H]``. No ``+1`` anywhere (mmdet 2.x/3.x coordinates).

The float32 operations are mmdet 3.3.0's ``bbox2delta`` / ``delta2bbox`` in the same order.
Under XLA the results still differ from mmdet's in the last bit or two: its ``log`` / ``exp``
are not PyTorch's (1 ulp apart), it fuses ``a + b * c`` into one multiply-add on CPU and GPU,
and it divides by constant stds as a multiplication by their reciprocals.
mmdet 2.11's ``delta2bbox`` (the official repository) is written differently (the
x and y columns separately, clipping by ``torch.where`` against a ``max_shape`` tensor) but
computes the same values: checked line by line, no numerical difference.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)
MEANS = (0.0, 0.0, 0.0, 0.0)
WH_RATIO_CLIP = 16 / 1000


def encode(boxes: jnp.ndarray, targets: jnp.ndarray, stds: Sequence[float] = RPN_STDS,
           means: Sequence[float] = MEANS) -> jnp.ndarray:
  """``(..., 4)`` deltas taking ``boxes (..., 4)`` (anchors, proposals) to ``targets (...,
  4)``, normalised by ``means`` / ``stds``. float32."""
  boxes = jnp.asarray(boxes, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  px = (boxes[..., 0] + boxes[..., 2]) * 0.5
  py = (boxes[..., 1] + boxes[..., 3]) * 0.5
  pw = boxes[..., 2] - boxes[..., 0]
  ph = boxes[..., 3] - boxes[..., 1]
  gx = (targets[..., 0] + targets[..., 2]) * 0.5
  gy = (targets[..., 1] + targets[..., 3]) * 0.5
  gw = targets[..., 2] - targets[..., 0]
  gh = targets[..., 3] - targets[..., 1]
  deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph,
                      jnp.log(gw / pw), jnp.log(gh / ph)], axis=-1)
  # mmdet divides by the stds (``div_``). XLA rewrites a division by constants into a
  # multiplication by their reciprocals, which can differ in the last bit (stds of 1 are exact).
  return (deltas - np.asarray(means, np.float32)) / np.asarray(stds, np.float32)


def decode(boxes: jnp.ndarray, deltas: jnp.ndarray, stds: Sequence[float] = RPN_STDS,
           means: Sequence[float] = MEANS, max_shape: Any = None,
           wh_ratio_clip: float = WH_RATIO_CLIP) -> jnp.ndarray:
  """Apply ``deltas (..., N, 4K)`` to ``boxes (..., N, 4)`` -> ``(..., N, 4K)`` x1y1x2y2.

  ``4K`` deltas are class-specific (the RCNN head's ``fc_reg``): every group of 4 moves the
  same box. ``max_shape``: ``(H, W)`` (or ``(H, W, C)``), a static tuple or an array of shape
  ``(..., 2+)`` whose leading axes match ``boxes``' batch axes (per-image sizes under jit);
  ``None`` leaves boxes unclipped.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  deltas = jnp.asarray(deltas, jnp.float32)
  *lead, n, four_k = deltas.shape
  if four_k % 4:
    raise ValueError(f"deltas have {four_k} channels, not a multiple of 4")
  d = deltas.reshape(*lead, n, four_k // 4, 4)
  d = d * np.asarray(stds, np.float32) + np.asarray(means, np.float32)
  b = boxes[..., None, :]                                  # (..., N, 1, 4): one per class
  pxy = (b[..., :2] + b[..., 2:]) * 0.5
  pwh = b[..., 2:] - b[..., :2]
  dxy_wh = pwh * d[..., :2]
  # mmdet: max_ratio = |log(wh_ratio_clip)| in float64, used as a float32 clamp bound.
  max_ratio = np.float32(np.abs(np.log(wh_ratio_clip)))
  dwh = jnp.clip(d[..., 2:], -max_ratio, max_ratio)
  gxy = pxy + dxy_wh
  gwh = pwh * jnp.exp(dwh)
  out = jnp.concatenate([gxy - gwh * 0.5, gxy + gwh * 0.5], axis=-1)  # (..., N, K, 4)
  if max_shape is not None:
    hw = jnp.asarray(max_shape if not isinstance(max_shape, (tuple, list))
                     else tuple(max_shape)[:2], jnp.float32)[..., :2]
    h = hw[..., 0][..., None, None]                        # (..., 1, 1) against (..., N, K)
    w = hw[..., 1][..., None, None]
    x1 = jnp.clip(out[..., 0], 0.0, w)
    y1 = jnp.clip(out[..., 1], 0.0, h)
    x2 = jnp.clip(out[..., 2], 0.0, w)
    y2 = jnp.clip(out[..., 3], 0.0, h)
    out = jnp.stack([x1, y1, x2, y2], axis=-1)
  return out.reshape(*lead, n, four_k)
