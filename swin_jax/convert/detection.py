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

Only the head keys (``neck.``, ``rpn_head.``, ``roi_head.``) are read here; the backbone's are
the Swin converter's.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax
import numpy as np

from swin_jax.convert import keys as keys_lib

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
