"""Weight decay of every shipped recipe, by official param name, against the official rule.

Each recipe's real model is built in the layout it trains (``scan_blocks=True``), one
``make_optimizer`` update with zero gradients is taken on ones-valued params, and the params
whose update is non-zero (only decoupled weight decay moves them) are mapped back to
official names. The expected set comes from timm's PyTorch model of the same variant and
the official ``set_weight_decay`` rule, written here independently of swin_jax's code.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nested_models import tiny_nested_model
from swin_jax import tasks
from swin_jax.convert.keys import path_to_torch_key
from swin_jax.models.scan_layout import per_block_paths
from swin_jax.train import config as config_lib
from swin_jax.train import optimizer as opt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py"))

# timm constructor arguments a recipe may override (the rest do not change param names).
TIMM_FIELDS = ("img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size",
               "num_classes")


def load_config(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# ---------------------------------------------------------------------------------------
# The oracle: timm model, official names, official rule.


def official_decays(name: str, shape: tuple[int, ...], version: int) -> bool:
  """microsoft/Swin-Transformer ``optimizer.py:set_weight_decay`` with the model's
  ``no_weight_decay()`` / ``no_weight_decay_keywords()``."""
  skip_list = {"absolute_pos_embed"}
  skip_keywords = ({"relative_position_bias_table"} if version == 1 else
                   {"cpb_mlp", "logit_scale", "relative_position_bias_table"})
  no_decay = (len(shape) == 1 or name.endswith(".bias") or name in skip_list
              or any(keyword in name for keyword in skip_keywords))
  return not no_decay


def official_params(config) -> tuple[dict[str, tuple[int, ...]], int]:
  """``({official name: shape}, version)`` of the recipe's model, built by timm (meta)."""
  import torch
  import timm
  from torch_oracle import timm_to_official
  name = config.model.name
  overrides = dict(config.model.overrides)
  # Unset override fields are None ("the model's own value").
  kwargs = {k: overrides[k] for k in TIMM_FIELDS if overrides.get(k) is not None}
  with torch.device("meta"):
    model = timm.create_model(name, pretrained=False, **kwargs)
  shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
  version = 2 if name.startswith("swinv2") else 1
  return timm_to_official(shapes), version


def official_decayed_set(config) -> tuple[set[str], set[str]]:
  """``(all official names, the ones the official rule decays)``."""
  shapes, version = official_params(config)
  return set(shapes), {n for n, s in shapes.items() if official_decays(n, s, version)}


# ---------------------------------------------------------------------------------------
# The JAX side.


def abstract_params(config):
  """The params the training loop builds for ``config`` (its task's model), abstract."""
  task = tasks.get_task(config)
  model = task.build_model()
  variables = jax.eval_shape(lambda: task.init_variables(model, jax.random.key(0)))
  return tasks.base.split_variables(variables)[0]


def by_official_name(tree, per_block_value) -> dict[str, object]:
  """``{official name: per_block_value(flax_path, leaf, m)}``, ``m`` the block's index
  along a stacked leaf's axis 0 (None for an unstacked leaf)."""
  out = {}
  for path, leaf in flax.traverse_util.flatten_dict(tree).items():
    blocks = per_block_paths(path, leaf.shape[0] if leaf.shape else None)
    stacked = blocks != [tuple(path)]
    for m, block_path in enumerate(blocks):
      out[path_to_torch_key(block_path)] = per_block_value(path, leaf, m if stacked else None)
  return out


def decayed_by_one_update(config, params) -> set[str]:
  """Official names whose update is non-zero after one zero-gradient update."""
  tx, _ = opt_lib.make_optimizer(config, total_steps=10, steps_per_epoch=1)

  @jax.jit
  def moved(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # Per block: any non-zero entry along the leaf's other axes.
    return jax.tree.map(lambda u: jnp.any(u != 0, axis=tuple(range(1, u.ndim)))
                        if u.ndim else u != 0, updates)

  flags = jax.device_get(moved(params))
  values = by_official_name(flags, lambda _, leaf, m: bool(np.any(leaf) if m is None
                                                           else leaf[m]))
  return {name for name, decayed in values.items() if decayed}


@functools.lru_cache(maxsize=None)
def recipe(path: str):
  """``(config, abstract params, official names, officially decayed names)``, built once
  for both tests of a recipe."""
  config = load_config(path)
  config_lib.validate_config(config)
  return (config, abstract_params(config)) + official_decayed_set(config)


def ones_like_abstract(abstract):
  # One compiled call, not one dispatch per leaf.
  return jax.jit(lambda: jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract))()


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=os.path.basename)
def test_recipe_decays_exactly_the_official_params(path):
  config, abstract, names, expected = recipe(path)
  ours = set(by_official_name(abstract, lambda *_: None))
  assert ours == names, sorted(ours ^ names)
  # Ones everywhere: decoupled decay moves a param by lr * wd, the zero gradient by 0.
  params = ones_like_abstract(abstract)
  decayed = decayed_by_one_update(config, params)
  assert decayed == expected, (f"wrongly decayed: {sorted(decayed - expected)}; "
                               f"wrongly not decayed: {sorted(expected - decayed)}")
  # The public helper agrees with what the optimizer does.
  assert opt_lib.decayed_official_names(abstract, config.optimizer) == expected


