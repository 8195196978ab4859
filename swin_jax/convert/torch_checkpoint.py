"""Official / timm PyTorch checkpoints -> swin_jax params, and back.

    params = load_torch_checkpoint("swin_tiny_patch4_window7_224.pth", model)
    state_dict = export_torch_state_dict(params, model)    # official keys and layouts

Loading follows the official ``load_pretrained``: buffers are dropped (recomputed here),
V1 relative-position bias tables are resized bicubically when the model's window differs,
and a 21,841-class head is reduced to 1,000 classes with the official 22K->1K map.
Swin V2 checkpoints need no resizing: their continuous position bias is an MLP over
coordinates, so only the model's ``pretrained_window_sizes`` has to name the window the
weights were trained with.
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

from swin_jax.convert import head_map
from swin_jax.convert import keys as keys_lib
from swin_jax.convert import resize
from swin_jax.convert.state_dict_io import StateDict, read_state_dict
from swin_jax.models import scan_layout
from swin_jax.models import window as window_ops
from swin_jax.models.swin import SwinTransformer

Path = keys_lib.Path
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")


class CheckpointMismatchError(ValueError):
  """A checkpoint whose keys or shapes do not fit the model; the message lists every one."""


def _init_fn(model: SwinTransformer):
  """``init(rng, images)`` creating every param (feature norms included, see swin.py)."""
  return model.init


def _example_images(model: SwinTransformer) -> jax.ShapeDtypeStruct:
  h, w = window_ops.to_pair(model.img_size)
  return jax.ShapeDtypeStruct((1, h, w, model.in_chans), jnp.float32)


def abstract_params(model: SwinTransformer) -> dict[Path, jax.ShapeDtypeStruct]:
  """The model's params as a flat ``{path: ShapeDtypeStruct}``, without computing them."""
  variables = jax.eval_shape(_init_fn(model), jax.random.PRNGKey(0), _example_images(model))
  return flax.traverse_util.flatten_dict(variables["params"])


def init_params(model: SwinTransformer, seed: int = 0) -> dict[str, Any]:
  """Freshly initialised params (jitted init), a nested dict."""
  images = jnp.zeros(_example_images(model).shape, jnp.float32)
  return jax.jit(_init_fn(model))(jax.random.PRNGKey(seed), images)["params"]


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


def to_official_layout(sd: StateDict, num_stages: int) -> StateDict:
  """Drops buffers and renames timm-layout keys to the official layout."""
  sd = {k: v for k, v in sd.items() if not keys_lib.is_buffer(k)}
  if keys_lib.is_timm_layout(list(sd), num_stages):
    sd = {keys_lib.timm_to_official_key(k): v for k, v in sd.items()}
  return sd


def _adapt(key: str, path: Path, value: np.ndarray, target_shape: tuple[int, ...],
           model: SwinTransformer) -> np.ndarray:
  """The official fine-tuning adaptations: bias-table resize and the 22K->1K head."""
  if value.shape == target_shape:
    return value
  if (path[-1] == "relative_position_bias_table" and value.ndim == 2 and
      value.shape[1] == target_shape[1] and resize.is_square_table(value.shape[0])):
    stage, block = (int(p.split("_")[1]) for p in path[:2])
    window, _ = model.block_geometry(stage, block)
    sides = (2 * window[0] - 1, 2 * window[1] - 1)
    logging.warning("window differs from the checkpoint's: resizing %s %s -> %s (bicubic)",
                    key, value.shape, target_shape)
    return resize.resize_bias_table(value, sides)
  if (path[0] == "head" and value.shape[-1 if path[-1] == "kernel" else 0] ==
      head_map.NUM_CLASSES_22K and model.num_classes == head_map.NUM_CLASSES_1K):
    logging.info("mapping %s from the 22K head to 1K classes", key)
    torch_value = keys_lib.flax_to_torch_array(path, value)
    return keys_lib.torch_to_flax_array(path, head_map.head_22k_to_1k(torch_value))
  return value


