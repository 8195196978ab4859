"""mmdet's ``Shared2FCBBoxHead``: RoI features -> class logits and class-specific deltas.

    cls_score, bbox_pred = Shared2FCBBoxHead()(roi_feats)   # (R, 7, 7, 256) ->
    # (R, 81) softmax logits, background last; (R, 320) deltas, 4 per foreground class

The RoI features are flattened channel-first, ``(C, 7, 7)``, as PyTorch flattens its NCHW
tensor: ``shared_fcs_0``'s kernel rows are then in the official checkpoint's order and convert
by a plain transpose. Then ``shared_fcs_0`` (12544 -> 1024) -> ReLU -> ``shared_fcs_1`` (1024 ->
1024) -> ReLU, and two linear outputs: ``fc_cls`` (81 = 80 classes + background, which mmdet
puts *last*) and ``fc_reg`` (4 x 80: class ``k``'s deltas at ``4k..4k+3``, decoded with the
RCNN stds (0.1, 0.1, 0.2, 0.2)). 14,306,705 params for the official sizes.
Init: Xavier uniform on the shared fcs, N(0, 0.01) on ``fc_cls``, N(0, 0.001) on ``fc_reg``,
zero biases (mmdet's init_cfg).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class Shared2FCBBoxHead(nn.Module):
  """``(R, S, S, C) -> ((R, num_classes + 1), (R, 4 * num_classes))`` float32."""
  num_classes: int = 80
  fc_out_channels: int = 1024
  num_shared_fcs: int = 2
  reg_class_agnostic: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    r = x.shape[0]
    # (R, S, S, C) -> (R, C, S, S) -> (R, C*S*S): PyTorch's flatten of an NCHW RoI tensor.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(r, -1).astype(self.dtype)
    for i in range(self.num_shared_fcs):
      x = nn.relu(nn.Dense(self.fc_out_channels, dtype=self.dtype, param_dtype=jnp.float32,
                           kernel_init=nn.initializers.xavier_uniform(),
                           name=f"shared_fcs_{i}")(x))
    cls_score = nn.Dense(self.num_classes + 1, dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=nn.initializers.normal(0.01), name="fc_cls")(x)
    reg_dim = 4 if self.reg_class_agnostic else 4 * self.num_classes
    bbox_pred = nn.Dense(reg_dim, dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=nn.initializers.normal(0.001), name="fc_reg")(x)
    return cls_score.astype(jnp.float32), bbox_pred.astype(jnp.float32)