# ---------------------------------------------------------------------------------------
# The rule before issue 10: by Flax rank and path components. Scanned norm scales are 2-D.

OLD_NO_DECAY_KEYWORDS = ("absolute_pos_embed", "relative_position_bias_table", "cpb_mlp",
                         "logit_scale", "mask_token")


def old_rule_decays(path: tuple[str, ...], flax_ndim: int) -> bool:
  if flax_ndim <= 1 or path[-1].endswith("bias"):
    return False
  return not any(key in name for name in path for key in OLD_NO_DECAY_KEYWORDS)


# Official names the old rule decayed that the official code does not (every stacked
# norm1/norm2 weight: V1's LayerNorms and V2's zero-initialised post-norm gains). Measured.
OLD_RULE_WRONGLY_DECAYED = {
    "swin_t_1k.py": 24, "swin_s_1k.py": 48, "swin_b_1k.py": 48, "swin_b_22k.py": 48,
    "swin_l_22k.py": 48, "swin_b_22kto1k.py": 48, "swin_b_384_ft.py": 48,
    "swinv2_t_1k.py": 24, "swinv2_b_22k.py": 48, "swinv2_b_22kto1k_256.py": 48,
    "demo.py": 0,   # per-block layout: the old rule was right there
}


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=os.path.basename)
def test_old_rank_rule_decayed_stacked_norms(path):
  """Documents the bug: the old rule fails the test above on every scanned recipe."""
  _, abstract, _, expected = recipe(path)
  old = by_official_name(abstract, lambda p, leaf, _: old_rule_decays(p, len(leaf.shape)))
  old = {name for name, decays in old.items() if decays}
  wrong = old - expected
  assert not expected - old
  assert all(name.endswith((".norm1.weight", ".norm2.weight")) for name in wrong), sorted(wrong)
  assert len(wrong) == OLD_RULE_WRONGLY_DECAYED[os.path.basename(path)]


# ---------------------------------------------------------------------------------------
# The mmseg / mmdet rule on a nested backbone.

# configs/_base_ of Swin's mmseg/mmdet forks: optimizer paramwise_cfg.
MMSEG_CUSTOM_KEYS = {"absolute_pos_embed": dict(decay_mult=0.0),
                     "relative_position_bias_table": dict(decay_mult=0.0),
                     "norm": dict(decay_mult=0.0)}


def mmcv_weight_decay(name: str, base_wd: float, custom_keys: dict) -> float:
  """mmcv ``DefaultOptimizerConstructor.add_params`` for one param: the longest custom key
  (ties: alphabetical) that is a substring of the full name sets ``decay_mult``; no key:
  the base decay (bias/norm multipliers are unset in Swin's configs)."""
  for key in sorted(sorted(custom_keys), key=len, reverse=True):
    if key in name:
      return base_wd * custom_keys[key].get("decay_mult", 1.0)
  return base_wd


