"""The PyTorch nnFormer reference: the official 3D networks (Synapse, ACDC, Tumor) rebuilt.

    model = torch_nnformer.build("synapse")       # the official Synapse network (150,054,210)
    small = torch_nnformer.build("synapse", crop_size=(32, 64, 64), embedding_dim=24,
                                 num_heads=(1, 2, 2, 4), num_classes=3)
    outs = small(volumes)       # (B, C_in, D, H, W) -> [full, 1/2, 1/4] logits (DS)
    small.do_ds = False         # what the official trainers set for inference
    logits = small(volumes)     # (B, K, D, H, W)
    loss = official_loss(outs, labels)   # nnU-Net's Dice + CE over the DS outputs

282857341/nnFormer is not installable as a package, so this rebuilds
``nnformer/network_architecture/nnFormer_{synapse,acdc,tumor}.py`` module by module, with
the official module tree: the state dict has the official keys (the
``relative_position_index`` buffers included) and the numerics are the official ones,
quirks included (each is marked ``Quirk`` below):

- the relative-position index strides depth by ``3*Wh-1`` and height by ``2*Wh-1``, so
  offsets collide (115 of the 343 rows of a 4x4x4 window's table are read);
- Synapse/Tumor blocks with ``min(resolution) <= window`` take ``window = min(resolution)``
  and no shift; ACDC only drops the shift where the resolution equals the window;
- ACDC rolls the shifted windows without a mask (attention wraps around, padded tokens
  included) and rolls only where all three shifts are positive; Synapse/Tumor masks are
  built per stage from the stage's (unclamped) window;
- merging is GELU -> LayerNorm -> Conv3d, upsampling LayerNorm -> ConvTranspose3d; ACDC
  picks per-stage kernels (and an ``output_padding`` in depth) from the stage index;
- the first decoder block attends from ``Q = norm1(x_up)`` (no query projection) to
  ``K, V = kv(norm1(skip))`` and its residual is ``x_up + skip``;
- the Tumor decoder takes ``num_heads[::-1][:-1]`` (twice the encoder's heads at each
  resolution), Synapse/ACDC ``num_heads[::-1][1:]``;
- deep supervision returns the highest resolution first; without it ``final[0]`` runs on
  the last decoder output.

Stochastic depth is timm's ``DropPath`` with the official rates: the encoder and the decoder
each take ``linspace(0, 0.2, sum(their depths))``, sliced by the official ``i_layer``.
Activations are token rows ``(B, S*H*W, C)`` between stages, as in the official code.

torch and timm (the ``oracle`` extra) are imported on the first call, not at import time.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Sequence

from swin_jax.oracles import import_oracle_modules

# The official constructor arguments of each variant, as its trainer passes them.
# Architecture fields: nnformer/training/network_training/nnFormerTrainerV2_nnformer_
# {synapse,acdc,tumor}.py (embedding_dim, depths, num_heads, embedding_patch_size,
# window_size, down_stride, deep_supervision). crop_size: the patch_size that
# nnformer/run/default_configuration.py writes into each task's plans (Task001_ACDC
# 14x160x160, Task002_Synapse 64x128x128, Task003_tumor 128^3). input_channels /
# num_classes: the trainers read plans['num_modalities'] and plans['num_classes'] + 1, i.e.
# the datasets: Synapse CT, 13 organs + background; ACDC cine MRI, RV/MYO/LV + background;
# Tumor (MSD BraTS) FLAIR/T1w/T1gd/T2w, edema/non-enhancing/enhancing + background.
OFFICIAL: dict[str, dict[str, Any]] = {
    "synapse": dict(crop_size=(64, 128, 128), embedding_dim=192, input_channels=1,
                    num_classes=14, depths=(2, 2, 2, 2), num_heads=(6, 12, 24, 48),
                    patch_size=(2, 4, 4), window_size=(4, 4, 8, 4), deep_supervision=True),
    "acdc": dict(crop_size=(14, 160, 160), embedding_dim=96, input_channels=1, num_classes=4,
                 depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), patch_size=(1, 4, 4),
                 window_size=((3, 5, 5), (3, 5, 5), (7, 10, 10), (3, 5, 5)),
                 down_stride=((1, 4, 4), (1, 8, 8), (2, 16, 16), (4, 32, 32)),
                 deep_supervision=False),
    "tumor": dict(crop_size=(128, 128, 128), embedding_dim=96, input_channels=4, num_classes=4,
                  depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), patch_size=(4, 4, 4),
                  window_size=(4, 4, 8, 4), deep_supervision=False),
}
# Not a constructor argument of the official nnFormer: its Encoder/Decoder default, which
# the official code never overrides. Settable here (e.g. 0 for train-mode parity checks).
DROP_PATH_RATE = 0.2
MASK_VALUE = -100.0  # the official shifted-window mask

# ACDC's merge convs by encoder stage (kernel, stride, padding), the official tags 0/1/2:
# stage 0 keeps the depth, stage 1 halves it with padding, stage 2 halves it without depth
# padding (7 -> 3 at the official crop).
_ACDC_MERGE = {0: ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
               1: ((3, 3, 3), (2, 2, 2), (1, 1, 1)),
               2: ((3, 3, 3), (2, 2, 2), (0, 1, 1))}
# ACDC's expanding transposed convs by the official decoder i_layer (kernel=stride,
# output_padding), inverting the merges: 3 -> 7 needs one extra depth row.
_ACDC_EXPAND = {1: ((2, 2, 2), (0, 0, 0)), 0: ((2, 2, 2), (1, 0, 0))}
_ACDC_EXPAND_DEFAULT = ((1, 2, 2), (0, 0, 0))


def _torch() -> tuple[Any, Any]:
  """``(torch, timm.layers)``, or an ImportError naming the extra."""
  return import_oracle_modules("the PyTorch nnFormer reference", "torch", "timm.layers")


def _triple(v: Any) -> tuple[int, int, int]:
  return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * 3


def block_geometry(variant: str, resolution: Sequence[int], window: Any,
                   shifted: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """One block's ``(window, shift)`` 3-tuples from its stage's window and resolution.

  ``window``: the stage's window (an int for Synapse/Tumor, a 3-tuple for ACDC).
  """
  if variant == "acdc":
    window = _triple(window)
    shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0)
    if tuple(resolution) == window:  # Quirk: only an exact fit drops the shift; no clamping
      shift = (0, 0, 0)
    return window, shift
  w = int(window)
  s = w // 2 if shifted else 0
  if min(resolution) <= w:  # Quirk: clamp to the smallest side (not per axis), no shift
    w, s = min(resolution), 0
  return (w,) * 3, (s,) * 3


def stage_resolutions(variant: str, config: dict[str, Any]) -> list[tuple[int, int, int]]:
  """The resolution the official code assigns to each encoder stage (and the decoder stage
  at the same scale): ``crop // patch // 2**i``, or ACDC's ``crop // down_stride[i]``."""
  crop, n = _triple(config["crop_size"]), len(config["depths"])
  if variant == "acdc":
    return [tuple(c // d for c, d in zip(crop, _triple(config["down_stride"][i])))
            for i in range(n)]
  patch = _triple(config["patch_size"])
  return [tuple(c // p // 2**i for c, p in zip(crop, patch)) for i in range(n)]


def _drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
  """The official ``dpr``: ``torch.linspace(0, rate, sum(depths))`` sliced by stage index."""
  torch, _ = _torch()
  # An explicit CPU device: the values are needed even when building under device('meta').
  dpr = torch.linspace(0, rate, sum(depths), device="cpu").tolist()
  return [dpr[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]


@functools.cache
def _modules() -> types.SimpleNamespace:
  """The reference's module classes (defined on first use: they subclass torch.nn.Module)."""
  torch, timm_layers = _torch()
  nn, F = torch.nn, torch.nn.functional

  def relative_position_index(window: tuple[int, int, int]) -> Any:
    """``(N, N)`` int64 rows of the ``(2Ws-1)(2Wh-1)(2Ww-1)`` table, ``N = Ws*Wh*Ww``."""
    ws, wh, ww = window
    grid = torch.meshgrid(torch.arange(ws), torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (3, N)
    rel = coords[:, :, None] - coords[:, None, :] + torch.tensor([ws - 1, wh - 1, ww - 1])[
        :, None, None]
    # Quirk: the official strides are 3*Wh-1 (depth) and 2*Wh-1 (height) instead of
    # (2Wh-1)(2Ww-1) and 2Ww-1: offsets collide but stay in bounds. Kept for the weights.
    strides = torch.tensor([3 * wh - 1, 2 * wh - 1, 1])
    return (rel * strides[:, None, None]).sum(0)

  def shift_mask(size, window: int, shift: int, device) -> Any:
    """``(nW, w^3, w^3)`` 0 / -100 mask of the rolled windows of the padded ``size`` grid.

    Built, as official, per stage from the stage's window (unclamped): only blocks that
    roll use it, and those are the unclamped ones.
    """
    if shift <= 0:
      return None
    labels = []
    for n in size:
      padded = -(-n // window) * window
      i = torch.arange(padded, device=device)
      # Regions [0, P-w), [P-w, P-s), [P-s, P): the official slices per axis.
      labels.append((i >= padded - window).long() + (i >= padded - shift).long())
    ids = labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None]
    ids = window_partition(ids[None, ..., None], (window,) * 3).flatten(1)  # (nW, N)
    different = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)

  def window_partition(x, window):
    """``(B, S, H, W, C) -> (B * nW, Ws*Wh*Ww, C)``, windows in (batch, s, h, w) order."""
    b, s, h, w, c = x.shape
    ws, wh, ww = window
    x = x.view(b, s // ws, ws, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, ws * wh * ww, c)

  def window_reverse(windows, window, b, s, h, w):
    """Inverse of ``window_partition``: ``(B * nW, N, C) -> (B, S, H, W, C)``."""
    ws, wh, ww = window
    x = windows.view(b, s // ws, h // wh, w // ww, ws, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, s, h, w, -1)

  def to_channels_first(x, size):
    """Token rows ``(B, L, C)`` -> ``(B, C, S, H, W)``."""
    return x.view(x.shape[0], *size, x.shape[-1]).permute(0, 4, 1, 2, 3)

  def to_tokens(x):
    """``(B, C, S, H, W)`` -> ``((B, L, C), (S, H, W))``."""
    return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])

  def check_size(size, resolution, where):
    if tuple(size) != tuple(resolution):
      raise ValueError(f"{where}: a {tuple(size)} map, but the official network is built "
                       f"for {tuple(resolution)} (it only runs at its crop_size)")

  class Mlp(nn.Module):
    """Official ``Mlp``: Linear -> exact GELU -> Linear (dropout 0)."""

    def __init__(self, dim: int, hidden: int):
      super().__init__()
      self.fc1 = nn.Linear(dim, hidden)
      self.act = nn.GELU()
      self.fc2 = nn.Linear(hidden, dim)
      self.drop = nn.Dropout(0.0)

    def forward(self, x):
      return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

  class WindowAttention(nn.Module):
    """Official ``WindowAttention`` (``qkv``) / ``WindowAttention_kv`` (``kv``, and the query
    is given, unprojected). ``(B * nW, N, C) -> (B * nW, N, C)``."""

    def __init__(self, dim: int, window: tuple[int, int, int], num_heads: int, kv: bool):
      super().__init__()
      self.dim, self.window_size, self.num_heads = dim, window, num_heads
      self.scale = (dim // num_heads)**-0.5
      ws, wh, ww = window
      self.relative_position_bias_table = nn.Parameter(
          torch.zeros((2 * ws - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
      # Persistent, as official: checkpoints carry it.
      self.register_buffer("relative_position_index", relative_position_index(window))
      if kv:
        self.kv = nn.Linear(dim, 2 * dim)
      else:
        self.qkv = nn.Linear(dim, 3 * dim)
      self.attn_drop = nn.Dropout(0.0)
      self.proj = nn.Linear(dim, dim)
      self.proj_drop = nn.Dropout(0.0)
      self.softmax = nn.Softmax(dim=-1)
      nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None, q=None):
      b, n, c = x.shape
      heads = self.num_heads
      if q is None:
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
      else:  # Quirk: the query is the normed x_up itself, with no projection
        k, v = self.kv(x).reshape(b, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        q = q.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
      attn = (q * self.scale) @ k.transpose(-2, -1)
      bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
      attn = attn + bias.view(n, n, heads).permute(2, 0, 1).unsqueeze(0)
      if mask is not None:
        nw = mask.shape[0]
        attn = (attn.view(b // nw, nw, heads, n, n) + mask[None, :, None]).view(b, heads, n, n)
      attn = self.attn_drop(self.softmax(attn))
      x = (attn @ v).transpose(1, 2).reshape(b, n, c)
      return self.proj_drop(self.proj(x))

  class Block(nn.Module):
    """Official ``SwinTransformerBlock`` / ``SwinTransformerBlock_kv`` (``kv=True``, the first
    block of each decoder stage). Token rows ``(B, S*H*W, C)`` in and out."""

    def __init__(self, dim, resolution, num_heads, window, shift, drop_path, kv=False):
      super().__init__()
      if kv and any(shift):
        raise ValueError("the official skip-attention block never shifts")
      self.input_resolution = tuple(resolution)
      self.window_size, self.shift_size, self.is_kv = tuple(window), tuple(shift), kv
      self.norm1 = nn.LayerNorm(dim)
      self.attn = WindowAttention(dim, self.window_size, num_heads, kv)
      self.drop_path = timm_layers.DropPath(drop_path) if drop_path > 0 else nn.Identity()
      self.norm2 = nn.LayerNorm(dim)
      self.mlp = Mlp(dim, 4 * dim)

    @property
    def rolls(self) -> bool:
      # Quirk (ACDC): a shift like (0, 2, 2) rolls nothing; the official tests min(shift) > 0.
      return min(self.shift_size) > 0

    def _windows(self, x):
      """Normed ``(B, S, H, W, C)`` -> padded (zeros at the end), rolled, partitioned."""
      pads = [(-n) % w for n, w in zip(x.shape[1:4], self.window_size)]
      x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
      if self.rolls:
        x = torch.roll(x, [-s for s in self.shift_size], dims=(1, 2, 3))
      return window_partition(x, self.window_size), x.shape[1:4]

    def forward(self, x, mask, skip=None, x_up=None):
      b, length, c = x.shape
      s, h, w = self.input_resolution
      if length != s * h * w:
        raise ValueError(f"{length} tokens for a block built for {self.input_resolution}")
      shortcut = x
      if self.is_kv:
        keys, padded = self._windows(self.norm1(skip).view(b, s, h, w, c))
        queries, _ = self._windows(self.norm1(x_up).view(b, s, h, w, c))
        y = self.attn(keys, None, q=queries)
      else:
        windows, padded = self._windows(self.norm1(x).view(b, s, h, w, c))
        # Quirk (ACDC): the stage passes no mask, so rolled windows attend across the wrap.
        y = self.attn(windows, mask if self.rolls else None)
      y = window_reverse(y, self.window_size, b, *padded)
      if self.rolls:
        y = torch.roll(y, list(self.shift_size), dims=(1, 2, 3))
      y = y[:, :s, :h, :w].reshape(b, length, c)
      x = shortcut + self.drop_path(y)
      return x + self.drop_path(self.mlp(self.norm2(x)))

  class PatchMerging(nn.Module):
    """Official ``PatchMerging``: GELU -> LayerNorm -> Conv3d(C -> 2C). Tokens in and out."""

    def __init__(self, dim, kernel=3, stride=2, padding=1):
      super().__init__()
      self.reduction = nn.Conv3d(dim, 2 * dim, kernel, stride=stride, padding=padding)
      self.norm = nn.LayerNorm(dim)

    def forward(self, x, size):
      x = self.norm(F.gelu(x))  # Quirk: the activation comes before the norm
      return to_tokens(self.reduction(to_channels_first(x, size)))

  class PatchExpanding(nn.Module):
    """Official ``Patch_Expanding``: LayerNorm -> ConvTranspose3d(C -> C/2). Tokens in/out."""

    def __init__(self, dim, kernel=2, output_padding=0):
      super().__init__()
      self.norm = nn.LayerNorm(dim)
      self.up = nn.ConvTranspose3d(dim, dim // 2, kernel, stride=kernel,
                                   output_padding=output_padding)

    def forward(self, x, size):
      return to_tokens(self.up(to_channels_first(self.norm(x), size)))

  class Stage(nn.Module):
    """Official ``BasicLayer``: blocks alternating unshifted / shifted, then the merge.

    ``(tokens, size) -> (stage output, size, merged tokens, merged size)``.
    """

    def __init__(self, variant, dim, resolution, depth, num_heads, window, drop_path, merge):
      super().__init__()
      self.window_size, self.masked = window, variant != "acdc"
      self.blocks = nn.ModuleList([
          Block(dim, resolution, num_heads, *block_geometry(variant, resolution, window, j % 2),
                drop_path[j]) for j in range(depth)])
      self.downsample = PatchMerging(dim, *merge) if merge is not None else None

    def forward(self, x, size):
      check_size(size, self.blocks[0].input_resolution, "encoder stage")
      mask = None
      if self.masked:
        mask = shift_mask(size, self.window_size, self.window_size // 2, x.device)
      for block in self.blocks:
        x = block(x, mask)
      if self.downsample is None:
        return x, size, x, size
      return (x, size, *self.downsample(x, size))

  class StageUp(nn.Module):
    """Official ``BasicLayer_up``: expand, add the skip, one skip-attention block, then
    shifted blocks. ``(tokens, size, skip tokens) -> (tokens, size)``."""

    def __init__(self, variant, dim, resolution, depth, num_heads, window, drop_path, expand):
      super().__init__()
      self.window_size, self.masked = window, variant != "acdc"
      self.blocks = nn.ModuleList([Block(
          dim, resolution, num_heads, *block_geometry(variant, resolution, window, False),
          drop_path[0], kv=True)])
      # The official passes the shifted geometry to every later block (not alternating).
      self.blocks.extend(
          Block(dim, resolution, num_heads, *block_geometry(variant, resolution, window, True),
                drop_path[j]) for j in range(1, depth))
      self.Upsample = PatchExpanding(2 * dim, *expand)  # pylint: disable=invalid-name

    def forward(self, x, size, skip):
      x_up, size = self.Upsample(x, size)
      check_size(size, self.blocks[0].input_resolution, "decoder stage")
      x = x_up + skip  # Quirk: added, not concatenated; also block 0's residual
      mask = None
      if self.masked:
        mask = shift_mask(size, self.window_size, self.window_size // 2, x.device)
      x = self.blocks[0](x, mask, skip=skip, x_up=x_up)
      for block in self.blocks[1:]:
        x = block(x, mask)
      return x, size

  class Project(nn.Module):
    """Official ``project``: conv -> GELU -> LN -> conv (-> GELU -> LN unless ``last``)."""

    def __init__(self, in_dim, out_dim, stride, last):
      super().__init__()
      self.out_dim, self.last = out_dim, last
      self.conv1 = nn.Conv3d(in_dim, out_dim, 3, stride=stride, padding=1)
      self.conv2 = nn.Conv3d(out_dim, out_dim, 3, stride=1, padding=1)
      self.activate = nn.GELU()
      self.norm1 = nn.LayerNorm(out_dim)
      if not last:
        self.norm2 = nn.LayerNorm(out_dim)

    @staticmethod
    def _channel_norm(norm, x):
      return norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)

    def forward(self, x):
      x = self._channel_norm(self.norm1, self.activate(self.conv1(x)))
      x = self.conv2(x)
      if not self.last:
        x = self._channel_norm(self.norm2, self.activate(x))
      return x

  class PatchEmbed(nn.Module):
    """Official ``PatchEmbed``: two ``project`` blocks, then LN. ``(B, C_in, D, H, W) ->
    (B, E, D', H', W')``; the input is zero-padded at the end to patch multiples."""

    def __init__(self, variant, patch_size, in_chans, embed_dim):
      super().__init__()
      self.patch_size, self.embed_dim = patch_size, embed_dim
      p0, p1, p2 = patch_size
      # The strides split the patch across the two blocks differently per variant.
      second = (1 if variant == "acdc" else p0 // 2, p1 // 2, p2 // 2)
      first = {"synapse": (p0, p1 // 2, p2 // 2)}.get(variant, second)
      self.proj1 = Project(in_chans, embed_dim // 2, first, last=False)
      self.proj2 = Project(embed_dim // 2, embed_dim, second, last=True)
      self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
      pads = [(-n) % p for n, p in zip(x.shape[2:], self.patch_size)]
      if any(pads):
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
      x = self.proj2(self.proj1(x))
      return Project._channel_norm(self.norm, x)  # pylint: disable=protected-access

  class Encoder(nn.Module):
    """Official ``Encoder``: ``(B, C_in, D, H, W) -> [(norm_i(stage i output), size)]``."""

    def __init__(self, variant, config):
      super().__init__()
      depths, embed = tuple(config["depths"]), config["embedding_dim"]
      n = len(depths)
      self.num_features = [embed * 2**i for i in range(n)]
      self.patch_embed = PatchEmbed(variant, _triple(config["patch_size"]),
                                    config["input_channels"], embed)
      self.pos_drop = nn.Dropout(0.0)
      dpr = _drop_path_rates(depths, config["drop_path_rate"])
      res = stage_resolutions(variant, config)
      self.layers = nn.ModuleList()
      for i in range(n):
        if variant == "acdc":
          merge = _ACDC_MERGE.get(i) if i < n - 1 else None
        else:
          merge = () if i < n - 1 else None  # the default Conv3d(k3, s2, p1)
        window = config["window_size"][i]
        self.layers.append(Stage(variant, embed * 2**i, res[i], depths[i],
                                 config["num_heads"][i], window, dpr[i], merge))
      for i in range(n):
        self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x):
      x, size = to_tokens(self.patch_embed(x))
      x = self.pos_drop(x)
      skips = []
      for i, layer in enumerate(self.layers):
        out, out_size, x, size = layer(x, size)
        skips.append((getattr(self, f"norm{i}")(out), out_size))
      return skips

  class Decoder(nn.Module):
    """Official ``Decoder``: ``layers[k]`` works at encoder stage k's scale and runs from the
    deepest. ``(neck, skips) -> [(tokens, size)]``, lowest resolution first."""

    def __init__(self, variant, config):
      super().__init__()
      n = len(config["depths"])
      embed = config["embedding_dim"]
      # The official lists, indexed by its i_layer (0 = the deepest decoder stage).
      depths = tuple(config["depths"])[::-1][1:]
      windows = tuple(config["window_size"])[::-1][1:]
      reversed_heads = tuple(config["num_heads"])[::-1]
      # Quirk (Tumor): [:-1] instead of [1:] -- twice the encoder's heads at each scale.
      heads = reversed_heads[:-1] if variant == "tumor" else reversed_heads[1:]
      dpr = _drop_path_rates(depths, config["drop_path_rate"])
      res = stage_resolutions(variant, config)
      self.num_features = [embed * 2**k for k in range(n - 1)]
      self.pos_drop = nn.Dropout(0.0)
      self.layers = nn.ModuleList()
      for i_layer in reversed(range(n - 1)):
        k = n - 2 - i_layer  # the list index = the encoder scale
        if variant == "acdc":
          expand = _ACDC_EXPAND.get(i_layer, _ACDC_EXPAND_DEFAULT)
        else:
          expand = ()  # ConvTranspose3d(k2, s2)
        self.layers.append(StageUp(variant, embed * 2**k, res[k], depths[i_layer],
                                   heads[i_layer], windows[i_layer], dpr[i_layer], expand))

    def forward(self, neck, skips):
      (x, size), outs = neck, []
      x = self.pos_drop(x)
      for k in reversed(range(len(self.layers))):
        x, size = self.layers[k](x, size, skips[k][0])
        outs.append((x, size))
      return outs

  class FinalPatchExpanding(nn.Module):
    """Official ``final_patch_expanding``: ConvTranspose3d(C -> classes, k = s = patch)."""

    def __init__(self, dim, num_classes, patch_size):
      super().__init__()
      self.up = nn.ConvTranspose3d(dim, num_classes, patch_size, stride=patch_size)

    def forward(self, x, size):
      return self.up(to_channels_first(x, size))

  class NnFormer(nn.Module):
    """Official ``nnFormer``: ``(B, C_in, D, H, W)`` -> ``(B, K, D, H, W)`` logits, or with
    ``do_ds`` the list ``[full, 1/2, 1/4, ...]`` (by the decoder's scales)."""

    def __init__(self, variant, config):
      super().__init__()
      self.variant, self.config = variant, dict(config)
      self._deep_supervision = self.do_ds = bool(config["deep_supervision"])
      self.num_classes = config["num_classes"]
      n, embed = len(config["depths"]), config["embedding_dim"]
      patch = _triple(config["patch_size"])
      self.model_down = Encoder(variant, config)
      self.decoder = Decoder(variant, config)
      dims = [embed * 2**i for i in range(n - 1)] if self.do_ds else [embed]
      self.final = nn.ModuleList([FinalPatchExpanding(d, self.num_classes, patch) for d in dims])

    def forward(self, x):
      skips = self.model_down(x)
      outs = self.decoder(skips[-1], skips)
      if not self.do_ds:
        return self.final[0](*outs[-1])
      if len(self.final) != len(outs):
        raise RuntimeError("do_ds needs a network built with deep_supervision=True")
      # The deepest output goes through the last head; then highest resolution first.
      return [self.final[-(i + 1)](*out) for i, out in enumerate(outs)][::-1]

  return types.SimpleNamespace(
      relative_position_index=relative_position_index, shift_mask=shift_mask,
      window_partition=window_partition, window_reverse=window_reverse, Mlp=Mlp,
      WindowAttention=WindowAttention, Block=Block, PatchMerging=PatchMerging,
      PatchExpanding=PatchExpanding, Stage=Stage, StageUp=StageUp, Project=Project,
      PatchEmbed=PatchEmbed, Encoder=Encoder, Decoder=Decoder,
      FinalPatchExpanding=FinalPatchExpanding, NnFormer=NnFormer)


def official_config(variant: str, **overrides: Any) -> dict[str, Any]:
  """``OFFICIAL[variant]`` with ``overrides`` and ``drop_path_rate`` (0.2 unless given)."""
  if variant not in OFFICIAL:
    raise ValueError(f"unknown nnFormer variant {variant!r}; expected one of {sorted(OFFICIAL)}")
  allowed = set(OFFICIAL[variant]) | {"drop_path_rate"}
  unknown = sorted(set(overrides) - allowed)
  if unknown:
    raise ValueError(f"unknown nnFormer {variant} argument(s) {unknown}; "
                     f"expected some of {sorted(allowed)}")
  config = {**OFFICIAL[variant], "drop_path_rate": DROP_PATH_RATE, **overrides}
  n = len(config["depths"])
  per_stage = ["num_heads", "window_size"] + (["down_stride"] if variant == "acdc" else [])
  for key in per_stage:
    if len(config[key]) != n:
      raise ValueError(f"{key} has {len(config[key])} entries for {n} stages")
  if variant == "acdc" and n != 4:
    raise ValueError("the official ACDC network has its merge kernels for exactly 4 stages")
  return config


def build(variant: str, **overrides: Any) -> Any:
  """The official nnFormer ``variant`` ('synapse', 'acdc', 'tumor') as a float32
  ``torch.nn.Module`` in eval mode, torch's default init (bias tables trunc-normal 0.02).

  ``overrides``: any of ``OFFICIAL[variant]``'s constructor arguments, plus
  ``drop_path_rate``. ``model.do_ds`` may be set afterwards, as the official trainers do.
  """
  config = official_config(variant, **overrides)
  return _modules().NnFormer(variant, config).float().eval()


def param_count(model: Any) -> int:
  """Number of parameters (buffers such as ``relative_position_index`` excluded)."""
  return sum(p.numel() for p in model.parameters())


def reference_config(model: Any) -> tuple[str, dict[str, Any]]:
  """``(variant, build overrides)`` of the official network a swin_jax ``NnFormer`` mirrors
  (``build_like(model)`` builds it). ACDC's ``down_stride`` (an official constructor
  argument) is each stage's total stride, read from the model's geometry."""
  # pylint: disable-next=import-outside-toplevel
  from swin_jax.models import nnformer
  config = dict(crop_size=tuple(model.crop_size), embedding_dim=model.embed_dim,
                input_channels=model.in_channels, num_classes=model.num_classes,
                depths=tuple(model.depths), num_heads=tuple(model.num_heads),
                patch_size=tuple(model.patch_size), window_size=tuple(model.window_size),
                deep_supervision=model.deep_supervision,
                drop_path_rate=float(model.drop_path_rate))
  if model.variant == "acdc":
    config["down_stride"] = tuple(
        tuple(c // r for c, r in zip(model.crop_size, resolution))
        for resolution in nnformer.plan(model).resolutions)
  return model.variant, config


def build_like(model: Any) -> Any:
  """``build`` for the official network that a swin_jax ``NnFormer`` mirrors."""
  variant, config = reference_config(model)
  return build(variant, **config)


def official_loss(outputs: Any, labels: Any) -> Any:
  """nnU-Net v1's training loss in torch, as nnFormer's trainers use it:
  ``MultipleOutputLoss2(DC_and_CE_loss({'batch_dice': True, 'smooth': 1e-5, 'do_bg': False},
  {}), weights)`` (``swin_jax.tasks.nnunet_loss`` in JAX).

  ``outputs``: logits ``(B, K, D, H, W)`` or the deep-supervision list (highest resolution
  first); ``labels`` ``(B, D, H, W)`` int at full resolution: output ``i`` is scored against
  every ``2**i``-th voxel from nnU-Net's offset (``volume_segmentation.downsampled_labels``),
  weighted by ``deep_supervision_weights``. Per output: voxel CE minus the mean foreground
  batch soft Dice.
  """
  torch, _ = _torch()
  # pylint: disable-next=import-outside-toplevel
  from swin_jax.data.volume_transforms import deep_supervision_offset
  from swin_jax.tasks import nnunet_loss  # pylint: disable=import-outside-toplevel
  outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
  total = 0.0
  for i, (logits, weight) in enumerate(
      zip(outputs, nnunet_loss.deep_supervision_weights(len(outputs)))):
    step, start = 2**i, deep_supervision_offset(2**i)
    target = labels[:, start::step, start::step, start::step].long()
    logits = logits.float()
    probs = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    axes = (0, *range(2, logits.ndim))
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    smooth = nnunet_loss.DICE_SMOOTH
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth + 1e-8)
    ce = torch.nn.functional.cross_entropy(logits, target)
    total = total + float(weight) * (ce - dice[1:].mean())
  return total
