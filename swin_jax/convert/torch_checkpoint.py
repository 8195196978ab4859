"""Official / timm PyTorch checkpoints -> swin_jax params, and back.

    params = load_torch_checkpoint("swin_tiny_patch4_window7_224.pth", model)
    state_dict = export_torch_state_dict(params, model)    # official keys and layouts
    variables = load_torch_variables("upernet_swin_t.pth", task_model)  # Swin at backbone/

Loading follows the official ``load_pretrained``: buffers are dropped (recomputed here),
V1 relative-position bias tables are resized bicubically when the model's window differs,
and a 21,841-class head is reduced to 1,000 classes with the 22K->1K map of its label space
(``head_map``). Swin V2 checkpoints need no resizing: their continuous position bias is an
MLP over coordinates, so only the model's ``pretrained_window_sizes`` has to name the window
the weights were trained with.

Any model works, not only a root ``SwinTransformer``: a task model that holds its Swin as a
dataclass field (``backbone``) has its params at ``backbone/...`` and its official keys under
``backbone.`` (as in mmseg / mmdet checkpoints). Keys map to Flax paths by the generic rules
of ``keys.py`` (Dense / Conv / LayerNorm / BatchNorm leaves, numbered containers) everywhere;
the Swin-specific rules (timm's layout, dropped buffers, the table resize, the 22K head) apply
under each backbone's prefix, and the scanned layout is translated per backbone.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
from typing import Any, Callable, Iterable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.convert import detection
from swin_jax.convert import head_map
from swin_jax.convert import keys as keys_lib
from swin_jax.convert import nnformer
from swin_jax.convert import resize
from swin_jax.convert import simmim
from swin_jax.convert import swin_unet
from swin_jax.convert import upernet
from swin_jax.convert.state_dict_io import StateDict, finish_export, read_state_dict
from swin_jax.models import scan_layout
from swin_jax.models import window as window_ops
from swin_jax.models.backbone import find_backbones, the_backbone
from swin_jax.models.swin import SwinTransformer

Path = keys_lib.Path
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")

# Kinds of problem a load can meet; ``strict=False`` tolerates all of them.
MISSING, UNEXPECTED, MISMATCH = "missing", "unexpected", "mismatch"
ALL_PROBLEMS = (MISSING, UNEXPECTED, MISMATCH)


class CheckpointMismatchError(ValueError):
  """A checkpoint whose keys or shapes do not fit the model; the message lists every one."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What a load took from the checkpoint, by official (PyTorch) name, in model order.

  Names are the model's official keys (``backbone.layers.0.blocks.1.norm1.weight``; one per
  block in the scanned layout too); ``dropped`` names checkpoint entries where they would sit
  in the model (official layout, after any prefixing). Buffers are never listed: they are
  recomputed from shapes.
  """
  loaded: tuple[str, ...]        # model params filled from the checkpoint
  left_at_init: tuple[str, ...]  # model params it did not fill (missing, or mis-shaped)
  dropped: tuple[str, ...]       # checkpoint entries not used (unexpected, or mis-shaped)
  adapted: tuple[tuple[str, str], ...] = ()  # (loaded name, how): resized tables, 22K head

  def as_dict(self) -> dict[str, Any]:
    return {"loaded": list(self.loaded), "left_at_init": list(self.left_at_init),
            "dropped": list(self.dropped), "adapted": [list(a) for a in self.adapted]}

  def summary(self, max_names: int = 8) -> str:
    """A few lines for a log: counts, and the names of what was not loaded."""

    def names(items: tuple[str, ...]) -> str:
      shown = ", ".join(items[:max_names])
      return shown + (f", ... (+{len(items) - max_names})" if len(items) > max_names else "")

    total = len(self.loaded) + len(self.left_at_init)
    lines = [f"loaded {len(self.loaded)} of {total} params from the checkpoint"]
    if self.left_at_init:
      lines.append(f"left at init ({len(self.left_at_init)}): {names(self.left_at_init)}")
    if self.dropped:
      lines.append(f"dropped from the checkpoint ({len(self.dropped)}): {names(self.dropped)}")
    # Adaptations grouped by kind: "8 x relative-position bias table resized".
    kinds = collections.Counter(how.split(":")[0] for _, how in self.adapted)
    if kinds:
      lines.append("adapted: " + "; ".join(f"{n} x {kind}" for kind, n in kinds.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Models: any module holding Swin backbones (itself one, or as dataclass fields).


def per_block_twin(model: nn.Module) -> nn.Module:
  """``model`` with every Swin backbone built with ``scan_blocks=False`` (the official names)."""
  if isinstance(model, SwinTransformer) or swin_unet.is_swin_unet(model):
    return model.clone(scan_blocks=False) if model.scan_blocks else model
  updates = {}
  for field in dataclasses.fields(model):
    value = getattr(model, field.name, None)
    if field.name not in ("parent", "name") and isinstance(value, nn.Module):
      twin = per_block_twin(value)
      if twin is not value:
        updates[field.name] = twin
  return model.clone(**updates) if updates else model


def _example_images(model: nn.Module) -> jax.ShapeDtypeStruct:
  """One image of the (first) backbone's size: what ``model.init(rng, images)`` is given."""
  if swin_unet.is_swin_unet(model):
    return jax.ShapeDtypeStruct(swin_unet.example_images_shape(model), jnp.float32)
  if nnformer.is_nnformer(model):
    return jax.ShapeDtypeStruct(nnformer.example_volume_shape(model), jnp.float32)
  backbones = find_backbones(model)
  if not backbones:
    raise ValueError(f"{type(model).__name__} holds no SwinTransformer (as itself or a field)")
  swin = next(iter(backbones.values()))
  h, w = window_ops.to_pair(swin.img_size)
  return jax.ShapeDtypeStruct((1, h, w, swin.in_chans), jnp.float32)