def test_mmseg_rule_on_a_nested_scanned_backbone():
  config = config_lib.base_config()
  config.optimizer.update(dict(no_decay_1d_and_bias=False, weight_decay=0.05,
                               no_decay_keywords=("norm", "absolute_pos_embed",
                                                  "relative_position_bias_table")))
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)

  def shapes(model):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]

  # A decode head's BatchNorm (mmseg ConvModule ``bn``) next to the model's own head.
  bn = {"bn": {"scale": jax.ShapeDtypeStruct((16,), jnp.float32),
               "bias": jax.ShapeDtypeStruct((16,), jnp.float32)}}
  scanned = dict(shapes(tiny_nested_model(scan_blocks=True)), decode_head=bn)
  assert "block_pairs" in scanned["backbone"]["layers_0"]
  # Official names from the per-block layout, through the converter's key map only.
  per_block = dict(shapes(tiny_nested_model(scan_blocks=False)), decode_head=bn)
  names = {path_to_torch_key(p) for p in flax.traverse_util.flatten_dict(per_block)}
  expected = {n for n in names if mmcv_weight_decay(n, 0.05, MMSEG_CUSTOM_KEYS) != 0}

  params = ones_like_abstract(scanned)
  decayed = decayed_by_one_update(config, params)
  assert decayed == expected, sorted(decayed ^ expected)
  assert opt_lib.decayed_official_names(scanned, config.optimizer) == expected
  for name in ("backbone.layers.0.blocks.1.attn.qkv.bias", "backbone.patch_embed.proj.bias",
               "head.bias", "head.weight", "decode_head.bn.weight", "decode_head.bn.bias"):
    assert name in decayed, name
  for name in ("backbone.layers.0.blocks.1.norm1.weight", "backbone.norm0.weight",
               "backbone.layers.0.downsample.norm.bias",
               "backbone.layers.1.blocks.0.attn.relative_position_bias_table"):
    assert name not in decayed, name
  # The classification rule on the same tree: biases and 1-D params stop decaying.
  classification = opt_lib.decayed_official_names(scanned, config_lib.base_config().optimizer)
  assert classification == {n for n in expected if not n.endswith(".bias")
                            and n != "decode_head.bn.weight"}


# ---------------------------------------------------------------------------------------
# The UperNet recipes (configs/upernet/*.py): the mmseg rule on the official state dict.

UPERNET_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "upernet", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py"))
# Tensors of UperNet Swin-T that the official rule leaves undecayed: every backbone LayerNorm
# (patch_embed.norm, norm1/norm2 of 12 blocks, 3 downsample norms, norm0..3: 64 tensors)
# and the 12 relative-position bias tables.
SWIN_T_NO_DECAY = 76


def official_upernet_shapes(config) -> dict[str, tuple[int, ...]]:
  """``{official state-dict name: shape}`` of the recipe's UperNet, built in PyTorch: the
  backbone from timm's Swin (official names, the classifier's ``norm``/``head`` replaced
  by the dense backbone's ``norm0..3``), the heads from mmseg 1.2.2's ``UPerHead`` and
  ``FCNHead`` (meta tensors)."""
  import torch
  import timm
  from mm_oracle import mmseg_heads
  from torch_oracle import timm_to_official
  model = tasks.get_task(config).build_model()   # swin_jax's UperNet: only its sizes
  swin_fields = model.backbone
  timm_name = {"upernet_swin_tiny_patch4_window7_512": "swin_tiny_patch4_window7_224",
               "upernet_swin_small_patch4_window7_512": "swin_small_patch4_window7_224",
               "upernet_swin_base_patch4_window7_512": "swin_base_patch4_window7_224"}
  kwargs = {k: getattr(swin_fields, k) for k in ("patch_size", "embed_dim", "depths",
                                                  "num_heads", "window_size")}
  kwargs["depths"], kwargs["num_heads"] = tuple(kwargs["depths"]), tuple(kwargs["num_heads"])
  with torch.device("meta"):
    swin = timm.create_model(timm_name[config.model.name], pretrained=False, num_classes=0,
                             img_size=kwargs["patch_size"] * 8 * kwargs["window_size"],
                             **kwargs)
    backbone = timm_to_official({k: tuple(p.shape) for k, p in swin.named_parameters()})
    backbone = {k: s for k, s in backbone.items() if not k.startswith(("norm.", "head."))}
    widths = [kwargs["embed_dim"] * 2 ** i for i in range(len(kwargs["depths"]))]
    for i, width in enumerate(widths):
      backbone.update({f"norm{i}.weight": (width,), f"norm{i}.bias": (width,)})
    decode, aux = mmseg_heads(widths, model.channels, model.aux_channels, model.num_classes,
                              tuple(model.pool_scales), aux_in_index=model.aux_in_index)
  shapes = {f"backbone.{k}": s for k, s in backbone.items()}
  for prefix, head in (("decode_head.", decode), ("auxiliary_head.", aux)):
    shapes.update({prefix + k: tuple(p.shape) for k, p in head.named_parameters()})
  return shapes


def mmseg_rule_decays(name: str) -> bool:
  """The forks' ``paramwise_cfg``: decay_mult 0 for these substrings, nothing else."""
  return not any(key in name for key in MMSEG_CUSTOM_KEYS)


