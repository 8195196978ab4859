"""Starting weights for a run (``config.init_from``): converted params, a PyTorch
checkpoint, or another swin_jax training run (e.g. 22K pretraining -> 1K fine-tuning).

Every source goes through the PyTorch-layout converter, so the official fine-tuning
adaptations apply uniformly: relative-position tables are resized when the window changes
(224/W7 -> 384/W12) and a 21,841-class head is reduced to 1,000 classes with the 22K->1K map
of the head's label space (``label_space``; ``'auto'``: a swin_jax run on this project's
ImageNet-22K builder is ``'fall11'``, anything else ``'official'``).

Sources and targets may be classifiers (a root ``SwinTransformer``) or task models holding
their Swin as a field (params at ``backbone/...``):

* classifier -> classifier: the whole model, strictly (any mismatch is an error);
* Swin-Unet -> Swin-Unet (an official ``ViT_seg`` checkpoint with or without its
  ``swin_unet.`` prefix, a converted dir, a Swin-Unet run): the whole model, strictly,
  with the bias tables of another window size resized (encoder and decoder blocks);
* a Swin (classifier or a task model's backbone) -> Swin-Unet: the official ``load_from``:
  the encoder from ``layers.i``, the decoder stages ``layers_up.(3-i)`` mirrored from
  ``layers.i``, shape-mismatched keys left at init (``load_swin_unet_from_imagenet``);
* a SimMIM checkpoint or run -> a classifier: the official fine-tune path
  (``swin_jax.convert.simmim.simmim_to_classifier``: the encoder without its mask token,
  bias tables of another window remapped on the geometric grid, the head at init);
* anything else: the Swin backbone only. A source whose Swin is nested (a task-model run, an
  mmseg / mmdet ``.pth`` with ``backbone.`` keys) gives its backbone; the target's backbone
  takes it, and what either side has that the other lacks (the classifier's ``norm`` /
  ``head``, a dense backbone's ``norm0..3``, the task head) is dropped or stays at init. A
  patch embedding of a patch size dividing the target's is resized (each tap repeated and
  divided: a classifier of 2 x 2 patches embeds a 2x-upsampled image with 4 x 4 patches as
  it embedded the original). Other shape mismatches are still errors: they mean another
  Swin variant, not another task.

With ``scope='model'`` (``config.init_from_scope``) none of these rules apply: the source is
this very model (a run of the same detector, say), and every param comes from it, strictly.

``load_initial`` returns a ``LoadReport`` of what was loaded, left at init and dropped.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

from etils import epath
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from swin_jax.convert import head_map, params_dir, simmim
from swin_jax.convert import keys as keys_lib
from swin_jax.convert import swin_unet
from swin_jax.convert import torch_checkpoint as tc
from swin_jax.convert.state_dict_io import StateDict, read_state_dict
from swin_jax.models import registry
from swin_jax.models.backbone import the_backbone
from swin_jax.models.swin import SwinTransformer

RUN_CONFIG_FILE = "config.json"
# config.dataset.name of this project's ImageNet-22K builder (sorted fall11 labels).
OWN_22K_DATASET = "imagenet22k"
LABEL_SPACES = ("auto",) + head_map.LABEL_SPACES
# 'auto': the rules above; 'model': the whole model from a source of the same model, strictly.
SCOPES = ("auto", "model")
# Where a root Swin's keys start; a prefix before it is a nested backbone's.
_SWIN_ANCHOR = "patch_embed.proj.weight"


def _abs(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))  # orbax wants absolute paths


def _is_run_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, RUN_CONFIG_FILE))


def run_config(workdir: str) -> dict[str, Any]:
  """A training run directory's ``config.json`` (the whole run config: ``model``,
  ``dataset``, ``task``, ``optimizer``, ...) as plain JSON values."""
  with open(os.path.join(workdir, RUN_CONFIG_FILE)) as f:
    return json.load(f)


def _latest_state_dir(workdir: str) -> str:
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"run directory {workdir} has no complete checkpoint")
  return os.path.join(workdir, "checkpoints", str(step), "state")


def _latest_run_state_params(workdir: str) -> Any:
  return _restore_on_host(_latest_state_dir(workdir), ("params",))["params"]


def _restore_on_host(state_dir: str, fields: tuple[str, ...]) -> dict[str, Any]:
  """Those of ``fields`` (``params``, ``model_state``) a saved train state has, as numpy
  arrays, whatever devices and mesh wrote them (a run of 8 devices opens in a 1-device
  notebook); the rest of the state is not read."""
  # The handler's own metadata: the checkpointer's also looks for step metadata, which
  # lives one folder up, and logs a warning when it is not here.
  saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
  wanted = {field: saved[field] for field in fields if saved.get(field)}
  on_host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  return ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=on_host, partial_restore=True))


def _run_model(workdir: str) -> nn.Module:
  model_cfg = run_config(workdir)["model"]
  return registry.create_model_from_json(model_cfg["name"], model_cfg["overrides"])


def latest_run_params(workdir: str) -> tuple[nn.Module, Any]:
  """Model and params of the newest complete checkpoint of a swin_jax run directory.

  ``workdir``: what ``python -m swin_jax.main --workdir`` wrote (``config.json`` and
  ``checkpoints/<step>/``), e.g. ``runs/demo``. The model is rebuilt from the run's config
  (``model.name`` and ``model.overrides``); params are the nested numpy dict
  ``model.apply({'params': params}, images)`` takes, images ``(B, H, W, 3)`` at the run's size.
  """
  workdir = _abs(workdir)
  return _run_model(workdir), _latest_run_state_params(workdir)


def latest_run_variables(workdir: str) -> tuple[nn.Module, dict[str, Any]]:
  """Model and variables of a run's newest checkpoint: ``{'params': ...}`` plus the model's
  other collections (UperNet's ``batch_stats``), what ``model.apply(variables, images)``
  takes in eval mode."""
  workdir = _abs(workdir)
  restored = _restore_on_host(_latest_state_dir(workdir), ("params", "model_state"))
  return _run_model(workdir), {"params": restored["params"], **restored.get("model_state", {})}


def latest_run_extra(workdir: str) -> tuple[nn.Module, dict[str, Any]]:
  """Model and ``state.extra`` (numpy) of a run's newest checkpoint: what a task keeps besides
  the params, e.g. Soft Teacher's ``{'teacher': params}``; ``{}`` for a task that keeps none."""
  workdir = _abs(workdir)
  restored = _restore_on_host(_latest_state_dir(workdir), ("extra",))
  return _run_model(workdir), restored.get("extra", {})


def resolve_label_space(path: str, label_space: str = "auto") -> str:
  """``'official'`` or ``'fall11'``: ``label_space`` itself, or for ``'auto'``, ``'fall11'``
  for a swin_jax run dir trained on this project's ImageNet-22K builder, else ``'official'``."""
  if label_space not in LABEL_SPACES:
    raise ValueError(f"init_from label space must be one of {LABEL_SPACES}, got {label_space!r}")
  if label_space != "auto":
    return label_space
  path = _abs(path)
  if _is_run_dir(path):
    dataset = run_config(path).get("dataset", {}).get("name")
    return "fall11" if dataset == OWN_22K_DATASET else "official"
  return "official"


def source_state_dict(path: str) -> StateDict:
  """The official-named state dict of a run dir, converted-params dir or checkpoint file.

  swin_jax params are translated without their model (scanned stacks split per block, a
  nested backbone keeps its ``backbone.`` prefix), so task-model runs work as well.
  """
  path = _abs(path)
  if _is_run_dir(path):
    return tc.params_to_state_dict(_latest_run_state_params(path))
  if os.path.isdir(path):
    return tc.params_to_state_dict(params_dir.load_params_tree(path))
  return read_state_dict(path)


def _swin_prefix(sd: StateDict) -> str:
  """``''`` for a classifier's keys, ``'backbone.'`` for a task model's (by the patch embed)."""
  prefixes = sorted(k[:-len(_SWIN_ANCHOR)] for k in sd
                    if k.endswith(_SWIN_ANCHOR) and (k == _SWIN_ANCHOR or
                                                     k[:-len(_SWIN_ANCHOR)].endswith(".")))
  if len(prefixes) > 1:
    raise ValueError(f"the checkpoint holds {len(prefixes)} Swin backbones "
                     f"({[p.rstrip('.') or '<root>' for p in prefixes]}); expected one")
  return prefixes[0] if prefixes else ""


def load_initial(path: str, model: nn.Module, label_space: str = "auto",
                 fallback_params: Mapping[str, Any] | None = None, scope: str = "auto"
                 ) -> tuple[dict[str, Any], tc.LoadReport]:
  """Params for ``model`` from ``path`` (see module docstring), and what was loaded.

  Args:
    path: a swin_jax run dir (``config.json``), a converted-params dir (``model.json``) or a
      PyTorch checkpoint file.
    model: a ``SwinTransformer`` or a task model holding one as a field.
    label_space: ``'auto'``, ``'official'`` or ``'fall11'`` (``config.init_from_label_space``).
    fallback_params: what the params not loaded keep (the run's own init, in ``model``'s
      layout); default: a fresh init (seed 0).
    scope: ``'auto'`` (the module docstring's rules) or ``'model'``: every param of
      ``model`` from a source of the same model (a detector run into the same detector, say
      a supervised burn-in before Soft Teacher); any missing, unexpected or mismatched key
      is an error.

  Returns:
    ``(params, report)``: the nested params (numpy float32, ``model``'s layout) and a
    ``LoadReport`` (``report.summary()`` for a log).
  """
  if scope not in SCOPES:
    raise ValueError(f"init_from scope must be one of {SCOPES}, got {scope!r}")
  label_space = resolve_label_space(path, label_space)
  sd = source_state_dict(path)
  if scope == "model":
    return tc.load_with_report(sd, model, fallback_params=fallback_params,
                               label_space=label_space)
  if swin_unet.is_swin_unet(model):
    return _load_into_swin_unet(path, sd, model, fallback_params)
  if isinstance(model, SwinTransformer) and simmim.is_simmim_state_dict(sd):
    # The official SimMIM fine-tune path: encoder without its mask token, W6 -> W7 tables
    # remapped on the geometric grid; the head stays at init.
    return simmim.simmim_to_classifier(sd, model, fallback_params=fallback_params)
  prefix = _swin_prefix(sd)
  if not prefix and isinstance(model, SwinTransformer):
    # Classifier -> classifier: the whole model, as strictly as the converter.
    return tc.load_with_report(sd, model, fallback_params=fallback_params,
                               label_space=label_space)
  target, _ = the_backbone(model)
  target_prefix = keys_lib.module_key(target) + "." if target else ""
  backbone_sd = {target_prefix + k[len(prefix):]: v for k, v in sd.items()
                 if k.startswith(prefix)}
  dropped_outside = sorted(k for k in sd if not k.startswith(prefix))
  if dropped_outside:
    logging.info("init_from %s: using its backbone (%s) only; not loading %d other entries",
                 path, prefix.rstrip("."), len(dropped_outside))
  params, report = tc.load_with_report(
      backbone_sd, model, allow=(tc.MISSING, tc.UNEXPECTED), fallback_params=fallback_params,
      label_space=label_space, log_level=logging.INFO, resize_patch_kernel=True)
  return params, tc.LoadReport(report.loaded, report.left_at_init,
                               report.dropped + tuple(dropped_outside), report.adapted)


def _load_into_swin_unet(path: str, sd: StateDict, model: nn.Module,
                         fallback_params: Mapping[str, Any] | None
                         ) -> tuple[dict[str, Any], tc.LoadReport]:
  """A Swin-Unet's params from a Swin-Unet (whole, tables resized) or from any single Swin
  (the official ``load_from`` mirroring); see the module docstring."""
  if swin_unet.is_swin_unet_state_dict(sd):
    return swin_unet.load_swin_unet(sd, model, fallback_params=fallback_params,
                                    log_level=logging.INFO)
  prefix = _swin_prefix(sd)
  encoder = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
  params, report = swin_unet.load_swin_unet_from_imagenet(
      encoder, model, fallback_params=fallback_params, log_level=logging.INFO)
  outside = tuple(sorted(k for k in sd if not k.startswith(prefix)))
  if outside:
    logging.info("init_from %s: using its Swin (%s) only; not loading %d other entries", path,
                 prefix.rstrip("."), len(outside))
  return params, tc.LoadReport(report.loaded, report.left_at_init, report.dropped + outside,
                               report.adapted)


def load_initial_params(path: str, model: nn.Module, label_space: str = "auto",
                        fallback_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """``load_initial`` without the report (which is logged)."""
  params, report = load_initial(path, model, label_space, fallback_params)
  logging.info("init_from %s:\n%s", path, report.summary())
  return params
