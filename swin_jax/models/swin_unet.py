"""Swin-Unet (Cao et al. 2021): a U-shaped Swin encoder-decoder for segmentation, NHWC.

``images (B, H, W, 3) -> logits (B, H, W, num_classes)``, the official
``SwinTransformerSys`` (HuCaoFighting/Swin-Unet) with ``final_upsample="expand_first"``:

* encoder: PatchEmbed, four ``SwinStage``s (PatchMerging after stages 0..2), ``norm``;
  the skip of stage i is that stage's *input* (the official ``x_downsample.append(x)``
  runs before the layer);
* decoder ``layers_up``: [0] a bare PatchExpand; i = 1..3: ``concat([x, skip[3 - i]])``,
  ``concat_back_dim_i`` Linear(2C -> C), a stage of ``depths[3 - i]`` Swin blocks
  (``num_heads[3 - i]``, drop-path rates of encoder stage 3 - i), then PatchExpand
  (``upsample``; none after the last stage); ``norm_up``;
* ``up``: FinalPatchExpand_X4 to full resolution, ``output``: a bias-free 1x1 conv.

The Swin blocks, stages, PatchEmbed, PatchMerging and window geometry are those of
``swin.py``; only the expanding path is new. Param names mirror the official keys
(``layers_up_1/blocks_0/attn/qkv``, ``layers_up_1/upsample/expand``, ``concat_back_dim_1``,
``norm_up``, ``up/expand``, ``output``), so conversion is a key rename plus transposes.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from swin_jax.models import layers
from swin_jax.models import window as window_ops
from swin_jax.models.swin import SwinStage

Dtype = Any
Pair = window_ops.Pair


class PatchExpand(nn.Module):
  """``(B, H, W, C) -> (B, sH, sW, out_dim)``: bias-free Linear to ``s*s*out_dim``, then each
  token's channels are laid out as an ``s x s`` patch, then LayerNorm(out_dim).

  The official ``rearrange('b h w (p1 p2 c) -> b (h p1) (w p2) c')``: the channel axis is
  split as (row offset, column offset, channel), channel fastest; PixelShuffle's (c, p1, p2)
  order would give different maps from the same weights. ``scale=2, out_dim=C/2`` is
  PatchExpand, ``scale=4, out_dim=C`` FinalPatchExpand_X4.
  """
  scale: int
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, h, w, _ = x.shape
    s, c = self.scale, self.out_dim
    x = layers.dense(s * s * c, "expand", self.dtype, use_bias=False)(x)
    x = x.reshape(b, h, w, s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c)
    return layers.LayerNorm(dtype=self.dtype, name="norm")(x)


class SwinUpStage(SwinStage):
  """A decoder stage (official ``BasicLayer_up``): the Swin blocks of ``SwinStage``, then an
  optional PatchExpand ``upsample`` to ``(B, 2H, 2W, upsample_dim)``. Returns one map."""
  upsample_dim: int | None = None

  def setup(self):
    super().setup()
    if self.upsample_dim is not None:
      self.upsample = PatchExpand(2, self.upsample_dim, dtype=self.dtype)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    # One map out (SwinStage returns (features, merged)); no downsample here.
    x, _ = super().__call__(x, train)
    if self.upsample_dim is None:
      return x
    return self.upsample(x)


class SwinUnet(nn.Module):
  """Swin-Unet: ``images (B, H, W, in_chans or 1) float32 -> logits (B, H, W, num_classes)``.

  A 1-channel input is repeated to 3 channels (the official ``ViT_seg`` wrapper does it),
  so grayscale scans use the RGB weights. H and W must be multiples of
  ``patch_size * 2**(stages - 1)`` (32 for Swin-Unet-T), so that every skip has the size
  of the expanded map it is concatenated with. Each stage's window clamp is fixed from
  ``img_size`` at construction (the decoder stage at a resolution uses the encoder's
  geometry there), as in the official code.
  """
  img_size: int | Sequence[int] = 224
  patch_size: int = 4
  in_chans: int = 3
  num_classes: int = 9
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 2, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int | Sequence[int] = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.1
  ape: bool = False
  patch_norm: bool = True
  dtype: Dtype = jnp.float32
  # The Swin stages' performance switches (see SwinTransformer); same numbers either way.
  # With scan_blocks, stage params are ``layers_i/block_pairs/...`` and
  # ``layers_up_i/block_pairs/...`` (the converter translates them).
  scan_blocks: bool = False
  remat: str = "none"
  attention_impl: str = "explicit"

  @property
  def num_stages(self) -> int:
    return len(self.depths)

  @property
  def patch_grid(self) -> Pair:
    h, w = window_ops.to_pair(self.img_size)
    return h // self.patch_size, w // self.patch_size

  def stage_resolutions(self) -> list[Pair]:
    """Construction-time token grid of encoder stage i (decoder stage ``stages-1-i``)."""
    gh, gw = self.patch_grid
    return [(gh // 2**i, gw // 2**i) for i in range(self.num_stages)]

  def block_geometry(self, stage: int, block: int) -> tuple[Pair, Pair]:
    """``(window, shift)`` of block ``block`` at encoder stage ``stage``'s resolution: the
    official clamp, as in ``SwinTransformer``; odd blocks shift by half."""
    return window_ops.block_geometry(self.stage_resolutions()[stage], self.window_size, block)

  def _stage_kwargs(self, stage: int, drop_path_rates: Sequence[float]) -> dict[str, Any]:
    """SwinStage fields of the blocks at encoder stage ``stage``'s resolution and width."""
    depth = self.depths[stage]
    windows, shifts = zip(*(self.block_geometry(stage, j) for j in range(depth)))
    return dict(dim=self.embed_dim * 2**stage, num_heads=self.num_heads[stage],
                windows=windows, shifts=shifts,
                drop_path_rates=tuple(drop_path_rates[stage]), mlp_ratio=self.mlp_ratio,
                qkv_bias=self.qkv_bias, drop_rate=self.drop_rate,
                attn_drop_rate=self.attn_drop_rate, dtype=self.dtype,
                scan_blocks=self.scan_blocks, remat=self.remat,
                attention_impl=self.attention_impl)

  def setup(self):
    if len(self.num_heads) != self.num_stages:
      raise ValueError(f"depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} "
                       "must have one entry per stage")
    n = self.num_stages
    self.patch_embed = layers.PatchEmbed(self.patch_size, self.embed_dim, self.in_chans,
                                         self.patch_norm, self.dtype)
    if self.ape:
      gh, gw = self.patch_grid
      self.absolute_pos_embed = self.param("absolute_pos_embed", layers.trunc_normal_init,
                                           (1, gh * gw, self.embed_dim), jnp.float32)
    self.pos_drop = nn.Dropout(self.drop_rate)
    # One linspace over the encoder's blocks; decoder stage i reuses encoder stage n-1-i's.
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    starts = np.cumsum([0, *self.depths])
    stage_rates = [rates[starts[i]:starts[i + 1]] for i in range(n)]
    self.layers = [
        SwinStage(**self._stage_kwargs(i, stage_rates),
                  downsample_dim=2 * self.embed_dim * 2**i if i < n - 1 else None)
        for i in range(n)
    ]
    self.norm = layers.LayerNorm(dtype=self.dtype)
    bottom = n - 1
    layers_up = [PatchExpand(2, self.embed_dim * 2**bottom // 2, dtype=self.dtype)]
    for i in range(1, n):
      stage = n - 1 - i
      dim = self.embed_dim * 2**stage
      layers_up.append(SwinUpStage(**self._stage_kwargs(stage, stage_rates),
                                   upsample_dim=dim // 2 if i < n - 1 else None))
      # Official index 0 is an Identity (no params): names start at 1, like its keys.
      setattr(self, f"concat_back_dim_{i}", layers.dense(dim, None, self.dtype))
    self.layers_up = layers_up
    self.norm_up = layers.LayerNorm(dtype=self.dtype)
    self.up = PatchExpand(self.patch_size, self.embed_dim, dtype=self.dtype)
    # PyTorch's default conv init (the official _init_weights leaves convs alone).
    self.output = nn.Conv(self.num_classes, (1, 1), use_bias=False, dtype=self.dtype,
                          param_dtype=jnp.float32,
                          kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                                       "uniform"))

  def _check_input(self, images: jnp.ndarray) -> jnp.ndarray:
    """Repeats a grayscale batch to ``in_chans`` channels; raises on sizes that cannot work."""
    if images.ndim == 4 and images.shape[-1] == 1 and self.in_chans != 1:
      images = jnp.repeat(images, self.in_chans, axis=-1)
    layers.check_image_shape(images.shape, self.patch_size, self.in_chans)
    multiple = self.patch_size * 2**(self.num_stages - 1)
    for axis, size in (("height", images.shape[1]), ("width", images.shape[2])):
      if size % multiple:
        raise ValueError(f"image {axis} {size} is not a multiple of {multiple} (patch size "
                         f"{self.patch_size} x 2^{self.num_stages - 1} merges): Swin-Unet's "
                         "skips must match the expanded maps")
    return images

  def encode(self, images: jnp.ndarray, train: bool = False
             ) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
    """``(B, H, W, 3) -> ((B, H/32, W/32, 8C) normed bottleneck, skips)``; skip i is encoder
    stage i's input ``(B, H/2^(i+2), W/2^(i+2), 2^i C)``."""
    x = self.patch_embed(self._check_input(images))
    if self.ape:
      b, h, w, c = x.shape
      if (h, w) != self.patch_grid:
        raise ValueError(f"absolute position embedding is fixed to img_size {self.img_size}; "
                         f"got an image of {h * self.patch_size}x{w * self.patch_size}")
      x = x + self.absolute_pos_embed.reshape(1, h, w, c).astype(x.dtype)
    x = self.pos_drop(x, deterministic=not train)
    skips = []
    for stage in self.layers:
      skips.append(x)
      _, x = stage(x, train)
    return self.norm(x), skips

  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x, skips = self.encode(images, train)
    n = self.num_stages
    for i, layer_up in enumerate(self.layers_up):
      if i == 0:
        x = layer_up(x)
        continue
      x = jnp.concatenate([x, skips[n - 1 - i].astype(x.dtype)], axis=-1)
      x = getattr(self, f"concat_back_dim_{i}")(x)
      x = layer_up(x, train)
    x = self.up(self.norm_up(x))
    return self.output(x).astype(jnp.float32)
