"""Official SimMIM checkpoints (microsoft/SimMIM) <-> ``SimMIM`` params, and the official
fine-tune path from a SimMIM checkpoint to a classifier.

    variables = load_torch_variables("simmim_pretrain__swin_base__img192_window6__100ep.pth",
                                     simmim_model)
    sd = export_torch_state_dict(variables, simmim_model)   # encoder.*, decoder.0.*
    params, report = simmim_to_classifier("simmim_pretrain...pth",
                                          create_model("swin_base_patch4_window7_224"))

Official keys are ``encoder.<Swin key>`` (official layout, plus ``encoder.mask_token``
``(1, 1, C)``) and ``decoder.0.weight`` / ``decoder.0.bias`` (the 1x1 conv); the params
are ``encoder/...`` and ``decoder_0/...``, so loading is the generic rule of
``torch_checkpoint`` (the Swin under the ``encoder.`` prefix); this module adds the export
and the fine-tune path.

The fine-tune path is the official ``load_pretrained`` + ``remap_pretrained_keys_swin``:
keep the ``encoder.`` entries without the prefix (mask token and decoder are dropped), and
resize each relative-position bias table whose window differs (W6 -> W7) per head on the
official geometric-progression grid with a cubic interpolating spline (the official
``scipy.interpolate.interp2d(kind='cubic')``, removed from SciPy; ``RectBivariateSpline``
with ``s=0`` fits the same FITPACK spline). The classifier head stays at its init.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import numpy as np
from scipy import interpolate

from swin_jax.convert import keys as keys_lib
from swin_jax.convert.state_dict_io import StateDict, finish_export, read_state_dict
from swin_jax.models.simmim import SimMIM

ENCODER_PREFIX = "encoder."
MASK_TOKEN = "mask_token"
DECODER_PREFIX = "decoder."


def is_simmim(model: Any) -> bool:
  return isinstance(model, SimMIM)


def is_simmim_state_dict(sd: Mapping[str, Any]) -> bool:
  """A SimMIM checkpoint (official or a swin_jax SimMIM run): it has the encoder's mask
  token."""
  return ENCODER_PREFIX + MASK_TOKEN in sd


# ----------------------------------------------------------------------------------------
# The geometric-progression bias-table remap.


def geometric_ratio(src_side: int, dst_side: int) -> float:
  """The official ratio ``q``: bisection on [1.01, 1.5] (to 1e-6) for
  ``1 + q + ... + q**(src_side//2 - 1) = dst_side // 2``; the last midpoint tried, as the
  official loop leaves it."""
  left, right = 1.01, 1.5
  q = left
  while right - left > 1e-6:
    q = (left + right) / 2.0
    total = (1.0 - q**(src_side // 2)) / (1.0 - q)
    if total > dst_side // 2:
      right = q
    else:
      left = q
  return q


def geometric_grid(src_side: int, dst_side: int) -> tuple[np.ndarray, np.ndarray]:
  """``(source coordinates (src_side,), target coordinates (dst_side,))``: the source table
  sits at ``0, +-1, +-(1+q), +-(1+q+q^2), ...``, the target at the integers
  ``-dst_side//2 .. dst_side//2`` (the official ``x`` and ``dx``)."""
  q = geometric_ratio(src_side, dst_side)
  distances = np.cumsum([1.0] + [q**(i + 1) for i in range(src_side // 2 - 1)])
  source = np.concatenate([-distances[::-1], [0.0], distances])
  half = dst_side // 2
  return source, np.arange(-half, half + 1, dtype=np.float64)


def geometric_remap_table(table: np.ndarray, dst_side: int) -> np.ndarray:
  """``(S1*S1, heads) -> (S2*S2, heads)``: each head's ``(S1, S1)`` table (rows: the
  vertical offset, columns: the horizontal) interpolated by a bicubic interpolating spline
  on the geometric grid and evaluated at the target's integer offsets. An unchanged side
  returns the table as it is (the official code skips it)."""
  table = np.asarray(table, np.float32)
  length, heads = table.shape
  src_side = int(round(np.sqrt(length)))
  if src_side * src_side != length:
    raise ValueError(f"relative_position_bias_table of length {length} is not square")
  if src_side == dst_side:
    return table
  if src_side < 4:
    raise ValueError(f"a cubic remap needs a table side of at least 4, got {src_side}")
  source, target = geometric_grid(src_side, dst_side)
  out = []
  for h in range(heads):
    z = table[:, h].reshape(src_side, src_side).astype(np.float64)
    # s=0: the interpolating spline (interp2d's fit on a rectangular grid). Outside the
    # source range FITPACK evaluates at the nearest edge, as interp2d did.
    spline = interpolate.RectBivariateSpline(source, source, z, kx=3, ky=3, s=0)
    out.append(spline(target, target).reshape(-1))
  return np.stack(out, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------
# SimMIM model <-> official checkpoint.


def export_simmim_state_dict(variables: Mapping[str, Any], model: SimMIM,
                             include_buffers: bool = False,
                             to_torch: bool = False) -> dict[str, Any]:
  """``SimMIM`` params (or ``{'params': ...}``) -> the official state dict: ``encoder.*``
  (official Swin layout, with ``encoder.mask_token``) and ``decoder.0.*``.

  ``include_buffers`` adds the encoder's ``relative_position_index`` / ``attn_mask`` (and
  V2 ``relative_coords_table``) so that the official model loads it strictly.
  """
  # pylint: disable=import-outside-toplevel
  from swin_jax.convert import torch_checkpoint
  sd, path, swin = torch_checkpoint.official_flat_params(variables, model, "this SimMIM model")
  if include_buffers:
    prefix = keys_lib.module_key(path) + "."
    # pylint: disable-next=protected-access
    buffers = torch_checkpoint._buffers(swin.clone(scan_blocks=False))
    sd.update({prefix + k: v for k, v in buffers.items()})
  return finish_export(sd, to_torch)


# ----------------------------------------------------------------------------------------
# The official fine-tune path: SimMIM checkpoint -> classifier.


def encoder_state_dict(sd: Mapping[str, np.ndarray]) -> StateDict:
  """The official ``load_pretrained`` key filter: a SimMIM checkpoint's ``encoder.*``
  entries without the prefix and without the mask token (a classifier has none); a
  checkpoint without ``encoder.`` keys is returned unchanged."""
  if not any(k.startswith(ENCODER_PREFIX) for k in sd):
    return dict(sd)
  return {k[len(ENCODER_PREFIX):]: v for k, v in sd.items()
          if k.startswith(ENCODER_PREFIX) and k != ENCODER_PREFIX + MASK_TOKEN}


def simmim_to_classifier(source: str | os.PathLike | Mapping[str, Any], model: Any,
                         strict: bool = True, fallback_params: Mapping[str, Any] | None = None
                         ) -> tuple[dict[str, Any], Any]:
  """Params for a Swin classifier ``model`` from a SimMIM checkpoint: ``(params, report)``.

  The encoder's entries are taken (``encoder_state_dict``), bias tables of another window
  are remapped on the geometric grid (``geometric_remap_table``, listed in
  ``report.adapted``), and the head keeps its init (or ``fallback_params``). With
  ``strict``, anything else missing, unexpected or mis-shaped is a
  ``CheckpointMismatchError``.
  """
  # pylint: disable=import-outside-toplevel
  from swin_jax.convert import torch_checkpoint
  sd = encoder_state_dict(read_state_dict(source))
  sd = torch_checkpoint.to_official_layout(sd, len(model.depths))
  expected = torch_checkpoint.abstract_params(torch_checkpoint.per_block_twin(model))
  adapted = []
  for key, value in list(sd.items()):
    if not key.endswith("relative_position_bias_table"):
      continue
    path = keys_lib.torch_key_to_path(key, expected)
    if path not in expected or value.ndim != 2:
      continue
    target = expected[path].shape
    if value.shape[0] != target[0] and value.shape[1] == target[1]:
      dst_side = int(round(np.sqrt(target[0])))
      sd[key] = geometric_remap_table(value, dst_side)
      adapted.append((key, f"relative-position bias table remapped (geometric, cubic): "
                           f"{tuple(value.shape)} -> {tuple(target)}"))
  logging.info("SimMIM fine-tune load: %d bias tables remapped", len(adapted))
  allow = ("missing",) if strict else torch_checkpoint.ALL_PROBLEMS
  params, report = torch_checkpoint.load_with_report(
      sd, model, allow=allow, fallback_params=fallback_params, log_level=logging.INFO)
  if strict:
    not_head = [name for name in report.left_at_init if not name.startswith("head.")]
    if not_head:
      raise torch_checkpoint.CheckpointMismatchError(
          f"the SimMIM checkpoint lacks {len(not_head)} encoder param(s) of the model: "
          f"{', '.join(not_head[:10])}; create the classifier that matches the encoder, or "
          "pass strict=False")
  report = dataclasses.replace(report, adapted=tuple(adapted) + report.adapted)
  return params, report
