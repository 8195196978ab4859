"""Official nnFormer checkpoints (282857341/nnFormer, nnU-Net trainers) <-> ``NnFormer`` params.

    variables = load_torch_variables("model_final_checkpoint.model", model)   # NnFormer
    sd = export_torch_state_dict(variables["params"], model, include_buffers=True)

The official keys already are the Flax paths by the generic rules of ``keys.py``
(``model_down.layers.0.blocks.1.attn.qkv.weight`` is ``model_down/layers_0/blocks_1/attn/
qkv/kernel``, ``decoder.layers.0.Upsample.up.weight`` is ``decoder/layers_0/Upsample/up/
kernel``; decoder stage i lands on encoder stage i), and Conv3d kernels
``(out, in, kd, kh, kw)`` become ``(kd, kh, kw, in, out)``.
What is nnFormer's own:

* its ``ConvTranspose3d`` weights (``Upsample.up``, ``final.i.up``) are stored
  ``(in, out, kd, kh, kw)``; the Flax kernel is ``(kd, kh, kw, in, out)`` without a flip
  (kernel = stride: voxel ``i`` of the input fills output block ``i``, see
  ``models.nnformer.PatchConvTranspose``). ``swap_deconv_axes`` swaps the two leading axes
  around the generic conv rule, as for the detectors' mask head;
* the persistent ``relative_position_index`` buffers (nnFormer's colliding index) are
  skipped on load and written back by ``buffers`` on export;
* nnU-Net's checkpoint files hold the weights under ``'state_dict'`` (unwrapped by
  ``state_dict_io.read_state_dict``) beside the optimizer state, which is not read.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from swin_jax.convert import keys as keys_lib
from swin_jax.convert.state_dict_io import finish_export
from swin_jax.models import window as window_ops
from swin_jax.models.nnformer import NnFormer, plan

StateDict = dict[str, np.ndarray]

_DECONV_KEY = re.compile(r"(^|\.)(Upsample\.up|final\.\d+\.up)\.weight$")
# Every official nnFormer state dict has this key (the first embedding conv).
_ANCHOR = "model_down.patch_embed.proj1.conv1.weight"


def is_nnformer(model: Any) -> bool:
  return isinstance(model, NnFormer)


def is_nnformer_state_dict(sd: Mapping[str, Any]) -> bool:
  return _ANCHOR in sd


def example_volume_shape(model: NnFormer) -> tuple[int, int, int, int, int]:
  """The ``(1, D, H, W, in_channels)`` batch that ``model.init`` is given."""
  return (1, *model.crop_size, model.in_channels)


def swap_deconv_axes(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Swaps the two leading axes of the ``ConvTranspose3d`` weights: ``(in, out, k...)`` <->
  the ``(out, in, k...)`` of a conv, which the generic rule then lays out as ``(k..., in,
  out)``. Its own inverse."""
  return {k: (np.swapaxes(np.asarray(v), 0, 1) if _DECONV_KEY.search(k) and np.ndim(v) == 5
              else v) for k, v in sd.items()}


def buffers(model: NnFormer) -> StateDict:
  """The official persistent buffers: every block's ``attn.relative_position_index``
  ``(N, N)`` int64 (nnFormer's index of the block's clamped window)."""
  geometry = plan(model)
  out = {}
  stages = [(f"model_down.layers.{i}", blocks) for i, blocks in enumerate(geometry.encoder_blocks)]
  stages += [(f"decoder.layers.{i}", blocks) for i, blocks in enumerate(geometry.decoder_blocks)]
  for prefix, blocks in stages:
    for j, block in enumerate(blocks):
      out[f"{prefix}.blocks.{j}.attn.relative_position_index"] = (
          window_ops.nnformer_relative_position_index(block.window).astype(np.int64))
  return out


def export_nnformer_state_dict(variables: Mapping[str, Any], model: NnFormer,
                               include_buffers: bool = False,
                               to_torch: bool = False) -> dict[str, Any]:
  """``{'params': ...}`` (or the params) of an ``NnFormer`` -> the official state dict
  (the inverse of ``load_torch_variables``); ``include_buffers`` adds the index buffers so
  that the official network loads it strictly."""
  # pylint: disable-next=import-outside-toplevel
  from swin_jax.convert.torch_checkpoint import checked_flat_params
  params = variables["params"] if "params" in variables else variables
  flat = checked_flat_params(params, model, f"this nnFormer ({model.variant})")
  sd = swap_deconv_axes({keys_lib.path_to_torch_key(p): keys_lib.flax_to_torch_array(
      p, np.asarray(v)) for p, v in flat.items()})
  if include_buffers:
    sd.update(buffers(model))
  return finish_export(sd, to_torch)
