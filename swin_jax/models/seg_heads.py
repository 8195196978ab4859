"""mmseg's semantic-segmentation heads over a list of NHWC features: ``UPerHead``, ``FCNHead``.

Both end as mmseg's ``BaseDecodeHead.cls_seg``: ``Dropout2d`` (whole channels of a sample,
train only), then ``conv_seg``, a biased 1x1 conv to the classes, initialised N(0, 0.01).
Their params mirror mmseg's names (``lateral_convs_0/conv``, ``fpn_bottleneck/bn``,
``conv_seg``; ``convs_0`` in the FCN head) except the PPM branches: mmseg's
``psp_modules.i`` is ``Sequential(AdaptiveAvgPool2d, ConvModule)``, so its conv is
``psp_modules.i.1.conv``; here the pooling is a function and the branch is
``psp_modules_i/conv`` (``swin_jax.convert.upernet`` maps the names).

Logits are float32 at the resolution of the head's first input: 1/4 of the image for
``UPerHead`` on Swin's four stages, 1/16 for the FCN head on stage 3.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from swin_jax.models import interpolate
from swin_jax.models.conv_module import ConvModule

Dtype = Any


def cls_seg(x: jnp.ndarray, num_classes: int, dropout_ratio: float, dtype: Dtype,
            train: bool) -> jnp.ndarray:
  """``BaseDecodeHead.cls_seg``: ``Dropout2d`` then ``conv_seg`` (1x1, bias) -> float32
  logits. Call it inside a head's compact method: ``conv_seg`` becomes the head's param."""
  # Dropout2d zeroes whole feature maps: the mask broadcasts over H and W.
  x = nn.Dropout(dropout_ratio, broadcast_dims=(1, 2))(x, deterministic=not train)
  x = nn.Conv(num_classes, (1, 1), dtype=dtype, param_dtype=jnp.float32,
              kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
              name="conv_seg")(x)
  return x.astype(jnp.float32)


class UPerHead(nn.Module):
  """UperNet's decode head: ``[(B, H_i, W_i, C_i)] x 4 -> (B, H_0, W_0, num_classes)``.

  1. PPM on the last map: for each of ``pool_scales``, ``AdaptiveAvgPool`` to s x s, a 1x1
     ``ConvModule`` (``psp_modules_i``), bilinear back; concatenated after the map itself,
     then a 3x3 ``ConvModule`` (``bottleneck``).
  2. 1x1 lateral ``ConvModule``s on the other maps (``lateral_convs_i``), the PPM output on
     top; top-down, each level adds the bilinear resize of the one above.
  3. 3x3 ``fpn_convs_i`` on all levels but the top; every level resized to level 0,
     concatenated, a 3x3 ``fpn_bottleneck``; then ``cls_seg``.
  All resizes are bilinear with align_corners False (``interpolate.resize_bilinear``).
  """
  num_classes: int
  channels: int = 512
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  dropout_ratio: float = 0.1
  dtype: Dtype = jnp.float32

  def _conv(self, kernel_size: int, name: str) -> ConvModule:
    return ConvModule(self.channels, kernel_size, dtype=self.dtype, name=name)

  def psp_forward(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """The PPM and its bottleneck: ``(B, h, w, C) -> (B, h, w, channels)``. Runs inside the
    compact ``__call__``, which owns its params."""
    x = x.astype(self.dtype)
    size = x.shape[1:3]
    outs = [x]
    for i, scale in enumerate(self.pool_scales):
      pooled = interpolate.adaptive_avg_pool(x, scale)
      branch = self._conv(1, f"psp_modules_{i}")(pooled, train)
      outs.append(interpolate.resize_bilinear(branch, size))
    return self._conv(3, "bottleneck")(jnp.concatenate(outs, axis=-1), train)

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], train: bool = False) -> jnp.ndarray:
    *lower, top = features
    laterals = [self._conv(1, f"lateral_convs_{i}")(f, train) for i, f in enumerate(lower)]
    laterals.append(self.psp_forward(top, train))
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + interpolate.resize_bilinear(
          laterals[i], laterals[i - 1].shape[1:3])
    outs = [self._conv(3, f"fpn_convs_{i}")(lat, train) for i, lat in enumerate(laterals[:-1])]
    outs.append(laterals[-1])
    size = outs[0].shape[1:3]
    outs = [outs[0]] + [interpolate.resize_bilinear(out, size) for out in outs[1:]]
    x = self._conv(3, "fpn_bottleneck")(jnp.concatenate(outs, axis=-1), train)
    return cls_seg(x, self.num_classes, self.dropout_ratio, self.dtype, train)


class FCNHead(nn.Module):
  """mmseg's ``FCNHead`` (concat_input False): ``features[in_index]`` -> ``num_convs`` 3x3
  ``ConvModule``s (``convs_j``) -> ``cls_seg``. ``(B, H, W, C) -> (B, H, W, num_classes)``."""
  num_classes: int
  in_index: int = 2
  channels: int = 256
  num_convs: int = 1
  dropout_ratio: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], train: bool = False) -> jnp.ndarray:
    x = features[self.in_index]
    for j in range(self.num_convs):
      x = ConvModule(self.channels, 3, dtype=self.dtype, name=f"convs_{j}")(x, train)
    return cls_seg(x, self.num_classes, self.dropout_ratio, self.dtype, train)
