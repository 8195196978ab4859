"""The PyTorch Swin-Unet reference: the official ``SwinTransformerSys`` assembled from timm.

    config = torch_swin_unet.official_config(model)   # model: a swin_jax SwinUnet
    ref = torch_swin_unet.build(config)                # torch.nn.Module, official key names
    logits = ref(images)                               # (B, 3 or 1, H, W) -> (B, K, H, W)
    loss = torch_swin_unet.official_loss(logits, labels)   # 0.4 CE + 0.6 softmax Dice

HuCaoFighting/Swin-Unet is not installable as a package, so this rebuilds its network
(``expand_first``) module by module so that its state dict has the official keys: timm's
``SwinTransformerBlock`` and ``PatchMerging`` (the official math and parameter names) for
the Swin parts; torch ops for PatchExpand / FinalPatchExpand_X4 (the official einops
``b h w (p1 p2 c) -> b (h p1) (w p2) c``, written as reshape + permute), the skip
concatenation, the norms and the bias-free 1x1 conv. Activations are NHWC inside, as in timm.

Stochastic depth follows the official ``dpr``: ``linspace(0, rate, sum(depths))`` split by
encoder stage, and decoder stage ``i`` reuses encoder stage ``n-1-i``'s slice.

torch and timm (the ``oracle`` extra) are imported on the first call, not at import time.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Mapping

from swin_jax.oracles import import_oracle_modules

# The fields of a swin_jax SwinUnet that the reference is built from.
CONFIG_FIELDS = ("img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size",
                 "num_classes", "drop_path_rate")
DICE_SMOOTH = 1e-5  # the official utils.DiceLoss


def _torch() -> tuple[Any, Any]:
  """``(torch, timm.models.swin_transformer)``, or an ImportError naming the extra."""
  return import_oracle_modules("the PyTorch Swin-Unet reference", "torch",
                               "timm.models.swin_transformer")


def official_config(model: Any) -> dict[str, Any]:
  """The reference's constructor arguments from a swin_jax ``SwinUnet`` (or a dict of all
  its ``CONFIG_FIELDS``)."""
  if isinstance(model, Mapping):
    missing = [k for k in CONFIG_FIELDS if k not in model]
    if missing:
      raise ValueError(f"the Swin-Unet reference needs {missing} as well")
    config = {k: model[k] for k in CONFIG_FIELDS}
  else:
    config = {k: getattr(model, k) for k in CONFIG_FIELDS}
  config["drop_path_rate"] = config["drop_path_rate"] or 0.0
  if not isinstance(config["img_size"], int):
    h, w = config["img_size"]
    if h != w:
      raise ValueError(f"the reference is square (as the official code); got {h}x{w}")
    config["img_size"] = h
  if not isinstance(config["window_size"], int):
    config["window_size"] = config["window_size"][0]
  return config


def expand_rearrange(x: Any, scale: int, out_dim: int, pixel_shuffle_order: bool = False) -> Any:
  """``(B, H, W, scale*scale*out_dim) -> (B, H*scale, W*scale, out_dim)``.

  The official ``rearrange(x, 'b h w (p1 p2 c) -> b (h p1) (w p2) c')``: channels
  innermost. ``pixel_shuffle_order``: the WRONG ``(c p1 p2)`` split (PixelShuffle's), for
  tests that must catch it.
  """
  b, h, w, _ = x.shape
  if pixel_shuffle_order:
    x = x.reshape(b, h, w, out_dim, scale, scale).permute(0, 1, 4, 2, 5, 3)
  else:
    x = x.reshape(b, h, w, scale, scale, out_dim).permute(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * scale, w * scale, out_dim)


def stage_drop_path_rates(depths: tuple[int, ...], rate: float) -> list[list[float]]:
  """The official ``dpr`` per encoder stage: ``linspace(0, rate, sum(depths))`` split."""
  total = sum(depths)
  rates = [rate * k / (total - 1) if total > 1 else 0.0 for k in range(total)]
  starts = [sum(depths[:i]) for i in range(len(depths) + 1)]
  return [rates[starts[i]:starts[i + 1]] for i in range(len(depths))]


@functools.cache
def _modules() -> types.SimpleNamespace:
  """The reference's module classes (defined on first use: they subclass torch.nn.Module)."""
  torch, timm_swin = _torch()

  class PatchExpand(torch.nn.Module):
    """Official PatchExpand (``scale=2``) / FinalPatchExpand_X4 (``scale=4``)."""

    def __init__(self, dim: int, scale: int, out_dim: int, pixel_shuffle_order: bool = False):
      super().__init__()
      self.scale, self.out_dim, self.pixel_shuffle_order = scale, out_dim, pixel_shuffle_order
      self.expand = torch.nn.Linear(dim, scale * scale * out_dim, bias=False)
      self.norm = torch.nn.LayerNorm(out_dim)

    def forward(self, x):
      x = expand_rearrange(self.expand(x), self.scale, self.out_dim, self.pixel_shuffle_order)
      return self.norm(x)

  class Stage(torch.nn.Module):
    """Official ``BasicLayer`` (``downsample``) / ``BasicLayer_up`` (``upsample``)."""

    def __init__(self, dim, resolution, heads, window, drop_path_rates, downsample=False,
                 upsample=False, pixel_shuffle_order=False):
      super().__init__()
      # timm clamps the window (and drops the shift) where the map is not larger than it,
      # as the official blocks do.
      self.blocks = torch.nn.ModuleList([
          timm_swin.SwinTransformerBlock(dim, resolution, num_heads=heads, window_size=window,
                                         shift_size=0 if j % 2 == 0 else window // 2,
                                         drop_path=rate)
          for j, rate in enumerate(drop_path_rates)])
      if downsample:
        self.downsample = timm_swin.PatchMerging(dim, 2 * dim)
      if upsample:
        self.upsample = PatchExpand(dim, 2, dim // 2, pixel_shuffle_order)

    def forward(self, x):
      for block in self.blocks:
        x = block(x)
      for name in ("downsample", "upsample"):
        if hasattr(self, name):
          x = getattr(self, name)(x)
      return x

  class SwinUnet(torch.nn.Module):
    """Official ``SwinTransformerSys`` (expand_first): NCHW images -> NCHW logits."""

    def __init__(self, img_size, patch_size, embed_dim, depths, num_heads, window_size,
                 num_classes, drop_path_rate=0.0, pixel_shuffle_order=False):
      super().__init__()
      n = len(depths)
      grid = img_size // patch_size
      dpr = stage_drop_path_rates(tuple(depths), drop_path_rate)
      self.patch_embed = torch.nn.Module()
      self.patch_embed.proj = torch.nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
      self.patch_embed.norm = torch.nn.LayerNorm(embed_dim)
      self.layers = torch.nn.ModuleList([
          Stage(embed_dim * 2**i, (grid // 2**i,) * 2, num_heads[i], window_size, dpr[i],
                downsample=i < n - 1) for i in range(n)])
      self.layers_up = torch.nn.ModuleList()
      self.concat_back_dim = torch.nn.ModuleList()
      for i in range(n):
        s = n - 1 - i  # the encoder stage at this decoder stage's resolution
        dim = embed_dim * 2**s
        self.concat_back_dim.append(torch.nn.Linear(2 * dim, dim) if i else torch.nn.Identity())
        self.layers_up.append(
            PatchExpand(dim, 2, dim // 2, pixel_shuffle_order) if i == 0 else
            Stage(dim, (grid // 2**s,) * 2, num_heads[s], window_size, dpr[s],
                  upsample=i < n - 1, pixel_shuffle_order=pixel_shuffle_order))
      self.norm = torch.nn.LayerNorm(embed_dim * 2**(n - 1))
      self.norm_up = torch.nn.LayerNorm(embed_dim)
      self.up = PatchExpand(embed_dim, patch_size, embed_dim, pixel_shuffle_order)
      self.output = torch.nn.Conv2d(embed_dim, num_classes, 1, bias=False)

    def forward(self, images):
      if images.shape[1] == 1:  # the official ViT_seg wrapper repeats grey input
        images = images.repeat(1, 3, 1, 1)
      x = self.patch_embed.norm(self.patch_embed.proj(images).permute(0, 2, 3, 1))
      skips = []
      for layer in self.layers:
        skips.append(x)  # each stage's INPUT is its skip
        x = layer(x)
      x = self.norm(x)
      for i, layer_up in enumerate(self.layers_up):
        if i:
          x = self.concat_back_dim[i](torch.cat([x, skips[len(self.layers) - 1 - i]], -1))
        x = layer_up(x)
      x = self.up(self.norm_up(x)).permute(0, 3, 1, 2)
      return self.output(x)

  return types.SimpleNamespace(PatchExpand=PatchExpand, Stage=Stage, SwinUnet=SwinUnet)


def build(config: Mapping[str, Any], pixel_shuffle_order: bool = False) -> Any:
  """The reference ``torch.nn.Module`` (float32, train mode, torch's default init).

  ``config``: ``official_config(model)``'s fields (other keys are ignored).
  """
  kwargs = {k: config[k] for k in CONFIG_FIELDS if k in config}
  return _modules().SwinUnet(**kwargs, pixel_shuffle_order=pixel_shuffle_order).float()


def dice_loss(logits: Any, labels: Any) -> Any:
  """The official ``utils.DiceLoss(K)(logits, labels, softmax=True)``: per class (background
  included) ``1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`` over the whole batch,
  averaged over the classes. ``logits`` ``(B, K, H, W)``, ``labels`` ``(B, H, W)`` int."""
  torch, _ = _torch()
  probs = torch.softmax(logits, dim=1)
  targets = torch.nn.functional.one_hot(labels.long(), logits.shape[1]).permute(0, 3, 1, 2)
  targets = targets.to(probs.dtype)
  dims = (0, 2, 3)
  intersect = (probs * targets).sum(dims)
  dice = (2 * intersect + DICE_SMOOTH) / (
      (probs * probs).sum(dims) + (targets * targets).sum(dims) + DICE_SMOOTH)
  return (1 - dice).mean()


def official_loss(logits: Any, labels: Any, ce_weight: float = 0.4,
                  dice_weight: float = 0.6) -> Any:
  """The official ``trainer.py`` loss: ``0.4 * CE + 0.6 * softmax Dice``."""
  torch, _ = _torch()
  ce = torch.nn.functional.cross_entropy(logits, labels.long())
  return ce_weight * ce + dice_weight * dice_loss(logits, labels)