def abstract_params(model: nn.Module) -> dict[Path, jax.ShapeDtypeStruct]:
  """The model's params as a flat ``{path: ShapeDtypeStruct}``, without computing them.

  ``model.init(rng, images)`` must create every param (Swin's ``__call__`` creates the
  feature norms as well, see swin.py; task models call their backbone's ``features``).
  """
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), _example_images(model))
  return flax.traverse_util.flatten_dict(variables["params"])


def input_size(model: nn.Module) -> tuple[int, int]:
  """``(H, W)`` of the images the model (its first backbone) is built for."""
  return tuple(_example_images(model).shape[1:3])


def init_variables(model: nn.Module, seed: int = 0) -> dict[str, Any]:
  """Freshly initialised variables (jitted init): ``{'params': ...}`` plus the model's other
  collections (UperNet's ``batch_stats``)."""
  images = jnp.zeros(_example_images(model).shape, jnp.float32)
  return dict(jax.jit(model.init)(jax.random.PRNGKey(seed), images))


def init_params(model: nn.Module, seed: int = 0) -> dict[str, Any]:
  """Freshly initialised params (jitted init), a nested dict."""
  return init_variables(model, seed)["params"]


def _backbone_of(path: Path, backbones: Mapping[Path, SwinTransformer]
                 ) -> tuple[Path, SwinTransformer] | None:
  """The (innermost) backbone whose params contain ``path``."""
  owners = [(p, b) for p, b in backbones.items() if path[:len(p)] == p]
  return max(owners, key=lambda item: len(item[0])) if owners else None


def _key_prefix(path: Path) -> str:
  """``('backbone',) -> 'backbone.'``; ``() -> ''``."""
  return keys_lib.module_key(path) + "." if path else ""


# ----------------------------------------------------------------------------------------
# State dicts.


