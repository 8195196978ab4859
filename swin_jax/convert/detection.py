"""Official mmdet detection checkpoints (Swin-Transformer-Object-Detection) <-> the Flax params
of the detection heads: FPN neck, RPN head, ``Shared2FCBBoxHead``, ``FCNMaskHead``.

    params = head_params_from_torch(state_dict)   # {'neck': ..., 'rpn_head': ...,
                                                  #  'roi_head': {'bbox_head', 'mask_head'}}
    sd = head_params_to_torch(params)             # official keys, PyTorch layouts

Keys map by the generic rules of ``keys.py`` (numbered containers become ``name_i``,
``weight`` is ``kernel``):

    neck.lateral_convs.i.conv.{weight,bias}     neck/lateral_convs_i/conv/{kernel,bias}
    neck.fpn_convs.i.conv.*                     neck/fpn_convs_i/conv/*
    rpn_head.rpn_{conv,cls,reg}.*               rpn_head/rpn_{conv,cls,reg}/*
    roi_head.bbox_head.shared_fcs.{0,1}.*       roi_head/bbox_head/shared_fcs_{0,1}/*
    roi_head.bbox_head.fc_{cls,reg}.*           roi_head/bbox_head/fc_{cls,reg}/*
    roi_head.mask_head.convs.i.conv.*           roi_head/mask_head/convs_i/conv/*
    roi_head.mask_head.upsample.*               roi_head/mask_head/upsample/*
    roi_head.mask_head.conv_logits.*            roi_head/mask_head/conv_logits/*

and layouts as the other converters: Linear ``(out, in) -> (in, out)``, Conv ``OIHW -> HWIO``.
Two layouts are the detection heads' own:

* ``mask_head.upsample`` is a ``ConvTranspose2d``, stored ``(in, out, kh, kw)``; the Flax
  kernel is ``(kh, kw, in, out)`` (``transpose(2, 3, 0, 1)``, no flip: with stride = kernel
  the transposed conv places ``x[i, j] @ W[:, :, a, b]`` at ``(2i + a, 2j + b)``).
* ``bbox_head.shared_fcs.0``: its 12544 inputs are PyTorch's flatten of an ``(C, 7, 7)`` RoI
  tensor. ``Shared2FCBBoxHead`` flattens its NHWC features channel-first too, so the kernel
  is the plain transpose and no row permutation is needed.

``head_params_from_torch`` / ``head_params_to_torch`` read only the head keys (``neck.``,
``rpn_head.``, ``roi_head.``). A whole detector (``MaskRCNN`` / ``FasterRCNN``, an official
checkpoint's ``backbone.*`` keys too) converts through ``swin_jax.convert``'s
``load_torch_variables`` (or ``load_torch_checkpoint`` / ``load_with_report``) and
``export_torch_state_dict``: the generic converter (key rules, strict checks, scanned
backbones, the load report), with the deconv's axes swapped around it
(``swap_deconv_axes``) so that its generic conv rule lays the kernel out as above; export
goes through ``export_detector_state_dict``. Detectors have no BatchNorm: the variables are
``{'params'}`` alone.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import numpy as np

from swin_jax.convert import keys as keys_lib
from swin_jax.convert.state_dict_io import finish_export
from swin_jax.models.detection.rcnn import MaskRCNN

Path = keys_lib.Path

HEAD_PREFIXES = ("neck.", "rpn_head.", "roi_head.")
# ConvTranspose2d weights: (in, out, kh, kw) <-> (kh, kw, in, out).
TRANSPOSED_CONVS = (("roi_head", "mask_head", "upsample", "kernel"),)


def is_head_key(key: str) -> bool:
  """Whether an official key belongs to the detection heads (not the backbone)."""
  return key.startswith(HEAD_PREFIXES)


def to_flax_array(path: Path, value: np.ndarray) -> np.ndarray:
  """A PyTorch tensor at ``path`` in the Flax layout."""
  if path in TRANSPOSED_CONVS:
    return np.asarray(value).transpose(2, 3, 0, 1)
  return keys_lib.torch_to_flax_array(path, np.asarray(value))


def to_torch_array(path: Path, value: np.ndarray) -> np.ndarray:
  """Inverse of ``to_flax_array``."""
  if path in TRANSPOSED_CONVS:
    return np.asarray(value).transpose(2, 3, 0, 1)  # (kh, kw, in, out) -> (in, out, kh, kw)
  return keys_lib.flax_to_torch_array(path, np.asarray(value))


def _numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def head_params_from_torch(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The head entries of an official state dict as a nested Flax params dict (float32
  numpy). Keys outside ``HEAD_PREFIXES`` are ignored."""
  flat = {}
  for key, value in state_dict.items():
    if not is_head_key(key):
      continue
    path = keys_lib.torch_key_to_path(key, ())   # every head 'weight' is a kernel
    flat[path] = np.ascontiguousarray(to_flax_array(path, _numpy(value)), np.float32)
  return flax.traverse_util.unflatten_dict(flat)


