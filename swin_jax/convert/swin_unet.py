"""Swin-Unet checkpoints (HuCaoFighting/Swin-Unet) <-> ``SwinUnet`` params.

    variables = load_torch_variables("swin_unet_synapse.pth", model)     # with or without
    sd = export_swin_unet_state_dict(variables["params"], model)         # 'swin_unet.'
    params, report = load_swin_unet("swin_unet_synapse.pth", model_w8)   # tables resized
    params, report = load_swin_unet_from_imagenet("swin_tiny_patch4_window7_224.pth", model)

The official keys already are the Flax paths (``layers_up.1.blocks.0.attn.qkv.weight`` is
``layers_up_1/blocks_0/attn/qkv/kernel``), so ``torch_checkpoint`` converts them by its
generic rules; this module adds what is Swin-Unet's own: the ``swin_unet.`` prefix of the
official wrapper (``ViT_seg``), the buffers of its encoder and decoder blocks, the scanned
layout of both, the bias-table resize of a checkpoint of another window size (encoder and
decoder blocks, as the classifier's fine-tuning resize), and the official ``load_from`` (an
ImageNet Swin initialises the encoder and, mirrored, the decoder).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Mapping

import numpy as np

from swin_jax.convert import keys as keys_lib
from swin_jax.convert import resize
from swin_jax.convert.state_dict_io import finish_export
from swin_jax.models import scan_layout
from swin_jax.models import window as window_ops
from swin_jax.models.swin_unet import SwinUnet

StateDict = dict[str, np.ndarray]

# The official wrapper ``ViT_seg`` holds the network as ``self.swin_unet``.
WRAPPER_PREFIX = "swin_unet."
_ENCODER_KEY = re.compile(r"^layers\.(\d+)\.")
_TABLE_KEY = re.compile(
    r"^(layers|layers_up)\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$")


def is_swin_unet(model: Any) -> bool:
  return isinstance(model, SwinUnet)


def example_images_shape(model: SwinUnet) -> tuple[int, int, int, int]:
  """The ``(1, H, W, in_chans)`` batch that ``model.init`` is given."""
  h, w = window_ops.to_pair(model.img_size)
  return (1, h, w, model.in_chans)


def to_model_keys(sd: Mapping[str, np.ndarray]) -> StateDict:
  """Official Swin-Unet keys -> the model's: drops the ``swin_unet.`` wrapper prefix (when
  every key has it) and the buffers (``relative_position_index``, ``attn_mask``), which the
  model recomputes from shapes."""
  if sd and all(key.startswith(WRAPPER_PREFIX) for key in sd):
    sd = {key[len(WRAPPER_PREFIX):]: value for key, value in sd.items()}
  return {key: value for key, value in sd.items() if not keys_lib.is_buffer(key)}


def is_swin_unet_state_dict(sd: Mapping[str, Any]) -> bool:
  """Whether a state dict is a Swin-Unet's (it has decoder ``layers_up`` keys), with or
  without the wrapper prefix; an ImageNet Swin has none."""
  return any(key.startswith(("layers_up.", WRAPPER_PREFIX + "layers_up.")) for key in sd)


def stage_names(model: SwinUnet) -> list[tuple[str, int]]:
  """``(param name, encoder stage at its resolution)`` of every block-holding stage:
  the encoder's ``layers_i``, then the decoder's ``layers_up_i`` (i >= 1, at stage n-1-i)."""
  n = model.num_stages
  return ([(f"layers_{i}", i) for i in range(n)] +
          [(f"layers_up_{i}", n - 1 - i) for i in range(1, n)])


def stack_scanned(params: Mapping[str, Any], model: SwinUnet) -> dict[str, Any]:
  """Per-block params -> the ``scan_blocks=True`` layout, in encoder and decoder stages."""
  out = dict(params)
  for name, stage in stage_names(model):
    # scan_layout works on ``layers_0``; present each stage to it under that name.
    out[name] = scan_layout.stack_blocks({"layers_0": params[name]},
                                         [model.depths[stage]])["layers_0"]
  return out


def unstack_scanned(params: Mapping[str, Any], model: SwinUnet) -> dict[str, Any]:
  """Inverse of ``stack_scanned``; per-block params pass through unchanged."""
  out = dict(params)
  for name, stage in stage_names(model):
    if scan_layout.PAIRS in params[name]:
      out[name] = scan_layout.unstack_blocks({"layers_0": params[name]},
                                             [model.depths[stage]])["layers_0"]
  return out


def buffers(model: SwinUnet) -> StateDict:
  """The official persistent buffers: every block's ``attn.relative_position_index``, and
  the ``attn_mask`` of shifted blocks, in the encoder and decoder."""
  out = {}
  for name, stage in stage_names(model):
    resolution = model.stage_resolutions()[stage]
    for block in range(model.depths[stage]):
      window, shift = model.block_geometry(stage, block)
      prefix = f"{keys_lib.module_key((name,))}.blocks.{block}."
      out[prefix + "attn.relative_position_index"] = (
          window_ops.relative_position_index(window).astype(np.int64))
      if any(shift):
        padded = [r + window_ops.padding_to_multiple(r, w) for r, w in zip(resolution, window)]
        out[prefix + "attn_mask"] = np.array(window_ops.shift_mask(*padded, window, shift))
  return out


def misfit_bias_tables(sd: Mapping[str, np.ndarray], model: SwinUnet) -> dict[str, tuple[int, int]]:
  """The square bias tables of ``sd`` (model keys) whose window differs from the model's.

  Every encoder (``layers.i``) and decoder (``layers_up.i``, at encoder stage ``n-1-i``'s
  resolution) block table is compared with the block's (clamped) window. Tables of another
  head count, and keys the model lacks, are not misfits here: the loader reports them.

  Returns ``{key: (2*window_h - 1, 2*window_w - 1)}``, the sides the model's table has.
  """
  misfits = {}
  for key, value in sd.items():
    match = _TABLE_KEY.match(key)
    if not match:
      continue
    part, index, block = match.group(1), int(match.group(2)), int(match.group(3))
    stage = index if part == "layers" else model.num_stages - 1 - index
    if not (0 <= stage < model.num_stages and block < model.depths[stage]):
      continue
    window, _ = model.block_geometry(stage, block)
    sides = (2 * window[0] - 1, 2 * window[1] - 1)
    shape = np.shape(value)
    if (len(shape) == 2 and shape[0] != sides[0] * sides[1] and
        shape[1] == model.num_heads[stage] and resize.is_square_table(shape[0])):
      misfits[key] = sides
  return misfits


def resize_bias_tables(sd: Mapping[str, np.ndarray], model: SwinUnet
                       ) -> tuple[StateDict, tuple[tuple[str, str], ...]]:
  """Relative-position bias tables of another window size -> the model's windows.

  ``sd`` has the model's keys (``to_model_keys``). Each ``misfit_bias_tables`` entry is
  resized bicubically as the official fine-tuning does (``resize.resize_bias_table``).

  Returns ``(sd, adapted)``, ``adapted`` as ``LoadReport.adapted``: ``(key, how)``.
  """
  out, adapted = dict(sd), []
  for key, sides in misfit_bias_tables(sd, model).items():
    value = np.asarray(sd[key])
    out[key] = resize.resize_bias_table(value, sides)
    logging.warning("window differs from the checkpoint's: resizing %s %s -> %s (bicubic)",
                    key, value.shape, out[key].shape)
    adapted.append((key, f"relative-position bias table resized: {value.shape} -> "
                         f"{out[key].shape}"))
  return out, tuple(adapted)


def load_swin_unet(source: str | os.PathLike | Mapping[str, Any], model: SwinUnet, *,
                   allow: tuple[str, ...] = (), fallback_params: Mapping[str, Any] | None = None,
                   log_level: int = logging.WARNING) -> tuple[dict[str, Any], Any]:
  """A Swin-Unet checkpoint (official keys, ``swin_unet.`` prefix or not) -> ``(params,
  report)`` for ``model``, with the bias tables resized to its windows (``report.adapted``
  names each).

  ``allow``: the problems to tolerate (``torch_checkpoint.load_with_report``); by default
  anything else that does not fit is a ``CheckpointMismatchError``.
  """
  # pylint: disable=import-outside-toplevel
  from swin_jax.convert import state_dict_io, torch_checkpoint
  sd = to_model_keys(state_dict_io.read_state_dict(source))
  sd, adapted = resize_bias_tables(sd, model)
  params, report = torch_checkpoint.load_with_report(
      sd, model, allow=allow, fallback_params=fallback_params, log_level=log_level)
  return params, dataclasses.replace(report, adapted=adapted + report.adapted)


def export_swin_unet_state_dict(params: Mapping[str, Any], model: SwinUnet,
                                prefix: str = WRAPPER_PREFIX, include_buffers: bool = False,
                                to_torch: bool = False) -> dict[str, Any]:
  """``SwinUnet`` params -> the official state dict, the inverse of ``load_torch_variables``.

  ``prefix``: ``'swin_unet.'`` (the official ``ViT_seg`` checkpoints) or ``''`` (a bare
  ``SwinTransformerSys``). ``include_buffers`` adds the official buffers, so that the
  official model loads the result strictly. ``to_torch``: torch tensors instead of numpy.
  """
  from swin_jax.convert import torch_checkpoint  # pylint: disable=import-outside-toplevel
  sd = torch_checkpoint.export_torch_state_dict(params, model)
  if include_buffers:
    sd.update(buffers(model))
  sd = {prefix + key: value for key, value in sd.items()}
  return finish_export(sd, to_torch)


def mirror_encoder(sd: Mapping[str, np.ndarray]) -> StateDict:
  """The official ``load_from``'s key copy: every ``layers.i.X`` is also offered as
  ``layers_up.(3-i).X`` (the decoder stage at the same resolution and width).

  The 3 is the official constant (four stages). Keys the decoder lacks (``downsample``,
  ``layers_up.0.blocks``, blocks past its depth) end up unused, as in the official
  ``load_state_dict(strict=False)``.
  """
  out = dict(sd)
  for key, value in sd.items():
    if match := _ENCODER_KEY.match(key):
      out[f"layers_up.{3 - int(match.group(1))}.{key[match.end():]}"] = value
  return out


def load_swin_unet_from_imagenet(source: str | os.PathLike | Mapping[str, Any],
                                 model: SwinUnet,
                                 fallback_params: Mapping[str, Any] | None = None,
                                 log_level: int = logging.INFO) -> tuple[dict[str, Any], Any]:
  """The official ``SwinUnet.load_from``: an ImageNet Swin checkpoint -> Swin-Unet params.

  The encoder (``patch_embed``, ``layers.i``, ``norm``) loads as is; the decoder stages take
  the blocks of the encoder stage at their resolution (``layers.i -> layers_up.(3-i)``);
  shape-mismatched and unmatched keys (the classifier head, a deeper stage's extra blocks)
  are dropped, and params without a source (``layers_up.0``, ``upsample``s,
  ``concat_back_dim``, ``norm_up``, ``up``, ``output``) keep ``fallback_params`` (default:
  a fresh init). Official and timm layouts are accepted.

  Returns ``(params, report)``; ``report`` is a ``LoadReport`` whose ``adapted`` entries
  name every decoder param copied from the encoder (``mirrored from layers.i...``).
  """
  # pylint: disable=import-outside-toplevel
  from swin_jax.convert import state_dict_io, torch_checkpoint
  sd = torch_checkpoint.to_official_layout(state_dict_io.read_state_dict(source), num_stages=4)
  mirrored = mirror_encoder(sd)
  # The official load_from deletes shape-mismatched keys: bias tables of another window
  # stay at init here, where load_with_report would resize them.
  misfit_keys = tuple(misfit_bias_tables(mirrored, model))
  mirrored = {k: v for k, v in mirrored.items() if k not in misfit_keys}
  params, report = torch_checkpoint.load_with_report(
      mirrored, model, allow=torch_checkpoint.ALL_PROBLEMS, fallback_params=fallback_params,
      log_level=log_level)
  sources = {key: f"layers.{3 - int(key.split('.')[1])}.{key.split('.', 2)[2]}"
             for key in mirrored if key.startswith("layers_up.")}
  adapted = tuple((key, f"mirrored from the encoder: {sources[key]}")
                  for key in report.loaded if key in sources)
  # Mirrored copies the decoder cannot use are not checkpoint entries: not "dropped".
  dropped = tuple(key for key in report.dropped if key not in sources) + tuple(
      key for key in misfit_keys if key.startswith("layers."))
  report = dataclasses.replace(report, dropped=dropped, adapted=report.adapted + adapted)
  logging.log(log_level, "Swin-Unet load_from:\n%s", report.summary())
  return params, report