def load_torch_checkpoint(source: str | os.PathLike | Mapping[str, Any],
                          model: SwinTransformer, strict: bool = True,
                          fallback_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Converts a PyTorch Swin checkpoint into params for ``model``.

  Args:
    source: a path (official ``.pth`` with weights under ``'model'``, timm ``.pth``/``.bin``,
      ``.safetensors``, ``.npz``) or an in-memory state dict (torch tensors or numpy arrays),
      in the official or timm layout.
    model: the ``SwinTransformer`` to load into.
    strict: raise ``CheckpointMismatchError`` listing every missing, unexpected or
      mis-shaped key. With ``strict=False`` these are logged and the model keeps
      ``fallback_params`` (default: a fresh init) for them.
    fallback_params: params to take what the checkpoint lacks from (``strict=False``).

  Returns:
    The nested params dict (numpy float32), ready for ``model.apply({'params': params}, x)``.
  """
  if model.scan_blocks:
    # Convert with the per-block twin of the model, then stack the blocks.
    if fallback_params is not None:
      fallback_params = scan_layout.unstack_blocks(fallback_params, model.depths)
    params = load_torch_checkpoint(source, model.clone(scan_blocks=False), strict,
                                   fallback_params)
    return scan_layout.stack_blocks(params, model.depths)
  sd = to_official_layout(read_state_dict(source), len(model.depths))
  expected = abstract_params(model)
  loaded: dict[Path, np.ndarray] = {}
  problems = []
  for key, value in sd.items():
    path = keys_lib.torch_key_to_path(key, expected)
    if path not in expected:
      problems.append(f"  unexpected in checkpoint: {key} {tuple(value.shape)}")
      continue
    target = expected[path].shape
    flax_value = _adapt(key, path, keys_lib.torch_to_flax_array(path, value), target, model)
    if flax_value.shape != target:
      problems.append(f"  shape mismatch: {key} checkpoint {tuple(value.shape)} vs model "
                      f"{keys_lib.torch_shape(path, target)}")
      continue
    loaded[path] = flax_value.astype(np.float32)
  for path, struct in expected.items():
    if path not in loaded and not any(f" {keys_lib.path_to_torch_key(path)} " in p
                                      for p in problems):
      problems.append(f"  missing from checkpoint: {keys_lib.path_to_torch_key(path)} "
                      f"(model shape {keys_lib.torch_shape(path, struct.shape)})")
  if problems:
    report = (f"checkpoint does not fit the model ({len(problems)} problem(s)):\n" +
              "\n".join(problems) + f"\ncheckpoint looks like: {_describe_checkpoint(sd)}" +
              f"\nmodel is:              {_describe_model(model)}")
    if strict:
      raise CheckpointMismatchError(
          report + "\nCreate the model that matches the checkpoint, or pass strict=False to "
          "load what fits and keep the model's own values for the rest.")
    logging.warning("%s\nstrict=False: keeping the model's own values for these.", report)
    fallback = flax.traverse_util.flatten_dict(
        fallback_params if fallback_params is not None else init_params(model))
    for path in expected:
      loaded.setdefault(path, np.asarray(fallback[path], np.float32))
  return flax.traverse_util.unflatten_dict(loaded)


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
      if any(shift):
        padded = [r + window_ops.padding_to_multiple(r, w) for r, w in zip(resolution, window)]
        out[prefix + "attn_mask"] = np.array(window_ops.shift_mask(*padded, window, shift))
  return out


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
  if model.scan_blocks:
    if not scan_layout.is_scanned(params):
      raise CheckpointMismatchError(
          "the model has scan_blocks=True but the params are per block (layers_i/blocks_j); "
          "export them with the model built with scan_blocks=False")
    return export_torch_state_dict(scan_layout.unstack_blocks(params, model.depths),
                                   model.clone(scan_blocks=False), layout, include_buffers,
                                   to_torch)
  flat = flax.traverse_util.flatten_dict(dict(params))
  expected = abstract_params(model)
  wrong = sorted(set(flat) ^ set(expected))
  wrong += sorted(p for p in flat if p in expected and flat[p].shape != expected[p].shape)
  if wrong:
    raise CheckpointMismatchError(
        "params do not belong to this model; differing paths: " +
        ", ".join("/".join(p) for p in wrong[:20]) + (" ..." if len(wrong) > 20 else ""))
  sd = {keys_lib.path_to_torch_key(p): keys_lib.flax_to_torch_array(p, np.asarray(v))
        for p, v in flat.items()}
  if include_buffers:
    if layout != "official":
      raise ValueError("timm's buffers are not persistent; include_buffers needs layout='official'")
    sd.update(_buffers(model))
  if layout == "timm":
    sd = {keys_lib.official_to_timm_key(k): v for k, v in sd.items()}
  if to_torch:
    import torch  # pylint: disable=import-outside-toplevel
    # Copies: the tensors must not share (read-only) memory with the params.
    sd = {k: torch.from_numpy(np.array(v, copy=True, order="C")) for k, v in sd.items()}
  return sd
