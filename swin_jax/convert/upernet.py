"""Official UperNet-Swin checkpoints (mmseg) <-> ``UperNet`` variables.

    variables = load_torch_variables("upernet_swin_tiny_patch4_window7_512x512.pth", model)
    # {'params': ..., 'batch_stats': ...}
    sd = export_torch_state_dict(variables, model)   # official keys, torch layouts

Official checkpoints (Swin-Transformer-Semantic-Segmentation, weights under ``'state_dict'``)
hold ``backbone.*`` (the Swin, official layout, with ``norm0..norm3``), ``decode_head.*``
(``UPerHead``) and ``auxiliary_head.*`` (``FCNHead``). Params convert by the generic rules of
``keys.py`` (``decode_head.lateral_convs.0.conv.weight`` is
``decode_head/lateral_convs_0/conv/kernel``) and the backbone by ``torch_checkpoint``'s Swin
rules; this module adds what is UperNet's own:

* BatchNorm running statistics (``bn.running_mean`` / ``bn.running_var``) are not params:
  they go to ``batch_stats`` (``.../bn/mean``, ``.../bn/var``); ``num_batches_tracked`` (a
  counter that only matters for ``momentum=None``) is dropped on load and written as 0 on
  export with ``include_buffers``;
* the PPM branches: mmseg's ``psp_modules.i`` is ``Sequential(AdaptiveAvgPool2d, ConvModule)``
  (``psp_modules.i.1.conv.weight``); here pooling is a function and the branch is
  ``psp_modules_i/conv``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.convert import keys as keys_lib
from swin_jax.convert.state_dict_io import StateDict, finish_export, read_state_dict
from swin_jax.models import scan_layout
from swin_jax.models import window as window_ops
from swin_jax.models.backbone import the_backbone
from swin_jax.models.upernet import UperNet

Path = keys_lib.Path

# BatchNorm buffers: official suffix -> batch_stats leaf; the step counter is dropped.
STAT_LEAVES = {"running_mean": "mean", "running_var": "var"}
BN_COUNTER = "num_batches_tracked"

_PSP_OFFICIAL = re.compile(r"(^|\.)psp_modules\.(\d+)\.1\.")
_PSP_MODEL = re.compile(r"(^|\.)psp_modules\.(\d+)\.(?=(conv|bn)\.)")


def is_upernet(model: Any) -> bool:
  return isinstance(model, UperNet)


def to_model_key(key: str) -> str:
  """``decode_head.psp_modules.0.1.conv.weight -> decode_head.psp_modules.0.conv.weight``."""
  return _PSP_OFFICIAL.sub(r"\1psp_modules.\2.", key)


def to_official_key(key: str) -> str:
  """Inverse of ``to_model_key``."""
  return _PSP_MODEL.sub(r"\1psp_modules.\2.1.", key)


def split_batch_stats(sd: Mapping[str, np.ndarray]) -> tuple[StateDict, dict[Path, np.ndarray]]:
  """``(param entries, {batch_stats path: array})``; ``num_batches_tracked`` is dropped."""
  params, stats = {}, {}
  for key, value in sd.items():
    module, _, leaf = key.rpartition(".")
    if leaf == BN_COUNTER:
      continue
    if leaf in STAT_LEAVES:
      stats[keys_lib.torch_key_to_path(f"{module}.{STAT_LEAVES[leaf]}", ())] = value
    else:
      params[key] = value
  return params, stats


def abstract_batch_stats(model: UperNet) -> dict[Path, jax.ShapeDtypeStruct]:
  """The model's ``batch_stats`` as ``{path: ShapeDtypeStruct}``, without computing them."""
  h, w = window_ops.to_pair(model.backbone.img_size)
  images = jax.ShapeDtypeStruct((1, h, w, model.backbone.in_chans), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  return flax.traverse_util.flatten_dict(variables.get("batch_stats", {}))


def stat_key(path: Path) -> str:
  """A ``batch_stats`` path's official key: ``(..., 'bn', 'mean') -> '....bn.running_mean'``."""
  leaf = {v: k for k, v in STAT_LEAVES.items()}[path[-1]]
  return to_official_key(f"{keys_lib.module_key(path[:-1])}.{leaf}")


def load_upernet_variables(source: str | os.PathLike | Mapping[str, Any], model: UperNet,
                           strict: bool = True,
                           fallback_params: Mapping[str, Any] | None = None,
                           label_space: str = "official") -> dict[str, Any]:
  """``{'params': ..., 'batch_stats': ...}`` for ``model`` from an official UperNet checkpoint.

  Params load as ``torch_checkpoint.load_torch_variables`` does (same ``strict`` and
  ``fallback_params``). Statistics missing from the checkpoint (``strict=False``) start at
  BatchNorm's initial values (mean 0, var 1); unexpected or mis-shaped ones are errors under
  ``strict``.
  """
  # pylint: disable=import-outside-toplevel
  from swin_jax.convert import torch_checkpoint
  sd = {to_model_key(k): v for k, v in read_state_dict(source).items()}
  param_sd, stats = split_batch_stats(sd)
  params, _ = torch_checkpoint.load_with_report(
      param_sd, model, allow=() if strict else torch_checkpoint.ALL_PROBLEMS,
      fallback_params=fallback_params, label_space=label_space)

  expected = abstract_batch_stats(model)
  problems = [f"  unexpected in checkpoint: {stat_key(p)} {tuple(v.shape)}"
              for p, v in stats.items() if p not in expected]
  problems += [f"  shape mismatch: {stat_key(p)} checkpoint {tuple(stats[p].shape)} vs "
               f"model {tuple(s.shape)}"
               for p, s in expected.items() if p in stats and stats[p].shape != s.shape]
  problems += [f"  missing from checkpoint: {stat_key(p)}"
               for p in expected if p not in stats]
  if problems and strict:
    raise torch_checkpoint.CheckpointMismatchError(
        f"BatchNorm statistics do not fit the model ({len(problems)} problem(s)):\n" +
        "\n".join(problems) + "\nCreate the model that matches the checkpoint, or pass "
        "strict=False to keep initial statistics for these.")
  if problems:
    logging.warning("BatchNorm statistics do not fit the model; keeping initial values for "
                    "these:\n%s", "\n".join(problems))
  initial = {"mean": np.zeros, "var": np.ones}
  batch_stats = {
      p: (np.asarray(stats[p], np.float32) if p in stats and stats[p].shape == s.shape
          else initial[p[-1]](s.shape, np.float32))
      for p, s in expected.items()}
  return {"params": params, "batch_stats": flax.traverse_util.unflatten_dict(batch_stats)}


def export_upernet_state_dict(variables: Mapping[str, Any], model: UperNet,
                              include_buffers: bool = False,
                              to_torch: bool = False) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` (or params alone) -> the official mmseg state dict.

  The inverse of ``load_upernet_variables``. ``include_buffers`` adds what the official
  model holds besides params and statistics (each block's ``relative_position_index`` and each
  BatchNorm's ``num_batches_tracked``), so that it loads the result strictly.
  """
  # pylint: disable=import-outside-toplevel
  from swin_jax.convert import torch_checkpoint
  if "params" in variables:
    params, stats = variables["params"], variables.get("batch_stats")
  else:
    params, stats = variables, None
  path, swin = the_backbone(model)
  if swin.scan_blocks and scan_layout.is_scanned(scan_layout.get_subtree(params, path)):
    params = scan_layout.unstack_blocks_at(params, path, swin.depths)
  flat = flax.traverse_util.flatten_dict(dict(params))
  expected = torch_checkpoint.abstract_params(torch_checkpoint.per_block_twin(model))
  flat_stats = flax.traverse_util.flatten_dict(dict(stats)) if stats is not None else {}
  expected_stats = abstract_batch_stats(model) if stats is not None else {}
  wrong = sorted(set(flat) ^ set(expected)) + sorted(set(flat_stats) ^ set(expected_stats))
  wrong += sorted(p for p in flat if p in expected and flat[p].shape != expected[p].shape)
  wrong += sorted(p for p in flat_stats
                  if p in expected_stats and flat_stats[p].shape != expected_stats[p].shape)
  if wrong:
    raise torch_checkpoint.CheckpointMismatchError(
        "variables do not belong to this model; differing paths: " +
        ", ".join("/".join(p) for p in wrong[:20]) + (" ..." if len(wrong) > 20 else ""))

  sd = {keys_lib.path_to_torch_key(p): keys_lib.flax_to_torch_array(p, np.asarray(v))
        for p, v in flat.items()}
  sd.update({stat_key(p): np.asarray(v) for p, v in flat_stats.items()})
  if include_buffers:
    # pylint: disable-next=protected-access
    buffers = torch_checkpoint._buffers(swin)  # the official Swin's, dense mode: no masks
    sd.update({f"{keys_lib.module_key(path)}.{k}": v for k, v in buffers.items()})
    modules = {p[:-1] for p in (expected_stats or abstract_batch_stats(model))}
    sd.update({f"{keys_lib.module_key(m)}.{BN_COUNTER}": np.array(0, np.int64)
               for m in modules})
  sd = {to_official_key(k): v for k, v in sd.items()}
  return finish_export(sd, to_torch)
