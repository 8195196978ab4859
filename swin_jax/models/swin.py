"""The Swin Transformer backbone and classifier, V1 and V2 (official numerics), NHWC.

One implementation for both generations; ``version`` selects the V2 variant of three parts:

* the block: V1 pre-norm ``x + DP(attn(LN1(x)))``; V2 res-post-norm ``x + DP(LN1(attn(x)))``
  with LN1/LN2 zero-initialised (every block starts as the identity);
* the attention (``attention.WindowAttention``): V1 scaled dot product + bias table; V2
  cosine attention with a learnt temperature + continuous position bias (CPB MLP), whose
  coordinates are normalised by ``pretrained_window_sizes`` when set;
* PatchMerging: V1 LayerNorm(4C) then reduction; V2 reduction then LayerNorm(2C).

Everything else (patch embedding, window geometry and clamp, cyclic shift, padding, masks,
stages, final norm, head, drop path) is shared.

Param tree mirrors the official PyTorch names (``layers_0/blocks_1/attn/qkv``,
``layers_0/downsample/reduction``, ``patch_embed/proj``, ``norm``, ``head``; V2 adds
``attn/q_bias``, ``attn/v_bias``, ``attn/logit_scale``, ``attn/cpb_mlp_0``,
``attn/cpb_mlp_2``), so that conversion is a key rename plus layout transposes (see
``swin_jax.convert``).

Input sizes: the window clamp of each stage is fixed at construction from ``img_size``
(as in the official code and timm); at run time any size that is a multiple of the patch
size works: feature maps are zero-padded to the window (after the cyclic shift) and odd
maps are padded before a merge, exactly like timm with ``strict_img_size=False``.

``dense_mode=True`` runs the blocks as the official segmentation / detection backbone does
(Swin-Transformer-Semantic-Segmentation, -Object-Detection; mmdet's ``SwinTransformer``):
each block zero-pads its (normed) input to a window multiple *before* the cyclic shift, the
-100 mask is built on that padded grid, the padded tokens take part as keys and values, and
the window is never clamped nor the shift dropped on small maps. Where no padding is needed
and no window is clamped (224, 448) both modes give the same numbers; elsewhere (512) they
differ, so a dense checkpoint must run in dense mode.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import attention
from swin_jax.models import layers
from swin_jax.models import window as window_ops

Dtype = Any
Pair = window_ops.Pair


# ``remat`` settings -> jax.checkpoint policies: what the backward pass may keep from the
# forward instead of recomputing it ("full": nothing but the block's inputs).
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_module(module_cls: type[nn.Module], remat: str,
                 static_argnums: tuple[int, ...]) -> type[nn.Module]:
  """``module_cls`` under ``nn.remat`` with the named policy; unchanged for ``"none"``.

  ``static_argnums`` counts ``self`` as argument 0 (the ``train`` flag must be static).
  """
  if remat == "none":
    return module_cls
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {['none', *REMAT_POLICIES]}, got {remat!r}")
  return nn.remat(module_cls, policy=REMAT_POLICIES[remat], static_argnums=static_argnums)


class SwinTransformerBlock(nn.Module):
  """Block ``(B, H, W, C) -> (B, H, W, C)``: (shifted) window attention, then MLP.

  ``version=1``: pre-norm, ``x + DP(attn(LN1(x)))`` then ``x + DP(MLP(LN2(x)))``.
  ``version=2``: res-post-norm, ``x + DP(LN1(attn(x)))`` then ``x + DP(LN2(MLP(x)))``, with
  LN1/LN2 initialised to zero (scale and bias), as the official ``_init_respostnorm``.
  ``window`` and ``shift`` are already clamped for this stage's resolution;
  ``pretrained_window`` (V2) normalises the continuous position bias' coordinates.
  ``pad_before_shift``: pad to the window, then roll (the official dense backbone);
  otherwise roll, then pad (timm and the classifier). ``position_index`` picks the bias
  table's index (``attention.POSITION_INDEXES``); ``mask_shift=False`` attends across the
  rolled borders unmasked (nnFormer-ACDC's quirk).
  """
  dim: int
  num_heads: int
  window: Pair
  shift: Pair
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  version: int = 1
  pretrained_window: Pair = (0, 0)
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"
  pad_before_shift: bool = False
  position_index: str = "swin"
  mask_shift: bool = True

  def setup(self):
    if self.version == 1:
      norm = layers.LayerNorm
    else:
      norm = functools.partial(layers.LayerNorm, scale_init=nn.initializers.zeros,
                               bias_init=nn.initializers.zeros)
    self.norm1 = norm(dtype=self.dtype)
    self.attn = attention.WindowAttention(
        self.dim, self.num_heads, self.window, qkv_bias=self.qkv_bias,
        attn_drop_rate=self.attn_drop_rate, proj_drop_rate=self.drop_rate,
        version=self.version, pretrained_window=self.pretrained_window, dtype=self.dtype,
        attention_impl=self.attention_impl, position_index=self.position_index)
    self.drop_path = layers.DropPath(self.drop_path_rate)
    self.norm2 = norm(dtype=self.dtype)
    self.mlp = layers.Mlp(int(self.dim * self.mlp_ratio), self.dim, self.drop_rate, self.dtype)

  def window_attention(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """Shift, pad to the window, attend per window, then undo all three. ``(B, H, W, C)``
    (the window ops are rank-generic: ``(B, *S, C)`` with a window per spatial dim)."""
    return window_ops.attend_in_windows(
        x, self.window, self.shift, lambda windows, mask, n: self.attn(windows, mask, n, train),
        self.pad_before_shift, masked=self.mask_shift)

  def __call__(self, x: jnp.ndarray, train: bool = False,
               drop_path_rate: jnp.ndarray | None = None) -> jnp.ndarray:
    """``drop_path_rate`` (a traced scalar inside a scan) overrides the field."""
    def drop_path(y):
      return self.drop_path(y, train, drop_path_rate)

    if self.version == 1:
      x = x + drop_path(self.window_attention(self.norm1(x), train))
      return x + drop_path(self.mlp(self.norm2(x), train))
    x = x + drop_path(self.norm1(self.window_attention(x, train)))
    return x + drop_path(self.norm2(self.mlp(x, train)))


class SwinBlockPair(nn.Module):
  """A W-MSA block then an SW-MSA block (``block0``, ``block1``): the unit that a stage
  scans over with ``scan_blocks``. ``(x, rates (2,), train) -> (x, None)``, where ``rates``
  are the two blocks' stochastic-depth rates."""
  block: functools.partial
  windows: tuple[Pair, Pair]
  shifts: tuple[Pair, Pair]

  @nn.compact
  def __call__(self, x: jnp.ndarray, rates: jnp.ndarray,
               train: bool) -> tuple[jnp.ndarray, None]:
    for j in range(2):
      block = self.block(window=self.windows[j], shift=self.shifts[j], name=f"block{j}")
      x = block(x, train, rates[j])
    return x, None


class SwinStage(nn.Module):
  """Blocks alternating W-MSA / SW-MSA, then an optional PatchMerging.

  ``windows[j]`` / ``shifts[j]`` give block j's (clamped) window and shift;
  ``pretrained_window`` is the stage's V2 pretraining window ((0, 0): none).
  ``scan_blocks``, ``remat``, ``attention_impl``: the performance options of
  ``SwinTransformer`` (same numbers either way). ``pad_before_shift``: the blocks' padding
  order (``SwinTransformer.dense_mode``).
  Returns ``(features, output)``: the blocks' output ``(B, H, W, C)`` (what dense heads use)
  and the merged map ``(B, H/2, W/2, 2C)`` (or the features again for the last stage).
  """
  dim: int
  num_heads: int
  windows: Sequence[Pair]
  shifts: Sequence[Pair]
  drop_path_rates: Sequence[float]
  downsample_dim: int | None = None
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  version: int = 1
  pretrained_window: Pair = (0, 0)
  dtype: Dtype = jnp.float32

  scan_blocks: bool = False
  remat: str = "none"
  attention_impl: str = "explicit"
  pad_before_shift: bool = False
  position_index: str = "swin"
  mask_shift: bool = True

  def setup(self):
    block_kwargs = dict(
        dim=self.dim, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
        qkv_bias=self.qkv_bias, drop_rate=self.drop_rate, attn_drop_rate=self.attn_drop_rate,
        version=self.version, pretrained_window=self.pretrained_window, dtype=self.dtype,
        attention_impl=self.attention_impl, pad_before_shift=self.pad_before_shift)
    if self.scan_blocks:
      self._check_scannable()
      # Params and sown intermediates get a leading (depth // 2) axis; one compiled loop
      # body serves every pair, and XLA cannot fuse across the loop's iterations.
      pair = nn.scan(
          remat_module(SwinBlockPair, self.remat, static_argnums=(3,)),
          variable_axes={"params": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True}, in_axes=(0, nn.broadcast),
          length=len(self.windows) // 2)
      self.block_pairs = pair(
          functools.partial(SwinTransformerBlock, **block_kwargs),
          tuple(self.windows[:2]), tuple(self.shifts[:2]))
    else:
      block = remat_module(SwinTransformerBlock, self.remat, static_argnums=(2,))
      self.blocks = [
          block(window=window, shift=shift, drop_path_rate=float(rate), **block_kwargs)
          for window, shift, rate in zip(self.windows, self.shifts, self.drop_path_rates)
      ]
    if self.downsample_dim is not None:
      self.downsample = layers.PatchMerging(self.downsample_dim, norm_after=self.version == 2,
                                            dtype=self.dtype)

  def _check_scannable(self) -> None:
    depth = len(self.windows)
    if depth % 2:
      raise ValueError(f"scan_blocks scans over (W-MSA, SW-MSA) block pairs and needs an even "
                       f"depth per stage; this stage has {depth} blocks")
    pairs = {(tuple(self.windows[j:j + 2]), tuple(self.shifts[j:j + 2]))
             for j in range(0, depth, 2)}
    if len(pairs) != 1:
      raise ValueError(f"scan_blocks needs every block pair of a stage to share its window "
                       f"geometry, got windows {self.windows} and shifts {self.shifts}")

  def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    if self.scan_blocks:
      rates = jnp.asarray(self.drop_path_rates, jnp.float32).reshape(-1, 2)
      x, _ = self.block_pairs(x, rates, train)
    else:
      for block in self.blocks:
        x = block(x, train)
    if self.downsample_dim is None:
      return x, x
    return x, self.downsample(x)


class SwinTransformer(nn.Module):
  """Swin Transformer: ``images (B, H, W, in_chans) float32 -> logits (B, num_classes)``.

  ``num_classes=0`` returns the pooled, normalised features ``(B, 8C)`` instead.
  ``features()`` returns the four stage outputs for dense heads (see its docstring).

  ``version``: 1 (Swin) or 2 (Swin V2: res-post-norm, cosine attention, continuous position
  bias, PatchMerging with the norm after the reduction; see the module docstring).
  ``pretrained_window_sizes`` (V2 only): per stage, the window size the weights were
  pretrained with (an int or an (h, w) pair; 0 = this model's own clamped window), e.g.
  ``(12, 12, 12, 6)`` for the 192/W12 -> 256/W16 fine-tunes. It only rescales the CPB
  coordinates; all V2 params are independent of the window size.
  """
  img_size: int | Sequence[int] = 224
  patch_size: int = 4
  in_chans: int = 3
  num_classes: int = 1000
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int | Sequence[int] = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.1
  ape: bool = False
  patch_norm: bool = True
  # LayerNorm each stage output in ``features()`` (params ``norm0..norm3``, the official
  # detection/segmentation backbone's names).
  feature_norm: bool = False
  # Run the blocks as the official segmentation/detection backbone: pad before the shift,
  # mask on the padded grid, no window clamp (see the module docstring).
  dense_mode: bool = False
  version: int = 1
  pretrained_window_sizes: Sequence[int | Sequence[int]] = (0, 0, 0, 0)
  dtype: Dtype = jnp.float32
  # Performance switches; neither changes the numerics (see docs in the README).
  # scan_blocks: each stage runs its (W-MSA, SW-MSA) pairs as one nn.scan, so compile time
  # does not grow with depth; params become ``layers_i/block_pairs/block{0,1}/...`` with a
  # leading (depth // 2) axis (``swin_jax.models.scan_layout`` converts both ways).
  scan_blocks: bool = False
  # Rematerialise each block (or pair) in the backward pass: "none", "full", "dots",
  # "dots_no_batch" (see REMAT_POLICIES): less activation memory for more compute.
  remat: str = "none"
  # "explicit" (einsums, probabilities sown for visualisation) or "dot_product"
  # (jax.nn.dot_product_attention: cuDNN's fused kernel on GPU); same numbers.
  attention_impl: str = "explicit"
  # SimMIM: a learnt ``mask_token`` (1, 1, C) that ``embed(..., mask=)`` puts in place of
  # the masked patch embeddings (``swin_jax.models.simmim``).
  use_mask_token: bool = False

  @property
  def patch_grid(self) -> Pair:
    """Token grid after patch embedding at the construction size ``img_size``."""
    h, w = window_ops.to_pair(self.img_size)
    return h // self.patch_size, w // self.patch_size

  def stage_resolutions(self) -> list[Pair]:
    """Construction-time resolution of each stage -> its window clamp.

    Halved with rounding up, because PatchMerging pads odd maps (as timm does).
    """
    gh, gw = self.patch_grid
    return [(-(-gh // 2**i), -(-gw // 2**i)) for i in range(len(self.depths))]

  def block_geometry(self, stage: int, block: int) -> tuple[Pair, Pair]:
    """``(window, shift)`` of a block after the official clamp: odd blocks shift by half.
    In ``dense_mode`` nothing is clamped."""
    return window_ops.block_geometry(self.stage_resolutions()[stage], self.window_size, block,
                                     clamp=not self.dense_mode)

  def pretrained_window(self, stage: int) -> Pair:
    """Stage ``stage``'s V2 pretraining window, ``(0, 0)`` for none."""
    sizes = tuple(self.pretrained_window_sizes)
    if not any(window_ops.to_pair(size) != (0, 0) for size in sizes):
      return (0, 0)  # the all-zero default fits any number of stages
    return window_ops.to_pair(sizes[stage])

  def _check_config(self) -> None:
    num_stages = len(self.depths)
    if len(self.num_heads) != num_stages:
      raise ValueError(f"depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} "
                       "must have one entry per stage")
    if self.version not in (1, 2):
      raise ValueError(f"version must be 1 (Swin) or 2 (Swin V2), got {self.version!r}")
    sizes = tuple(self.pretrained_window_sizes)
    if any(window_ops.to_pair(size) != (0, 0) for size in sizes):
      if self.version != 2:
        raise ValueError(f"pretrained_window_sizes {sizes} is a Swin V2 setting (continuous "
                         f"position bias); this model has version={self.version}")
      if len(sizes) != num_stages:
        raise ValueError(f"pretrained_window_sizes {sizes} must have one entry per stage "
                         f"({num_stages})")

  def setup(self):
    self._check_config()
    num_stages = len(self.depths)
    self.patch_embed = layers.PatchEmbed(self.patch_size, self.embed_dim, self.in_chans,
                                         self.patch_norm, self.dtype)
    if self.ape:
      gh, gw = self.patch_grid
      self.absolute_pos_embed = self.param("absolute_pos_embed", layers.trunc_normal_init,
                                           (1, gh * gw, self.embed_dim), jnp.float32)
    if self.use_mask_token:
      # The official SwinTransformerForSimMIM: zeros then trunc_normal(std .02).
      self.mask_token = self.param("mask_token", layers.trunc_normal_init,
                                   (1, 1, self.embed_dim), jnp.float32)
    self.pos_drop = nn.Dropout(self.drop_rate)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    starts = np.cumsum([0, *self.depths])
    stages = []
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      dim = self.embed_dim * 2**i
      windows, shifts = zip(*(self.block_geometry(i, j) for j in range(depth)))
      stages.append(SwinStage(
          dim, heads, windows, shifts, tuple(rates[starts[i]:starts[i + 1]]),
          downsample_dim=2 * dim if i < num_stages - 1 else None, mlp_ratio=self.mlp_ratio,
          qkv_bias=self.qkv_bias, drop_rate=self.drop_rate,
          attn_drop_rate=self.attn_drop_rate, version=self.version,
          pretrained_window=self.pretrained_window(i), dtype=self.dtype,
          scan_blocks=self.scan_blocks, remat=self.remat,
          attention_impl=self.attention_impl, pad_before_shift=self.dense_mode))
    self.layers = stages
    if self.feature_norm:
      for i in range(num_stages):
        setattr(self, f"norm{i}", layers.LayerNorm(dtype=self.dtype))
    self.norm = layers.LayerNorm(dtype=self.dtype)
    self.head_drop = nn.Dropout(self.drop_rate)
    if self.num_classes > 0:
      self.head = layers.dense(self.num_classes, "head", self.dtype)

  @property
  def num_features(self) -> int:
    return self.embed_dim * 2**(len(self.depths) - 1)

  def embed(self, images: jnp.ndarray, train: bool,
            mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """``(B, H, W, in_chans) -> (B, H/p, W/p, C)`` tokens, position-embedded.

    ``mask (B, H/p, W/p)`` (1 = masked; needs ``use_mask_token``): masked tokens become the
    mask token, after the patch LayerNorm and before the position embedding (SimMIM).
    """
    x = self.patch_embed(images)
    if mask is not None:
      if not self.use_mask_token:
        raise ValueError("a mask needs a model built with use_mask_token=True (SimMIM)")
      if tuple(mask.shape) != tuple(x.shape[:3]):
        raise ValueError(f"mask shape {tuple(mask.shape)} must be the patch grid "
                         f"{tuple(x.shape[:3])} (B, H/{self.patch_size}, W/{self.patch_size})")
      w = mask[..., None].astype(x.dtype)
      x = x * (1.0 - w) + self.mask_token.reshape(1, 1, 1, -1).astype(x.dtype) * w
    if self.ape:
      b, h, w, c = x.shape
      if (h, w) != self.patch_grid:
        raise ValueError(f"absolute position embedding is fixed to img_size {self.img_size}; "
                         f"got an image of {h * self.patch_size}x{w * self.patch_size}")
      x = x + self.absolute_pos_embed.reshape(1, h, w, c).astype(x.dtype)
    return self.pos_drop(x, deterministic=not train)

  def features(self, images: jnp.ndarray, train: bool = False) -> list[jnp.ndarray]:
    """The four stage outputs ``[(B, H/4, W/4, C), ..., (B, H/32, W/32, 8C)]``, NHWC.

    Taken before each stage's PatchMerging (the official dense-task backbone). With
    ``feature_norm=True`` each passes through its own LayerNorm ``norm{i}``.
    Use as ``model.apply(variables, images, method=model.features)``.
    """
    x = self.embed(images, train)
    outputs = []
    for i, stage in enumerate(self.layers):
      feature, x = stage(x, train)
      if self.feature_norm:
        feature = getattr(self, f"norm{i}")(feature)
      outputs.append(feature)
    return outputs

  def encode(self, images: jnp.ndarray, train: bool = False,
             mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Embed (optionally masked, see ``embed``), all stages, final LayerNorm:
    ``(B, H, W, 3) -> (B, H/32, W/32, 8C)`` (SimMIM's encoder output)."""
    x = self.embed(images, train, mask)
    for i, stage in enumerate(self.layers):
      feature, x = stage(x, train)
      if self.feature_norm:
        # Unused here (XLA drops it), but makes model.init create norm0..norm3 as well.
        getattr(self, f"norm{i}")(feature)
    return self.norm(x)

  def pooled_features(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Final LayerNorm, then mean over tokens: ``(B, H, W, 3) -> (B, 8C)``."""
    return self.encode(images, train).mean(axis=(1, 2))

  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = self.pooled_features(images, train)
    if self.num_classes == 0:
      return x.astype(jnp.float32)
    x = self.head_drop(x, deterministic=not train)
    return self.head(x).astype(jnp.float32)