def test_upernet_recipes_are_found():
  assert {"swin_t_ade20k_160k.py", "swin_s_ade20k_160k.py", "swin_b_ade20k_160k.py",
          "demo.py"} <= {os.path.basename(p) for p in UPERNET_CONFIGS}


def assert_one_update_decays_the_name_rule(config, official: dict) -> tuple[set, set]:
  """Asserts that the recipe's model has exactly the ``official`` names and that one AdamW
  update (and ``decayed_official_names``) decays exactly those the OpenMMLab forks' name rule
  decays; returns ``(decayed, expected)``."""
  abstract = abstract_params(config)
  ours = by_official_name(abstract, lambda *_: None)
  assert set(ours) == set(official), sorted(set(ours) ^ set(official))
  expected = {n for n in official if mmseg_rule_decays(n)}
  decayed = decayed_by_one_update(config, ones_like_abstract(abstract))
  assert decayed == expected, (f"wrongly decayed: {sorted(decayed - expected)}; "
                               f"wrongly not decayed: {sorted(expected - decayed)}")
  assert opt_lib.decayed_official_names(abstract, config.optimizer) == expected
  return decayed, expected


@pytest.mark.parametrize("path", UPERNET_CONFIGS, ids=os.path.basename)
def test_upernet_recipe_decays_exactly_the_mmseg_rule(path):
  from swin_jax.convert import upernet as upernet_convert
  config = load_config(path)
  config_lib.validate_config(config)
  official = official_upernet_shapes(config)
  # mmseg's PPM branch psp_modules.i.1.conv is psp_modules.i.conv here (no pooling module).
  official = {upernet_convert.to_model_key(k): s for k, s in official.items()}
  decayed, expected = assert_one_update_decays_the_name_rule(config, official)
  # Biases and the heads' BatchNorm weights (".bn.", not "norm") are decayed.
  assert "decode_head.fpn_bottleneck.bn.weight" in decayed
  assert "backbone.layers.0.blocks.0.attn.qkv.bias" in decayed
  if os.path.basename(path) == "swin_t_ade20k_160k.py":
    assert len(official) - len(expected) == SWIN_T_NO_DECAY


# ---------------------------------------------------------------------------------------
# SimMIM pretraining (microsoft/SimMIM optimizer.py ``build_pretrain_optimizer``).


def simmim_official_decays(name: str, shape: tuple[int, ...]) -> bool:
  """SimMIM's ``set_weight_decay``: 1-D, biases, ``encoder.absolute_pos_embed`` and
  ``encoder.mask_token`` (the encoder's ``no_weight_decay()``, prefixed), and names with
  ``encoder.relative_position_bias_table`` (its keywords) skip decay."""
  skip_list = {"encoder.absolute_pos_embed", "encoder.mask_token"}
  no_decay = (len(shape) == 1 or name.endswith(".bias") or name in skip_list
              or "relative_position_bias_table" in name)
  return not no_decay


def test_simmim_rule_skips_the_mask_token_in_the_scanned_layout():
  import swin_jax  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.optimizer.weight_decay = 0.05
  tiny = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4,
              img_size=64, ape=True)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)

  def shapes(scan_blocks):
    model = swin_jax.create_model("simmim_swin_tiny_window6_192", **tiny,
                                  scan_blocks=scan_blocks)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]

  official = {path_to_torch_key(p): s.shape
              for p, s in flax.traverse_util.flatten_dict(shapes(False)).items()}
  # The mask token is (1, 1, C): only its name keeps it from decay, as in the official code.
  assert official["encoder.mask_token"] == (1, 1, 16)
  expected = {n for n, shape in official.items() if simmim_official_decays(n, shape)}
  scanned = shapes(True)
  assert "block_pairs" in scanned["encoder"]["layers_0"]
  decayed = decayed_by_one_update(config, ones_like_abstract(scanned))
  assert decayed == expected, (f"wrongly decayed: {sorted(decayed - expected)}; "
                               f"wrongly not decayed: {sorted(expected - decayed)}")
  assert opt_lib.decayed_official_names(scanned, config.optimizer) == expected
  assert "decoder.0.weight" in decayed and "decoder.0.bias" not in decayed
  assert not {"encoder.mask_token", "encoder.absolute_pos_embed"} & decayed


# ---------------------------------------------------------------------------------------
# The detection recipes (configs/detection/*.py): the mmdet fork's rule on the official
# Mask R-CNN state dict.

