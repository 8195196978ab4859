"""The PyTorch UperNet reference: mmdet 3.3.0's ``SwinTransformer`` backbone with
mmsegmentation 1.2.2's ``UPerHead`` and auxiliary ``FCNHead`` (pure PyTorch, NCHW), shaped
like a swin_jax ``UperNet``; the parity tests' reference and ``python -m swin_jax.bench``'s.

    reference = build_like(model)                  # random init, float32, CPU
    logits = reference(images)                     # (B, K, H, W), as EncoderDecoder infers
    decode, aux = reference.head_logits(images)    # (B, K, H/4, W/4), (B, K, H/16, W/16)
    loss = reference.official_loss(images, labels) # labels (B, H, W), 255 ignored

The heads follow the official ADE20K config (``upernet_swin.py``): channels 512, pool scales
1/2/3/6, aux on stage 2 with 256 channels, dropout 0.1, align_corners False, BN (SyncBN on
one process), losses CE + 0.4 CE. mmcv-lite's missing extension is stubbed on first use
(``mm_stubs``); torch, mmdet and mmseg come with the ``oracle`` extra.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from swin_jax.oracles import import_oracle_modules
from swin_jax.oracles import mm_stubs

AUX_LOSS_WEIGHT = 0.4   # the official auxiliary_head.loss_decode weight
IGNORE_INDEX = 255


def _mm() -> tuple[Any, Any, Any]:
  """``(torch, mmdet's swin module, mmseg's decode_heads module)``, the stub installed."""
  mm_stubs.install()
  return import_oracle_modules("swin_jax.oracles.torch_upernet", "torch",
                               "mmdet.models.backbones.swin", "mmseg.models.decode_heads")


def mmdet_swin(swin: Any, drop_path_rate: float = 0.0) -> Any:
  """mmdet's ``SwinTransformer`` shaped like the swin_jax ``swin`` (its fields), all four
  stage outputs (``norm0..norm3``), random init."""
  _, mmdet_swin_lib, _ = _mm()
  return mmdet_swin_lib.SwinTransformer(
      embed_dims=swin.embed_dim, patch_size=swin.patch_size, window_size=swin.window_size,
      mlp_ratio=int(swin.mlp_ratio), depths=tuple(swin.depths), num_heads=tuple(swin.num_heads),
      qkv_bias=swin.qkv_bias, drop_path_rate=drop_path_rate,
      out_indices=tuple(range(len(swin.depths))))


def mmseg_heads(in_channels: Sequence[int], channels: int, aux_channels: int, num_classes: int,
                pool_scales: Sequence[int] = (1, 2, 3, 6), dropout_ratio: float = 0.1,
                aux_in_index: int = 2, aux_loss_weight: float = AUX_LOSS_WEIGHT
                ) -> tuple[Any, Any]:
  """``(UPerHead, FCNHead)`` of mmseg's ``upernet_swin`` config, float32, eval mode. Plain BN
  stands in for SyncBN (the same module on one process)."""
  _, _, heads = _mm()
  from mmengine.registry import DefaultScope  # pylint: disable=import-outside-toplevel
  norm_cfg = dict(type="BN", requires_grad=True)
  # mmseg's own losses, whatever default scope an mmdet build left behind.
  with DefaultScope.overwrite_default_scope("mmseg"):
    decode = heads.UPerHead(in_channels=list(in_channels),
                            in_index=list(range(len(in_channels))),
                            pool_scales=tuple(pool_scales), channels=channels,
                            dropout_ratio=dropout_ratio, num_classes=num_classes,
                            norm_cfg=norm_cfg, align_corners=False)
    aux = heads.FCNHead(in_channels=in_channels[aux_in_index], in_index=aux_in_index,
                        channels=aux_channels, num_convs=1, concat_input=False,
                        dropout_ratio=dropout_ratio, num_classes=num_classes,
                        norm_cfg=norm_cfg, align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                         loss_weight=aux_loss_weight))
  return decode.float().eval(), aux.float().eval()


@functools.cache
def _reference_class() -> type:
  """The reference's module class (defined on first use: it subclasses torch.nn.Module)."""
  torch = _mm()[0]

  class UperNetReference(torch.nn.Module):
    """mmseg's ``EncoderDecoder`` for one UperNet: ``backbone``, ``decode_head``,
    ``auxiliary_head``; NCHW float32 images."""

    def __init__(self, backbone, decode_head, auxiliary_head):
      super().__init__()
      self.backbone, self.decode_head = backbone, decode_head
      self.auxiliary_head = auxiliary_head

    def head_logits(self, images):
      """``(decode (B, K, H/4, W/4), aux (B, K, H/16, W/16))``, unresized."""
      feats = self.backbone(images)
      return self.decode_head(feats), self.auxiliary_head(feats)

    def forward(self, images):
      """``(B, 3, H, W) -> (B, K, H, W)``: the decode logits resized bilinearly
      (align_corners False) to the input, as ``EncoderDecoder`` infers (aux unused)."""
      from mmseg.models.utils import resize  # pylint: disable=import-outside-toplevel
      logits = self.decode_head(self.backbone(images))
      return resize(logits, size=images.shape[2:], mode="bilinear", align_corners=False)

    def official_loss(self, images, labels):
      """mmseg's training loss of ``labels (B, H, W)``: each head's ``loss_by_feat`` (logits
      resized to the labels, CE ignoring 255 averaged over all pixels; aux weighted 0.4)."""
      from mmengine.structures import PixelData  # pylint: disable=import-outside-toplevel
      from mmseg.structures import SegDataSample  # pylint: disable=import-outside-toplevel
      samples = [SegDataSample(gt_sem_seg=PixelData(data=label[None].long()))
                 for label in labels]
      decode, aux = self.head_logits(images)
      return (self.decode_head.loss_by_feat(decode, samples)["loss_ce"] +
              self.auxiliary_head.loss_by_feat(aux, samples)["loss_ce"])

  return UperNetReference