def head_params_to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse of ``head_params_from_torch``: the ``neck``, ``rpn_head`` and ``roi_head``
  subtrees of ``params`` as official keys in PyTorch layouts (numpy). Other subtrees (the
  backbone) are ignored."""
  out = {}
  flat = flax.traverse_util.flatten_dict(dict(params))
  for path, value in flat.items():
    key = keys_lib.path_to_torch_key(path)
    if is_head_key(key):
      out[key] = np.ascontiguousarray(to_torch_array(path, _numpy(value)))
  return out


# ----------------------------------------------------------------------------------------
# Whole detectors (backbone + heads), through the generic converter.

_DECONV_KEYS = tuple(keys_lib.path_to_torch_key(p) for p in TRANSPOSED_CONVS)


def is_detector(model: Any) -> bool:
  """Whether ``model`` is a ``MaskRCNN`` / ``FasterRCNN``."""
  return isinstance(model, MaskRCNN)


def swap_deconv_axes(sd: Mapping[str, Any]) -> dict[str, Any]:
  """Swaps the two leading axes of the ``ConvTranspose2d`` weights: ``(in, out, kh, kw)``
  <-> the ``(out, in, kh, kw)`` of a conv, whose generic rule (``OIHW <-> HWIO``) then
  gives the deconv's Flax layout ``(kh, kw, in, out)``. Its own inverse; the generic loader
  (``torch_checkpoint.load_with_report``) applies it to a detector's state dict."""
  return {k: (np.swapaxes(np.asarray(v), 0, 1) if k in _DECONV_KEYS and np.ndim(v) == 4
              else v) for k, v in sd.items()}


def export_detector_state_dict(variables: Mapping[str, Any], model: MaskRCNN,
                               include_buffers: bool = False,
                               to_torch: bool = False) -> dict[str, Any]:
  """``{'params': ...}`` (or the params) of a detector -> the official mmdet state dict.

  The inverse of ``load_torch_variables`` for a detector. ``include_buffers`` adds the
  backbone's ``relative_position_index`` buffers, so that the official model loads it
  strictly.
  ``roi_head.bbox_head.shared_fcs.0.weight`` is the plain transpose of the kernel: the head
  flattens its RoI features channel-first, as PyTorch does.
  """
  # pylint: disable=import-outside-toplevel
  from swin_jax.convert import torch_checkpoint
  sd, path, swin = torch_checkpoint.official_flat_params(variables, model, "this model")
  sd = swap_deconv_axes(sd)
  if include_buffers:
    # pylint: disable-next=protected-access
    buffers = torch_checkpoint._buffers(swin)  # dense mode: the index only, no masks
    sd.update({f"{keys_lib.module_key(path)}.{k}": v for k, v in buffers.items()})
  return finish_export(sd, to_torch)