def _describe_checkpoint(sd: StateDict) -> str:
  depths: dict[int, int] = {}
  heads: dict[int, int] = {}
  window = None
  for key, value in sd.items():
    if m := _BLOCK_KEY.match(key):
      stage, block = int(m.group(1)), int(m.group(2))
      depths[stage] = max(depths.get(stage, 0), block + 1)
      if key.endswith("relative_position_bias_table") and block == 0 and value.ndim == 2:
        heads[stage] = value.shape[1]
        if stage == 0:
          window = (int(round(np.sqrt(value.shape[0]))) + 1) // 2
      elif key.endswith("logit_scale") and block == 0:
        heads[stage] = value.shape[0]
  embed = sd["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in sd else "?"
  classes = sd["head.weight"].shape[0] if "head.weight" in sd else "no head"
  version = 2 if any(k.endswith(".logit_scale") for k in sd) else 1
  return (f"embed_dim={embed} depths={tuple(depths[i] for i in sorted(depths))} "
          f"num_heads={tuple(heads[i] for i in sorted(heads))} window(stage 1)={window} "
          f"num_classes={classes} version={version}")


def _describe_model(model: SwinTransformer) -> str:
  return (f"embed_dim={model.embed_dim} depths={tuple(model.depths)} "
          f"num_heads={tuple(model.num_heads)} window_size={model.window_size} "
          f"img_size={model.img_size} num_classes={model.num_classes} version={model.version}")


def to_official_layout(sd: StateDict, num_stages: int, prefix: str = "") -> StateDict:
  """Drops buffers and renames timm-layout keys (those under ``prefix``, a Swin's dotted
  path) to the official layout."""
  sd = {k: v for k, v in sd.items() if not keys_lib.is_buffer(k)}
  inside = [k[len(prefix):] for k in sd if k.startswith(prefix)]
  if keys_lib.is_timm_layout(inside, num_stages):
    sd = {(prefix + keys_lib.timm_to_official_key(k[len(prefix):]) if k.startswith(prefix)
           else k): v for k, v in sd.items()}
  return sd


def params_to_state_dict(params: Mapping[str, Any]) -> StateDict:
  """Any params tree -> ``{official key: array (torch layout)}``, without the model.

  Scanned stacks (``.../block_pairs/block{k}``) are split into their per-block keys; nested
  backbones keep their prefix (``backbone.layers.0...``). Nothing is checked: use
  ``export_torch_state_dict`` to export a Swin against its model.
  """
  out = {}
  for path, value in flax.traverse_util.flatten_dict(dict(params)).items():
    value = np.asarray(value)
    block_paths = scan_layout.per_block_paths(path, value.shape[0] if value.ndim else None)
    stacked = block_paths != [path]
    for m, block_path in enumerate(block_paths):
      out[keys_lib.path_to_torch_key(block_path)] = keys_lib.flax_to_torch_array(
          block_path, value[m] if stacked else value)
  return out


# ----------------------------------------------------------------------------------------
# Loading.


def _adapt(key: str, rel: Path, value: np.ndarray, target_shape: tuple[int, ...],
           model: SwinTransformer, label_space: str,
           own_value: Callable[[], np.ndarray],
           resize_patch_kernel: bool = False) -> tuple[np.ndarray, str | None]:
  """The official fine-tuning adaptations of a param at ``rel`` inside the Swin ``model``:
  bias-table resize and the 22K->1K head; with ``resize_patch_kernel``, a patch embedding
  of a patch size that divides the model's (``resize.upsample_patch_kernel``). Returns the
  value and how it was adapted."""
  if value.shape == target_shape:
    return value, None
  if (resize_patch_kernel and rel == ("patch_embed", "proj", "kernel") and value.ndim == 4
      and value.shape[2:] == target_shape[2:] and
      (factors := resize.patch_kernel_factors(value.shape[:2], target_shape[:2]))):
    logging.warning("patch size differs from the checkpoint's: resizing %s %s -> %s "
                    "(each tap repeated %s and divided by %d)", key, value.shape,
                    target_shape, factors, factors[0] * factors[1])
    return (resize.upsample_patch_kernel(value, factors),
            f"patch embedding resized: {value.shape[:2]} -> {tuple(target_shape[:2])}")
  if (rel[-1] == "relative_position_bias_table" and value.ndim == 2 and
      value.shape[1] == target_shape[1] and resize.is_square_table(value.shape[0])):
    stage, block = (int(p.split("_")[1]) for p in rel[:2])
    window, _ = model.block_geometry(stage, block)
    sides = (2 * window[0] - 1, 2 * window[1] - 1)
    logging.warning("window differs from the checkpoint's: resizing %s %s -> %s (bicubic)",
                    key, value.shape, target_shape)
    return (resize.resize_bias_table(value, sides),
            f"relative-position bias table resized: {value.shape} -> {tuple(target_shape)}")
  if (rel[0] == "head" and value.shape[-1 if rel[-1] == "kernel" else 0] ==
      head_map.NUM_CLASSES_22K and model.num_classes == head_map.NUM_CLASSES_1K):
    logging.info("mapping %s from the 22K head (%s label space) to 1K classes", key, label_space)
    torch_value = keys_lib.flax_to_torch_array(rel, value)
    how = f"22K head mapped to 1K: {label_space} label space"
    missing = head_map.missing_1k_classes(label_space)
    fill = None
    if missing:
      # No 22K row to copy (teddy bear is not a fall11 synset): the row keeps the model's own
      # value, i.e. its fresh init or fallback_params. That is what the class would start
      # from with no pretrained head at all, the same rule as any other param a checkpoint
      # lacks; a made-up row (zeros, or mean bias) would be a guess with no reference.
      from swin_jax.data.class_names import class_names  # pylint: disable=import-outside-toplevel
      named = ", ".join(f"{i} ({class_names(head_map.NUM_CLASSES_1K)[i]})" for i in missing)
      logging.warning("%s: 1K class(es) %s have no row in the %s 22K head; their rows keep "
                      "the model's own (initial) values", key, named, label_space)
      how += f", class(es) {named} at init"
      fill = keys_lib.flax_to_torch_array(rel, own_value())
    mapped = head_map.head_22k_to_1k(torch_value, label_space, fill)
    return keys_lib.torch_to_flax_array(rel, mapped), how
  return value, None


def load_with_report(source: str | os.PathLike | Mapping[str, Any], model: nn.Module, *,
                     allow: Iterable[str] = (), fallback_params: Mapping[str, Any] | None = None,
                     label_space: str = "official", log_level: int = logging.WARNING,
                     resize_patch_kernel: bool = False) -> tuple[dict[str, Any], LoadReport]:
  """Converts a PyTorch checkpoint into params for ``model``, and says what it took.

  Args:
    source: a path or state dict (see ``load_torch_checkpoint``); keys are relative to the
      model's root, so a Swin held at ``backbone`` reads ``backbone.layers.0...``.
    model: a ``SwinTransformer``, or any module holding Swin backbones as dataclass fields
      (``model.init(rng, images)`` must create every param).
    allow: the kinds of problem to tolerate (``'missing'``, ``'unexpected'``, ``'mismatch'``):
      they are logged at ``log_level`` and the params concerned keep ``fallback_params``
      (default: a fresh init). Any other problem raises ``CheckpointMismatchError``.
    label_space: the label order of a 21,841-class head mapped to 1K (``head_map``).
    resize_patch_kernel: a backbone patch embedding whose patch size divides the model's is
      resized (``resize.upsample_patch_kernel``) instead of being a shape mismatch; for
      initialising a task model from a classifier of finer patches (``init_from``).

  Returns:
    ``(params, report)``: the nested params dict (numpy float32) in the model's own layout.
  """
  allow = frozenset(allow)
  if allow - set(ALL_PROBLEMS):
    raise ValueError(f"allow takes {ALL_PROBLEMS}, got {sorted(allow)}")
  head_map.check_label_space(label_space)
  backbones = find_backbones(model)
  twin = per_block_twin(model)  # convert per block, stack scanned backbones at the end
  expected = abstract_params(twin)
  sd = read_state_dict(source)
  if detection.is_detector(model):
    sd = detection.swap_deconv_axes(sd)  # the mask head's ConvTranspose2d: (in, out, k, k)
  if nnformer.is_nnformer(model):
    # Its ConvTranspose3d weights (in, out, k...); its index buffers are recomputed.
    sd = {k: v for k, v in nnformer.swap_deconv_axes(sd).items() if not keys_lib.is_buffer(k)}
  for path, swin in backbones.items():
    sd = to_official_layout(sd, len(swin.depths), _key_prefix(path))
  unet = model if swin_unet.is_swin_unet(model) else None
  unet_adapted: tuple[tuple[str, str], ...] = ()
  if unet:
    sd, unet_adapted = swin_unet.resize_bias_tables(swin_unet.to_model_keys(sd), unet)

  fallback_cache: list[dict[Path, Any]] = []

  def fallback() -> dict[Path, Any]:
    if not fallback_cache:
      if fallback_params is None:
        tree = init_params(twin)
      else:
        tree = dict(fallback_params)
        for path, swin in backbones.items():
          if swin.scan_blocks and scan_layout.is_scanned(scan_layout.get_subtree(tree, path)):
            tree = scan_layout.unstack_blocks_at(tree, path, swin.depths)
        if unet:
          tree = swin_unet.unstack_scanned(tree, unet)
      fallback_cache.append(flax.traverse_util.flatten_dict(tree))
    return fallback_cache[0]

  taken: dict[Path, np.ndarray] = {}  # filled from the checkpoint
  adapted = list(unet_adapted)
  problems: dict[str, list[str]] = {kind: [] for kind in ALL_PROBLEMS}
  dropped, mismatched = [], set()
  for key, value in sd.items():
    path = keys_lib.torch_key_to_path(key, expected)
    if path not in expected:
      problems[UNEXPECTED].append(f"  unexpected in checkpoint: {key} {tuple(value.shape)}")
      dropped.append(key)
      continue
    target = expected[path].shape
    flax_value, how = keys_lib.torch_to_flax_array(path, value), None
    if owner := _backbone_of(path, backbones):
      flax_value, how = _adapt(key, path[len(owner[0]):], flax_value, target, owner[1],
                               label_space, lambda path=path: np.asarray(fallback()[path]),
                               resize_patch_kernel)
    if flax_value.shape != target:
      problems[MISMATCH].append(f"  shape mismatch: {key} checkpoint {tuple(value.shape)} vs "
                                f"model {keys_lib.torch_shape(path, target)}")
      dropped.append(key)
      mismatched.add(path)
      continue
    taken[path] = flax_value.astype(np.float32)
    if how:
      adapted.append((key, how))
  for path, struct in expected.items():
    if path not in taken and path not in mismatched:
      problems[MISSING].append(f"  missing from checkpoint: {keys_lib.path_to_torch_key(path)} "
                               f"(model shape {keys_lib.torch_shape(path, struct.shape)})")

  lines = problems[UNEXPECTED] + problems[MISMATCH] + problems[MISSING]
  if lines:
    message = f"checkpoint does not fit the model ({len(lines)} problem(s)):\n" + "\n".join(lines)
    if len(backbones) == 1:
      # Describe the Swin part (keys under its prefix) next to the Swin the model holds.
      (path, swin), = backbones.items()
      prefix = _key_prefix(path)
      inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
      message += (f"\ncheckpoint looks like: {_describe_checkpoint(inside)}"
                  f"\nmodel is:              {_describe_model(swin)}")
    refused = [kind for kind in ALL_PROBLEMS if problems[kind] and kind not in allow]
    if refused:
      hint = ("Create the model that matches the checkpoint, or pass strict=False to load "
              "what fits and keep the model's own values for the rest." if not allow else
              f"Not tolerated here: {', '.join(refused)}. Create the model that matches the "
              "checkpoint.")
      raise CheckpointMismatchError(message + "\n" + hint)
    tolerated = ("strict=False" if allow == set(ALL_PROBLEMS) else
                 "tolerated: " + ", ".join(k for k in ALL_PROBLEMS if k in allow))
    logging.log(log_level, "%s\n%s: keeping the model's own values for these.", message,
                tolerated)

  names = {path: keys_lib.path_to_torch_key(path) for path in expected}
  report = LoadReport(loaded=tuple(names[p] for p in expected if p in taken),
                      left_at_init=tuple(names[p] for p in expected if p not in taken),
                      dropped=tuple(dropped), adapted=tuple(adapted))
  params = flax.traverse_util.unflatten_dict(
      {p: taken[p] if p in taken else np.asarray(fallback()[p], np.float32) for p in expected})
  for path, swin in backbones.items():
    if swin.scan_blocks:
      params = scan_layout.stack_blocks_at(params, path, swin.depths)
  if unet and unet.scan_blocks:
    params = swin_unet.stack_scanned(params, unet)
  return params, report


def load_torch_checkpoint(source: str | os.PathLike | Mapping[str, Any],
                          model: SwinTransformer, strict: bool = True,
                          fallback_params: Mapping[str, Any] | None = None,
                          label_space: str = "official") -> dict[str, Any]:
  """Converts a PyTorch Swin checkpoint into params for ``model``.

  Args:
    source: a path (official ``.pth`` with weights under ``'model'``, timm ``.pth``/``.bin``,
      ``.safetensors``, ``.npz``) or an in-memory state dict (torch tensors or numpy arrays),
      in the official or timm layout.
    model: the ``SwinTransformer`` to load into (for task models holding one, see
      ``load_torch_variables``).
    strict: raise ``CheckpointMismatchError`` listing every missing, unexpected or
      mis-shaped key. With ``strict=False`` these are logged and the model keeps
      ``fallback_params`` (default: a fresh init) for them.
    fallback_params: params to take what the checkpoint lacks from (``strict=False``, and
      the 1K classes a 22K label space lacks).
    label_space: label order of a 21,841-class head loaded into a 1,000-class model:
      ``'official'`` (official Swin 22K checkpoints) or ``'fall11'`` (swin_jax's ImageNet-22K
      builder); see ``head_map``.

  Returns:
    The nested params dict (numpy float32), ready for ``model.apply({'params': params}, x)``.
  """
  params, _ = load_with_report(source, model, allow=() if strict else ALL_PROBLEMS,
                               fallback_params=fallback_params, label_space=label_space)
  return params


def load_torch_variables(source: str | os.PathLike | Mapping[str, Any], model: nn.Module,
                         strict: bool = True, fallback_params: Mapping[str, Any] | None = None,
                         label_space: str = "official") -> dict[str, Any]:
  """``{'params': ...}`` for any model holding Swin backbones, from a PyTorch checkpoint.

  Keys are relative to the model's root: a Swin at ``params['backbone']`` reads
  ``backbone.patch_embed.proj.weight`` ... (official mmseg / mmdet checkpoints, weights under
  ``'state_dict'``). Arguments as ``load_torch_checkpoint``. An ``UperNet`` also gets its
  BatchNorm statistics, ``{'params': ..., 'batch_stats': ...}`` (see ``convert.upernet``);
  a ``MaskRCNN`` / ``FasterRCNN`` reads mmdet's keys (see ``convert.detection``); a
  ``SimMIM`` reads the official ``encoder.*`` / ``decoder.0.*`` keys by the generic rules
  (see ``convert.simmim``, also for the fine-tune path to a classifier).
  """
  if upernet.is_upernet(model):
    return upernet.load_upernet_variables(source, model, strict, fallback_params, label_space)
  params, _ = load_with_report(source, model, allow=() if strict else ALL_PROBLEMS,
                               fallback_params=fallback_params, label_space=label_space)
  return {"params": params}


def _buffers(model: SwinTransformer) -> StateDict:
  """The official persistent buffers: every block's index (and, V2, its CPB coordinates
  ``(1, 2wh-1, 2ww-1, 2)``), shifted blocks' masks."""
  out = {}
  for stage, depth in enumerate(model.depths):
    resolution = model.stage_resolutions()[stage]
    for block in range(depth):
      window, shift = model.block_geometry(stage, block)
      prefix = f"layers.{stage}.blocks.{block}."
      out[prefix + "attn.relative_position_index"] = (
          window_ops.relative_position_index(window).astype(np.int64))
      if model.version == 2:
        out[prefix + "attn.relative_coords_table"] = np.array(
            window_ops.relative_coords_table(window, model.pretrained_window(stage))[None])
      # The dense backbone builds its masks per forward pass: they are not buffers there.
      if any(shift) and not model.dense_mode:
        padded = [r + window_ops.padding_to_multiple(r, w) for r, w in zip(resolution, window)]
        out[prefix + "attn_mask"] = np.array(window_ops.shift_mask(*padded, window, shift))
  return out


def checked_flat_params(params: Mapping[str, Any], model: nn.Module, what: str
                        ) -> dict[Path, Any]:
  """``params`` flattened by path, every path and shape checked against ``model``'s (as
  built); a ``CheckpointMismatchError`` naming ``what`` and the differing paths if not."""
  flat = flax.traverse_util.flatten_dict(dict(params))
  expected = abstract_params(model)
  wrong = sorted(set(flat) ^ set(expected))
  wrong += sorted(p for p in flat if p in expected and flat[p].shape != expected[p].shape)
  if wrong:
    raise CheckpointMismatchError(
        f"params do not belong to {what}; differing paths: " +
        ", ".join("/".join(p) for p in wrong[:20]) + (" ..." if len(wrong) > 20 else ""))
  return flat


def official_flat_params(variables: Mapping[str, Any], model: nn.Module, what: str
                         ) -> tuple[StateDict, Path, SwinTransformer]:
  """A task model's params (or ``{'params': ...}``) as numpy arrays by official key, a
  scanned backbone unstacked, every path and shape checked against ``model``; with the
  backbone's path and module. Raises ``CheckpointMismatchError`` naming ``what``."""
  params = variables["params"] if "params" in variables else variables
  path, swin = the_backbone(model)
  if swin.scan_blocks and scan_layout.is_scanned(scan_layout.get_subtree(params, path)):
    params = scan_layout.unstack_blocks_at(params, path, swin.depths)
  flat = checked_flat_params(params, per_block_twin(model), what)
  sd = {keys_lib.path_to_torch_key(p): keys_lib.flax_to_torch_array(p, np.asarray(v))
        for p, v in flat.items()}
  return sd, path, swin


def export_torch_state_dict(params: Mapping[str, Any], model: SwinTransformer,
                            layout: str = "official", include_buffers: bool = False,
                            to_torch: bool = False) -> dict[str, Any]:
  """The exact inverse of ``load_torch_checkpoint``: params -> PyTorch state dict.

  Args:
    params: params (or any tree of the same structure, e.g. gradients) of ``model``.
    model: the model they belong to (checked: every path and shape must match).
    layout: ``'official'`` (microsoft/Swin-Transformer) or ``'timm'``.
    include_buffers: also write the official persistent buffers
      (``relative_position_index``, ``attn_mask``, V2 ``relative_coords_table``) so the
      official model loads it strictly.
    to_torch: return ``torch.Tensor`` values instead of numpy arrays.
  """
  if layout not in ("official", "timm"):
    raise ValueError(f"layout must be 'official' or 'timm', got {layout!r}")
  if simmim.is_simmim(model):
    # ``params`` may be the variables {'params'}; the official SimMIM keys, one layout.
    if layout != "official":
      raise ValueError("SimMIM checkpoints have one layout; use layout='official'")
    return simmim.export_simmim_state_dict(params, model, include_buffers, to_torch)
  if upernet.is_upernet(model):
    # ``params`` may be the variables {'params', 'batch_stats'} (BN statistics exported too).
    if layout != "official":
      raise ValueError("UperNet checkpoints have one layout; use layout='official'")
    return upernet.export_upernet_state_dict(params, model, include_buffers, to_torch)
  if detection.is_detector(model):
    # ``params`` may be the variables {'params'}; mmdet's keys, one layout.
    if layout != "official":
      raise ValueError("detection checkpoints have one layout; use layout='official'")
    return detection.export_detector_state_dict(params, model, include_buffers, to_torch)
  if nnformer.is_nnformer(model):
    if layout != "official":
      raise ValueError("nnFormer checkpoints have one layout; use layout='official'")
    return nnformer.export_nnformer_state_dict(params, model, include_buffers, to_torch)
  if swin_unet.is_swin_unet(model):
    # Bare SwinTransformerSys keys; swin_unet.export_swin_unet_state_dict adds the prefix.
    if layout != "official":
      raise ValueError("Swin-Unet checkpoints have one layout; use layout='official'")
    if include_buffers:
      return swin_unet.export_swin_unet_state_dict(params, model, "", True, to_torch)
    if model.scan_blocks:
      return export_torch_state_dict(swin_unet.unstack_scanned(params, model),
                                     model.clone(scan_blocks=False), to_torch=to_torch)
  elif model.scan_blocks:
    if not scan_layout.is_scanned(params):
      raise CheckpointMismatchError(
          "the model has scan_blocks=True but the params are per block (layers_i/blocks_j); "
          "export them with the model built with scan_blocks=False")
    return export_torch_state_dict(scan_layout.unstack_blocks(params, model.depths),
                                   model.clone(scan_blocks=False), layout, include_buffers,
                                   to_torch)
  flat = checked_flat_params(params, model, "this model")
  sd = {keys_lib.path_to_torch_key(p): keys_lib.flax_to_torch_array(p, np.asarray(v))
        for p, v in flat.items()}
  if include_buffers:
    if layout != "official":
      raise ValueError("timm's buffers are not persistent; include_buffers needs layout='official'")
    sd.update(_buffers(model))
  if layout == "timm":
    sd = {keys_lib.official_to_timm_key(k): v for k, v in sd.items()}
  return finish_export(sd, to_torch)