@functools.cache
def _single_value_bn_class() -> type:
  """``BatchNorm2d`` that also trains on one value per channel (see ``build_like``)."""
  torch = _mm()[0]

  class SingleValueBatchNorm2d(torch.nn.BatchNorm2d):
    """torch refuses train-mode BN over a single value per channel (the PPM's 1x1 bin at
    batch 1); flax's BatchNorm normalises it to ``bias``, and so does this. The running
    statistics are left alone there: torch's unbiased variance of one value is NaN."""

    def forward(self, x):
      if self.training and x.numel() == x.shape[1]:
        return torch.batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps,
                                False)
      return super().forward(x)

  return SingleValueBatchNorm2d


def build(backbone: Any, decode_head: Any, auxiliary_head: Any) -> Any:
  """The ``UperNetReference`` module of these three parts."""
  return _reference_class()(backbone, decode_head, auxiliary_head)


def build_like(model: Any) -> Any:
  """The reference shaped like the swin_jax ``UperNet`` ``model`` (its fields, its drop path
  rate), random init, eval mode; its BatchNorms also train on a batch of one."""
  torch = _mm()[0]
  swin = model.backbone
  widths = [swin.embed_dim * 2**i for i in range(len(swin.depths))]
  decode, aux = mmseg_heads(widths, model.channels, model.aux_channels, model.num_classes,
                            model.pool_scales, model.dropout_ratio, model.aux_in_index)
  reference = build(mmdet_swin(swin, swin.drop_path_rate), decode, aux).float()
  # The official batch is 16 images under SyncBN; a bench at batch 1 trains the PPM's 1x1 bin
  # on one value per channel, as swin_jax does (same params and buffers: a class swap).
  single_value_bn = _single_value_bn_class()
  for module in reference.modules():
    if type(module) is torch.nn.BatchNorm2d:  # pylint: disable=unidiomatic-typecheck
      module.__class__ = single_value_bn
  reference.eval()
  return reference
