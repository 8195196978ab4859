"""SimMIM: masked image modelling with a Swin (V1 or V2) encoder (microsoft/SimMIM).

    model = create_model("simmim_swin_base_window6_192")
    out = model.apply(variables, images, mask, train=True)   # {'loss', 'reconstruction'}

``images (B, 192, 192, 3)`` are the normalised inputs (the reconstruction target);
``mask (B, 48, 48)`` is given at model-patch resolution, 1 = masked (see
``swin_jax.data.simmim_mask``). The encoder is the ordinary ``SwinTransformer`` built with
``use_mask_token=True``: masked patch embeddings are replaced by a learnt token after the
patch LayerNorm (``SwinTransformer.embed``). The decoder is one 1x1 conv to
``stride**2 * 3`` channels and a pixel shuffle. The loss is L1 over masked pixels against
the images (or, in the Swin V2 recipe, against ``norm_targets`` of them). Params:
``encoder/...`` (with ``encoder/mask_token``) and ``decoder_0`` (the official ``decoder.0``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers
from swin_jax.models.swin import SwinTransformer

Dtype = Any


def pixel_shuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
  """``(B, h, w, C*r*r) -> (B, h*r, w*r, C)`` with PyTorch's channel order: input channel
  ``c*r*r + i*r + j`` goes to output pixel ``(y*r + i, x*r + j)``, channel ``c``."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c)


def upsample_mask(mask: jnp.ndarray, factor: int) -> jnp.ndarray:
  """``(B, h, w) -> (B, h*f, w*f)``: each mask cell repeated over its pixels."""
  return jnp.repeat(jnp.repeat(mask, factor, axis=1), factor, axis=2)


def norm_targets(images: jnp.ndarray, patch_size: int) -> jnp.ndarray:
  """Each pixel normalised by the mean and unbiased variance of the ``patch_size`` square
  around it (windows cut at the border count only real pixels): the official Swin V2
  SimMIM ``norm_targets``, ``(B, H, W, C) -> (B, H, W, C)`` float32."""
  if patch_size % 2 != 1:
    raise ValueError(f"norm_target_patch_size must be odd, got {patch_size}")
  x = images.astype(jnp.float32)
  _, h, w, _ = x.shape
  pad = patch_size // 2

  def box_sum(v):
    # Separable: a k-tall then a k-wide running sum (2k adds per pixel, not k^2).
    for axis in (1, 2):
      window = [1, 1, 1, 1]
      window[axis] = patch_size
      padding = [(0, 0)] * 4
      padding[axis] = (pad, pad)
      v = jax.lax.reduce_window(v, 0.0, jax.lax.add, window, (1, 1, 1, 1), padding)
    return v

  def valid(n):  # real pixels along one axis of each window (a numpy constant)
    i = np.arange(n)
    return np.minimum(i + pad, n - 1) - np.maximum(i - pad, 0) + 1

  count = jnp.asarray(np.outer(valid(h), valid(w))[None, :, :, None], jnp.float32)
  mean = box_sum(x) / count
  var = (box_sum(x * x) / count - mean**2) * (count / (count - 1))
  return (x - mean) / jnp.sqrt(jnp.maximum(var, 0.0) + 1e-6)


def masked_l1_loss(images: jnp.ndarray, reconstruction: jnp.ndarray,
                   pixel_mask: jnp.ndarray) -> jnp.ndarray:
  """The official loss: ``sum |x - x_rec| * m / (sum m + 1e-5) / C`` over the whole batch,
  where ``m (B, H, W)`` counts pixels (not channels), hence the division by ``C``."""
  m = pixel_mask.astype(jnp.float32)[..., None]
  l1 = jnp.abs(images.astype(jnp.float32) - reconstruction.astype(jnp.float32))
  return (l1 * m).sum() / (m.sum() + 1e-5) / images.shape[-1]


class SimMIM(nn.Module):
  """``(images (B, H, W, 3), mask (B, H/p, W/p)) -> {'loss': (), 'reconstruction':
  (B, H, W, 3)}``.

  ``encoder``: a ``SwinTransformer`` with ``use_mask_token=True`` and no head;
  ``encoder_stride``: its total downsampling (32 for Swin). ``mask=None`` (what
  ``model.init(rng, images)`` passes) masks nothing. ``norm_target_patch_size`` (odd; 0:
  off): the target is ``norm_targets(images, size)`` instead of the images (the official
  Swin V2 SimMIM recipe, 47).
  """
  encoder: SwinTransformer
  encoder_stride: int = 32
  norm_target_patch_size: int = 0
  dtype: Dtype = jnp.float32

  def setup(self):
    if not self.encoder.use_mask_token:
      raise ValueError("the SimMIM encoder must be built with use_mask_token=True")
    out = self.encoder_stride**2 * self.encoder.in_chans
    # PyTorch's default Conv2d init (kaiming_uniform a=sqrt(5)): U(+-1/sqrt(fan_in)) for
    # kernel and bias; the official SimMIM leaves its decoder at that default.
    fan_in = self.encoder.num_features
    self.decoder_0 = nn.Conv(
        out, (1, 1), dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=layers.torch_default_bias_init(fan_in))

  def reconstruct(self, images: jnp.ndarray, mask: jnp.ndarray | None = None,
                  train: bool = False) -> jnp.ndarray:
    """``(B, H, W, 3) -> (B, H, W, 3)`` float32 reconstruction of the (masked) images."""
    if mask is None:
      b, h, w, _ = images.shape
      p = self.encoder.patch_size
      mask = jnp.zeros((b, h // p, w // p), jnp.float32)
    z = self.encoder.encode(images, train, mask)
    return pixel_shuffle(self.decoder_0(z), self.encoder_stride).astype(jnp.float32)

  def __call__(self, images: jnp.ndarray, mask: jnp.ndarray | None = None,
               train: bool = False) -> dict[str, jnp.ndarray]:
    reconstruction = self.reconstruct(images, mask, train)
    if mask is None:
      pixel_mask = jnp.zeros(images.shape[:3], jnp.float32)
    else:
      pixel_mask = upsample_mask(mask, self.encoder.patch_size)
    target = images
    if self.norm_target_patch_size:
      target = norm_targets(images, self.norm_target_patch_size)
    return {"loss": masked_l1_loss(target, reconstruction, pixel_mask),
            "reconstruction": reconstruction}