DETECTION_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "detection", "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py"))
TIMM_BACKBONES = {"tiny": "swin_tiny_patch4_window7_224", "small": "swin_small_patch4_window7_224",
                  "base": "swin_base_patch4_window7_224"}


def official_detector_shapes(config) -> dict[str, tuple[int, ...]]:
  """``{official state-dict name: shape}`` of the recipe's Mask R-CNN, built in PyTorch (meta
  tensors): the backbone from timm's Swin (official names; the classifier's ``norm``/``head``
  replaced by ``norm0..3``), the neck and heads from mmdet 3.3.0's ``FPN``, ``RPNHead``,
  ``Shared2FCBBoxHead`` and ``FCNMaskHead`` (the official fork's module names)."""
  import torch
  import timm
  import mm_stubs  # noqa: F401  (mmcv.ops stubbed; none of these modules calls it)
  from mmdet.models.dense_heads import RPNHead
  from mmdet.models.necks import FPN
  from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
  from mmdet.models.roi_heads.mask_heads import FCNMaskHead
  from torch_oracle import timm_to_official
  model = tasks.get_task(config).build_model()   # swin_jax's detector: only its sizes
  swin = model.backbone
  kwargs = dict(patch_size=swin.patch_size, embed_dim=swin.embed_dim, depths=tuple(swin.depths),
                num_heads=tuple(swin.num_heads), window_size=swin.window_size)
  size = next(s for s in TIMM_BACKBONES if s in config.model.name)
  widths = [swin.embed_dim * 2 ** i for i in range(len(swin.depths))]
  neck = model.neck_channels
  with torch.device("meta"):
    backbone = timm.create_model(TIMM_BACKBONES[size], pretrained=False, num_classes=0,
                                 img_size=swin.patch_size * 8 * swin.window_size, **kwargs)
    heads = {
        "neck.": FPN(in_channels=widths, out_channels=neck, num_outs=5),
        "rpn_head.": RPNHead(in_channels=neck, feat_channels=model.rpn_channels,
                             anchor_generator=dict(type="AnchorGenerator", scales=[8],
                                                   ratios=[0.5, 1.0, 2.0],
                                                   strides=[4, 8, 16, 32, 64])),
        "roi_head.bbox_head.": Shared2FCBBoxHead(in_channels=neck,
                                                 fc_out_channels=model.fc_channels,
                                                 roi_feat_size=7,
                                                 num_classes=model.num_classes),
    }
    if model.with_mask:
      heads["roi_head.mask_head."] = FCNMaskHead(num_convs=4, in_channels=neck,
                                                 conv_out_channels=model.mask_channels,
                                                 num_classes=model.num_classes)
    official = timm_to_official({k: tuple(p.shape) for k, p in backbone.named_parameters()})
  shapes = {f"backbone.{k}": s for k, s in official.items()
            if not k.startswith(("norm.", "head."))}
  for i, width in enumerate(widths):
    shapes.update({f"backbone.norm{i}.weight": (width,), f"backbone.norm{i}.bias": (width,)})
  for prefix, head in heads.items():
    shapes.update({prefix + k: tuple(p.shape) for k, p in head.named_parameters()})
  return shapes


def test_detection_recipes_are_found():
  assert {"mask_rcnn_swin_t_1x_coco.py", "mask_rcnn_swin_t_3x_coco.py", "demo.py"} <= {
      os.path.basename(p) for p in DETECTION_CONFIGS}


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=os.path.basename)
def test_detection_recipe_decays_exactly_the_mmdet_rule(path):
  config = load_config(path)
  config_lib.validate_config(config)
  official = official_detector_shapes(config)
  decayed, expected = assert_one_update_decays_the_name_rule(config, official)
  # Biases are decayed, in the backbone and in every head; norms and bias tables are not.
  for name in ("backbone.layers.0.blocks.0.attn.qkv.bias", "backbone.patch_embed.proj.bias",
               "neck.lateral_convs.0.conv.bias", "rpn_head.rpn_cls.bias",
               "roi_head.bbox_head.fc_cls.bias", "roi_head.mask_head.conv_logits.bias"):
    assert name in decayed, name
  for name in ("backbone.norm3.weight", "backbone.layers.2.downsample.norm.bias",
               "backbone.layers.1.blocks.1.attn.relative_position_bias_table"):
    assert name not in decayed, name
  if "swin_t" in os.path.basename(path):
    # The 76 of UperNet Swin-T: the detection heads hold no norm.
    assert len(official) - len(expected) == SWIN_T_NO_DECAY
