"""nnFormer (Zhou et al. 2021): a 3D Swin-style encoder-decoder for volumetric segmentation.

``volumes (B, D, H, W, C_in) -> logits (B, D, H, W, num_classes)``, channels last: the
official ``nnFormer_synapse``, ``nnFormer_acdc`` and ``nnFormer_tumor`` (282857341/nnFormer),
selected by ``variant``:

* ``model_down`` (the official ``Encoder``): ``patch_embed`` = two ``project`` blocks
  (Conv3d k3 -> GELU -> LN -> Conv3d k3 [-> GELU -> LN]) and a LayerNorm; four stages of
  Swin blocks in 3D windows (LV-MSA; GV-MSA where one window covers the stage), each but the
  last followed by a ``downsample`` (GELU -> LN -> strided Conv3d to twice the width); the
  output of stage i (before its downsample) through ``norm{i}`` is skip i;
* ``decoder``: three stages from the deepest up; each ``Upsample`` (LN -> ConvTranspose3d to
  half the width) the map, adds the skip, runs a skip-attention block (K, V from the normed
  skip, Q the normed upsampled map itself), then shifted Swin blocks;
* ``final_{i}``: ConvTranspose3d heads (kernel = stride = patch size) on the decoder output
  at stage i's resolution: with ``deep_supervision`` three, and ``model.apply(..., train=True)``
  returns ``[full, 1/2, 1/4]`` resolution logits (the official order); otherwise, and in
  evaluation, ``final_0`` on the last decoder output (equal to the deep-supervision output 0).

The official quirks are kept, each where it acts (see ``plan`` and ``SkipWindowAttention``):
nnFormer's colliding relative-position index; ACDC's shifted windows without a mask; the
Tumor decoder's doubled heads. The network is built for one input shape, ``crop_size`` (the
official blocks fix their resolution at construction); whole volumes go through sliding
windows of that size.

Param names mirror the official keys (``model_down/layers_0/blocks_1/attn/qkv``,
``decoder/layers_0/Upsample/up``, ``decoder/layers_0/blocks_0/attn/kv``, ``final_0/up``), so
conversion is a key rename plus layout transposes (``swin_jax.convert.nnformer``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from swin_jax.models import attention
from swin_jax.models import layers
from swin_jax.models import window as window_ops
from swin_jax.models.swin import SwinTransformerBlock

Dtype = Any
Sizes = window_ops.Sizes

VARIANTS = ("synapse", "acdc", "tumor")
NUM_STAGES = 4
# torch's default init for convs and transposed convs: uniform(+-1/sqrt(fan_in)) for the
# weight (kaiming_uniform with a = sqrt(5)) and the bias.
_TORCH_DEFAULT_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
  """One official conv's kernel, stride and padding (per spatial dimension)."""
  kernel: Sizes
  stride: Sizes
  padding: Sizes = (0, 0, 0)

  def output_size(self, size: Sizes) -> Sizes:
    return tuple((n + 2 * p - k) // s + 1
                 for n, k, s, p in zip(size, self.kernel, self.stride, self.padding))


@dataclasses.dataclass(frozen=True)
class BlockGeometry:
  """A block's (clamped) window and shift, and whether its shifted windows are masked."""
  window: Sizes
  shift: Sizes
  masked: bool


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about an nnFormer, derived from its fields (``plan(model)``).

  Per encoder stage i (0..3): ``resolutions[i]``, ``encoder_blocks[i]`` (one geometry per
  block), ``encoder_rates[i]``; per stage i < 3: ``merges[i]`` (the conv after stage i) and
  the decoder stage that lands on stage i: ``expands[i]`` (its ConvTranspose3d, kernel =
  stride, and output padding), ``decoder_heads[i]``, ``decoder_blocks[i]``,
  ``decoder_rates[i]``.
  """
  embed_strides: tuple[Sizes, Sizes]
  resolutions: tuple[Sizes, ...]
  encoder_blocks: tuple[tuple[BlockGeometry, ...], ...]
  encoder_rates: tuple[tuple[float, ...], ...]
  merges: tuple[ConvGeometry, ...]
  expands: tuple[tuple[Sizes, Sizes], ...]
  decoder_heads: tuple[int, ...]
  decoder_blocks: tuple[tuple[BlockGeometry, ...], ...]
  decoder_rates: tuple[tuple[float, ...], ...]


def _embed_strides(variant: str, patch: Sizes) -> tuple[Sizes, Sizes]:
  """The two ``project`` blocks' first-conv strides (their product is the patch size)."""
  half = tuple(p // 2 for p in patch)
  if variant == "synapse":
    return (patch[0], *half[1:]), half
  if variant == "tumor":
    return half, half
  return (1, *half[1:]), (1, *half[1:])   # ACDC: its depth axis is never strided here


def _merges(variant: str) -> tuple[ConvGeometry, ...]:
  """The downsample conv after stages 0, 1, 2 (ACDC: the official ``tag`` 0, 1, 2)."""
  cube = ConvGeometry((3, 3, 3), (2, 2, 2), (1, 1, 1))
  if variant != "acdc":
    return (cube,) * 3
  return (ConvGeometry((1, 3, 3), (1, 2, 2), (0, 1, 1)), cube,
          ConvGeometry((3, 3, 3), (2, 2, 2), (0, 1, 1)))


def _expands(variant: str) -> tuple[tuple[Sizes, Sizes], ...]:
  """``(kernel = stride, output padding)`` of the ConvTranspose3d landing on stage 0, 1, 2."""
  if variant != "acdc":
    return (((2, 2, 2), (0, 0, 0)),) * 3
  # ACDC's depth 14 -> 7 -> 3 comes back as 3 -> 7 (one extra plane) -> 14 -> 14.
  return (((1, 2, 2), (0, 0, 0)), ((2, 2, 2), (0, 0, 0)), ((2, 2, 2), (1, 0, 0)))


def _block_geometry(variant: str, resolution: Sizes, window: int | Sequence[int],
                    shifted: bool) -> BlockGeometry:
  """One block's window and shift, by the variant's official rule."""
  if variant == "acdc":
    # Per-axis windows; no shift where one window is the whole stage, and a shifted block
    # attends across the rolled borders unmasked (the official ACDC model passes no mask).
    window = window_ops.to_sizes(window, 3)
    if not shifted or tuple(resolution) == window:
      return BlockGeometry(window, (0, 0, 0), masked=False)
    return BlockGeometry(window, tuple(w // 2 for w in window), masked=False)
  if not isinstance(window, (int, np.integer)):
    raise ValueError(f"nnFormer-{variant} windows are cubes (one int per stage), got {window}")
  # Synapse / Tumor: a stage no larger than the window (on its smallest axis) gets one cube
  # window of that side, unshifted (GV-MSA); the mask is built from the unclamped window.
  if min(resolution) <= window:
    return BlockGeometry((min(resolution),) * 3, (0, 0, 0), masked=True)
  return BlockGeometry((int(window),) * 3, ((window // 2,) * 3 if shifted else (0, 0, 0)),
                       masked=True)


def _rates(rate: float, depths: Sequence[int]) -> list[tuple[float, ...]]:
  """The official ``linspace(0, rate, sum(depths))`` split by stage."""
  dpr = np.linspace(0.0, rate, sum(depths)).tolist() if sum(depths) > 1 else [0.0]
  starts = np.cumsum([0, *depths])
  return [tuple(float(r) for r in dpr[a:b]) for a, b in zip(starts[:-1], starts[1:])]


def plan(model: "NnFormer") -> Plan:
  """The static geometry of ``model``; raises a ValueError naming what does not fit."""
  variant = model.variant
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  for name in ("depths", "num_heads", "window_size"):
    if len(getattr(model, name)) != NUM_STAGES:
      raise ValueError(f"nnFormer has {NUM_STAGES} stages: {name} needs {NUM_STAGES} entries, "
                       f"got {getattr(model, name)}")
  crop, patch = tuple(model.crop_size), tuple(model.patch_size)
  if len(crop) != 3 or len(patch) != 3:
    raise ValueError(f"crop_size and patch_size are (D, H, W); got {crop} and {patch}")
  if any(c % p for c, p in zip(crop, patch)):
    raise ValueError(f"crop_size {crop} must be a multiple of patch_size {patch}")
  strides = _embed_strides(variant, patch)
  size = crop
  for stride in strides:
    size = ConvGeometry((3, 3, 3), stride, (1, 1, 1)).output_size(size)
  merges = _merges(variant)
  resolutions = [size]
  for merge in merges:
    resolutions.append(merge.output_size(resolutions[-1]))
  expands = _expands(variant)
  for i, (kernel, extra) in enumerate(expands):
    up = tuple(r * k + e for r, k, e in zip(resolutions[i + 1], kernel, extra))
    if up != resolutions[i]:
      raise ValueError(f"crop_size {crop}: stage {i + 1} ({resolutions[i + 1]}) does not "
                       f"upsample back to stage {i} ({resolutions[i]}); choose a crop whose "
                       f"stage sizes halve exactly")
  if min(min(r) for r in resolutions) < 1:
    raise ValueError(f"crop_size {crop} is too small for {NUM_STAGES} stages: {resolutions}")
  heads = tuple(model.num_heads)
  # The official decoders take num_heads[::-1][1:]: the encoder's heads at each resolution;
  # the Tumor one takes num_heads[::-1][:-1], twice those (a quirk kept for its weights).
  decoder_heads = heads[1:] if variant == "tumor" else heads[:-1]
  windows, depths = tuple(model.window_size), tuple(model.depths)
  encoder_blocks = tuple(
      tuple(_block_geometry(variant, resolutions[i], windows[i], shifted=j % 2 == 1)
            for j in range(depths[i])) for i in range(NUM_STAGES))
  # Decoder stage i: a skip-attention block (never shifted), then blocks all shifted.
  decoder_blocks = tuple(
      tuple(_block_geometry(variant, resolutions[i], windows[i], shifted=j > 0)
            for j in range(depths[i])) for i in range(NUM_STAGES - 1))
  # The decoder's rates run over its stages deepest first (the official i_layer order).
  decoder_rates = _rates(model.drop_path_rate, depths[:-1][::-1])[::-1]
  return Plan(strides, tuple(resolutions), encoder_blocks,
              tuple(_rates(model.drop_path_rate, depths)), merges, expands, decoder_heads,
              decoder_blocks, tuple(decoder_rates))


def conv3d(features: int, geometry: ConvGeometry, in_features: int, name: str,
           dtype: Dtype) -> nn.Conv:
  """A Conv3d with torch's default init and float32 params."""
  fan_in = in_features * math.prod(geometry.kernel)
  return nn.Conv(features, geometry.kernel, strides=geometry.stride,
                 padding=[(p, p) for p in geometry.padding], dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=_TORCH_DEFAULT_KERNEL,
                 bias_init=layers.torch_default_bias_init(fan_in), name=name)


class PatchConvTranspose(nn.Module):
  """``ConvTranspose3d`` with kernel = stride (non-overlapping): ``(B, D, H, W, C) ->
  (B, k0 D + e0, k1 H + e1, k2 W + e2, features)``, each voxel spread over a ``k`` block,
  then ``output_padding`` ``e`` planes at the far ends that get only the bias (torch's).

  ``kernel`` param ``(k0, k1, k2, C, features)`` (torch: ``(C, features, k0, k1, k2)``).
  With kernel = stride no two voxels overlap, so this is one matmul and a reshape (no
  flipped kernel, unlike ``lax.conv_transpose``'s convention).
  """
  features: int
  kernel_size: Sizes
  output_padding: Sizes = (0, 0, 0)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, d, h, w, c = x.shape
    k0, k1, k2 = self.kernel_size
    # torch computes a transposed conv's fan-in from its weight's dim 1: the output channels.
    init = layers.torch_default_bias_init(self.features * k0 * k1 * k2)
    kernel = self.param("kernel", init, (k0, k1, k2, c, self.features), jnp.float32)
    bias = self.param("bias", init, (self.features,), jnp.float32)
    y = jnp.einsum("bdhwc,xyzco->bdxhywzo", x.astype(self.dtype), kernel.astype(self.dtype))
    y = y.reshape(b, d * k0, h * k1, w * k2, self.features)
    y = window_ops.pad_bottom_right(y, *self.output_padding)
    return y + bias.astype(self.dtype)


class FinalPatchExpanding(nn.Module):
  """The official ``final_patch_expanding`` head: ``up``, a ConvTranspose3d with kernel =
  stride = the patch size, to the classes. ``(B, D/p0, H/p1, W/p2, C) -> (B, D, H, W, K)``."""
  num_classes: int
  patch_size: Sizes
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return PatchConvTranspose(self.num_classes, self.patch_size, dtype=self.dtype,
                              name="up")(x)


class Project(nn.Module):
  """The official embedding block ``project``: ``conv1`` (k3, ``stride``, pad 1) -> GELU ->
  ``norm1`` -> ``conv2`` (k3, stride 1, pad 1), then GELU -> ``norm2`` unless ``last``."""
  features: int
  stride: Sizes
  last: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = conv3d(self.features, ConvGeometry((3, 3, 3), self.stride, (1, 1, 1)), x.shape[-1],
               "conv1", self.dtype)(x)
    x = layers.LayerNorm(dtype=self.dtype, name="norm1")(layers.gelu(x))
    x = conv3d(self.features, ConvGeometry((3, 3, 3), (1, 1, 1), (1, 1, 1)), self.features,
               "conv2", self.dtype)(x)
    if self.last:
      return x
    return layers.LayerNorm(dtype=self.dtype, name="norm2")(layers.gelu(x))


class PatchEmbed3d(nn.Module):
  """``(B, D, H, W, C_in) -> (B, D/p0, H/p1, W/p2, embed_dim)``: ``proj1`` (to half the
  width), ``proj2`` (last, no norm after its second conv), then ``norm``."""
  embed_dim: int
  strides: tuple[Sizes, Sizes]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = Project(self.embed_dim // 2, self.strides[0], dtype=self.dtype, name="proj1")(x)
    x = Project(self.embed_dim, self.strides[1], last=True, dtype=self.dtype, name="proj2")(x)
    return layers.LayerNorm(dtype=self.dtype, name="norm")(x)


class ConvMerge(nn.Module):
  """The official ``PatchMerging`` of nnFormer: GELU -> LN (``norm``) -> strided Conv3d
  (``reduction``) to ``out_dim``. ``(B, D, H, W, C) -> (B, D', H', W', out_dim)``."""
  out_dim: int
  geometry: ConvGeometry
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = layers.LayerNorm(dtype=self.dtype, name="norm")(layers.gelu(x))
    return conv3d(self.out_dim, self.geometry, x.shape[-1], "reduction", self.dtype)(x)


class PatchExpanding(nn.Module):
  """The official ``Patch_Expanding``: LN (``norm``) -> ConvTranspose3d (``up``) to half the
  width. ``(B, D, H, W, C) -> (B, k0 D + e0, k1 H, k2 W, C / 2)``."""
  kernel_size: Sizes
  output_padding: Sizes = (0, 0, 0)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = layers.LayerNorm(dtype=self.dtype, name="norm")(x)
    return PatchConvTranspose(x.shape[-1] // 2, self.kernel_size, self.output_padding,
                              self.dtype, name="up")(x)


class SkipWindowAttention(attention.WindowAttention):
  """nnFormer's skip attention (official ``WindowAttention_kv``): windows of
  ``[skip | query]`` ``(B*nW, N, 2C)`` -> ``(B*nW, N, C)``.

  K and V are ``kv`` (Linear C -> 2C) of the skip; the queries are the (normed) upsampled
  tokens themselves, with no projection (the official design). Then the V1 attention of
  ``WindowAttention``: ``q / sqrt(head_dim) @ k^T`` + bias table, softmax, ``proj``.
  """

  def _qkv(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1] // 2
    skip, query = x[..., :c], x[..., c:]
    kv = layers.dense(2 * c, "kv", self.dtype, use_bias=self.qkv_bias)(skip)
    return jnp.concatenate([query.astype(kv.dtype), kv], axis=-1)


class SkipAttentionBlock(nn.Module):
  """The first block of a decoder stage (official ``SwinTransformerBlock_kv``):
  ``x = x_up + skip``; ``x + DP(attn(K, V from norm1(skip); Q = norm1(x_up)))``, then
  ``x + DP(MLP(norm2(x)))``. Unshifted windows; ``(B, D, H, W, C)`` each."""
  dim: int
  num_heads: int
  window: Sizes
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"

  def setup(self):
    self.norm1 = layers.LayerNorm(dtype=self.dtype)
    self.attn = SkipWindowAttention(self.dim, self.num_heads, self.window, dtype=self.dtype,
                                    attention_impl=self.attention_impl,
                                    position_index="nnformer")
    self.drop_path = layers.DropPath(self.drop_path_rate)
    self.norm2 = layers.LayerNorm(dtype=self.dtype)
    self.mlp = layers.Mlp(int(self.dim * self.mlp_ratio), self.dim, 0.0, self.dtype)

  def __call__(self, x: jnp.ndarray, skip: jnp.ndarray, x_up: jnp.ndarray,
               train: bool) -> jnp.ndarray:
    both = jnp.concatenate([self.norm1(skip), self.norm1(x_up)], axis=-1)
    attended = window_ops.attend_in_windows(
        both, self.window, (0, 0, 0), lambda windows, mask, n: self.attn(windows, mask, n, train),
        pad_before_shift=True)
    x = x + self.drop_path(attended, train)
    return x + self.drop_path(self.mlp(self.norm2(x), train), train)


def _swin_block(dim: int, heads: int, geometry: BlockGeometry, rate: float, mlp_ratio: float,
                dtype: Dtype, attention_impl: str, name: str) -> SwinTransformerBlock:
  """A Swin block as nnFormer runs it: pad, then roll; its index; its masking."""
  return SwinTransformerBlock(dim, heads, geometry.window, geometry.shift, mlp_ratio=mlp_ratio,
                              drop_path_rate=rate, dtype=dtype, attention_impl=attention_impl,
                              pad_before_shift=True, position_index="nnformer",
                              mask_shift=geometry.masked, name=name)


class EncoderStage(nn.Module):
  """The official ``BasicLayer``: Swin blocks (``blocks_{j}``), then the ``downsample``
  (none after the last stage). ``(B, *S, C) -> (features (B, *S, C), merged or None)``."""
  dim: int
  num_heads: int
  blocks: tuple[BlockGeometry, ...]
  rates: tuple[float, ...]
  merge: ConvGeometry | None
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    for j, (geometry, rate) in enumerate(zip(self.blocks, self.rates)):
      x = _swin_block(self.dim, self.num_heads, geometry, rate, self.mlp_ratio, self.dtype,
                      self.attention_impl, f"blocks_{j}")(x, train)
    if self.merge is None:
      return x, None
    return x, ConvMerge(2 * self.dim, self.merge, self.dtype, name="downsample")(x)


class DecoderStage(nn.Module):
  """The official ``BasicLayer_up``: ``Upsample`` the deeper map, add the skip, a
  ``SkipAttentionBlock`` (``blocks_0``), then shifted Swin blocks.
  ``(B, *S', 2C), skip (B, *S, C) -> (B, *S, C)``."""
  dim: int
  num_heads: int
  blocks: tuple[BlockGeometry, ...]
  rates: tuple[float, ...]
  expand: tuple[Sizes, Sizes]
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"

  @nn.compact
  def __call__(self, x: jnp.ndarray, skip: jnp.ndarray, train: bool) -> jnp.ndarray:
    kernel, output_padding = self.expand
    x_up = PatchExpanding(kernel, output_padding, self.dtype, name="Upsample")(x)
    x = x_up + skip
    x = SkipAttentionBlock(self.dim, self.num_heads, self.blocks[0].window, self.mlp_ratio,
                           self.rates[0], self.dtype, self.attention_impl,
                           name="blocks_0")(x, skip, x_up, train)
    for j in range(1, len(self.blocks)):
      x = _swin_block(self.dim, self.num_heads, self.blocks[j], self.rates[j], self.mlp_ratio,
                      self.dtype, self.attention_impl, f"blocks_{j}")(x, train)
    return x


class Encoder(nn.Module):
  """``model_down``: ``(B, D, H, W, C_in)`` -> the four normed stage outputs
  ``(B, *plan.resolutions[i], embed_dim * 2**i)`` (the skips; the last is the neck)."""
  plan: Plan
  embed_dim: int
  num_heads: tuple[int, ...]
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> list[jnp.ndarray]:
    x = PatchEmbed3d(self.embed_dim, self.plan.embed_strides, self.dtype, name="patch_embed")(x)
    outputs = []
    for i in range(NUM_STAGES):
      merge = self.plan.merges[i] if i < NUM_STAGES - 1 else None
      features, x = EncoderStage(
          self.embed_dim * 2**i, self.num_heads[i], self.plan.encoder_blocks[i],
          self.plan.encoder_rates[i], merge, self.mlp_ratio, self.dtype, self.attention_impl,
          name=f"layers_{i}")(x, train)
      outputs.append(layers.LayerNorm(dtype=self.dtype, name=f"norm{i}")(features))
    return outputs


class Decoder(nn.Module):
  """``decoder``: the neck and skips -> the decoder outputs at stages 2, 1, 0 (deepest
  first, the official ``outs`` order). Decoder stage ``layers_{i}`` lands on encoder stage
  ``i`` and runs after ``layers_{i+1}``."""
  plan: Plan
  embed_dim: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"

  @nn.compact
  def __call__(self, skips: list[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
    x, outputs = skips[-1], []
    for i in reversed(range(NUM_STAGES - 1)):
      x = DecoderStage(self.embed_dim * 2**i, self.plan.decoder_heads[i],
                       self.plan.decoder_blocks[i], self.plan.decoder_rates[i],
                       self.plan.expands[i], self.mlp_ratio, self.dtype, self.attention_impl,
                       name=f"layers_{i}")(x, skips[i], train)
      outputs.append(x)
    return outputs


class NnFormer(nn.Module):
  """nnFormer ``(B, D, H, W, in_channels) -> (B, D, H, W, num_classes)`` (module docstring).

  Fields mirror the official constructor: ``variant`` (``'synapse'``, ``'acdc'``,
  ``'tumor'``: the structural differences of the three official files), ``crop_size`` (the
  one input shape), ``embed_dim``, ``depths``, ``num_heads``, ``patch_size``, ``window_size``
  (per stage: an int for Synapse/Tumor, a ``(d, h, w)`` for ACDC), ``deep_supervision``.
  Stochastic depth: the official 0.2 by default, ``linspace`` over the encoder's blocks and,
  separately, the decoder's.
  """
  variant: str = "synapse"
  crop_size: Sizes = (64, 128, 128)
  in_channels: int = 1
  num_classes: int = 14
  embed_dim: int = 192
  depths: Sizes = (2, 2, 2, 2)
  num_heads: Sizes = (6, 12, 24, 48)
  patch_size: Sizes = (2, 4, 4)
  window_size: tuple = (4, 4, 8, 4)
  deep_supervision: bool = True
  drop_path_rate: float = 0.2
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  attention_impl: str = "explicit"

  def check_input(self, shape: tuple[int, ...]) -> None:
    """A ValueError that says what is wrong with a batch of this ``shape``."""
    expected = (*self.crop_size, self.in_channels)
    if len(shape) != 5 or tuple(shape[1:]) != tuple(expected):
      raise ValueError(f"nnFormer-{self.variant} is built for volumes of shape (B, "
                       f"{', '.join(map(str, expected))}) (B, D, H, W, C), got {tuple(shape)}; "
                       "run whole volumes through sliding windows of crop_size")

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray | list[jnp.ndarray]:
    """Logits ``(B, D, H, W, num_classes)``; with ``train`` and ``deep_supervision`` the list
    at full, 1/2 and 1/4 of the stage-0 resolution's upsampling (highest first)."""
    self.check_input(x.shape)
    geometry = plan(self)
    skips = Encoder(geometry, self.embed_dim, tuple(self.num_heads), self.mlp_ratio,
                    self.dtype, self.attention_impl, name="model_down")(
                        x.astype(self.dtype), train)
    outputs = Decoder(geometry, self.embed_dim, self.mlp_ratio, self.dtype,
                      self.attention_impl, name="decoder")(skips, train)
    patch = tuple(self.patch_size)

    def head(i: int, features: jnp.ndarray) -> jnp.ndarray:
      return FinalPatchExpanding(self.num_classes, patch, self.dtype, name=f"final_{i}")(
          features)

    if not self.deep_supervision:
      return head(0, outputs[-1])
    # outputs are deepest first; final_i reads the decoder output at stage i. All three are
    # built at init so that a deep-supervision model has every official param.
    if train or self.is_initializing():
      logits = [head(i, outputs[NUM_STAGES - 2 - i]) for i in range(NUM_STAGES - 1)]
      return logits if train else logits[0]
    return head(0, outputs[-1])
