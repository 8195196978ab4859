"""Convert a PyTorch Swin checkpoint to swin_jax params, or export params back to PyTorch.

  python -m swin_jax.convert --checkpoint swin_tiny_patch4_window7_224.pth \
      --model swin_tiny_patch4_window7_224 --out converted/swin_t
  python -m swin_jax.convert --checkpoint swin_base_patch4_window7_224_22k.pth \
      --model swin_base_patch4_window12_384 --out converted/swin_b_384   # W7 -> W12, 22K -> 1K
  python -m swin_jax.convert --params converted/swin_t --to_torch swin_t.pth [--layout timm]
  python -m swin_jax.convert --checkpoint epoch_149.pth --model swin_unet_tiny_patch4_window7_224 \
      --num_classes 9 --out converted/swin_unet [--window_size 8 --img_size 256]
  python -m swin_jax.convert ... --override depths=2,2,6,2 --override embed_dim=128  # any field

Swin-Unet checkpoints (HuCaoFighting/Swin-Unet: ``swin_unet.``-prefixed keys as ``ViT_seg``
saves them, or bare ``SwinTransformerSys`` keys; wrapped in ``{'model': ...}`` or not) load
into ``swin_unet_*`` models; a checkpoint of another window size has its encoder and decoder
bias tables resized. Exported Swin-Unet params are written as ``ViT_seg`` saves them: a bare
state dict with the ``swin_unet.`` prefix and the buffers, which the official ``test.py``
loads strictly.
"""

from __future__ import annotations

import os

import ast

from absl import app, flags, logging

from swin_jax import cli
from swin_jax.convert import params_dir
from swin_jax.convert import swin_unet
from swin_jax.convert.torch_checkpoint import (ALL_PROBLEMS, export_torch_state_dict,
                                               load_torch_variables)
from swin_jax.models import registry

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint (.pth/.pt/.bin/.safetensors/.npz).")
flags.DEFINE_string("model", None, f"Model name, one of: {', '.join(registry.list_models())}.")
flags.DEFINE_string("out", None, "Directory to write the converted params to.")
flags.DEFINE_integer("num_classes", None, "Override the model's number of classes.")
flags.DEFINE_integer("img_size", None, "Override the model's image size.")
flags.DEFINE_integer("window_size", None, "Override the model's window size.")
flags.DEFINE_multi_string("override", [], "Any other model field as NAME=VALUE, the value a "
                          "Python literal (depths=2,2,6,2; embed_dim=128); repeatable.")
flags.DEFINE_bool("strict", True, "Fail on any missing/unexpected/mis-shaped key.")
flags.DEFINE_string("params", None, "Converted-params directory to export (with --to_torch).")
flags.DEFINE_string("to_torch", None, "Write the params of --params as a PyTorch .pth here.")
flags.DEFINE_enum("layout", "official", ["official", "timm"], "Key layout of --to_torch.")
flags.DEFINE_enum("label_space", "official", ["official", "fall11"],
                  "Label order of a 21,841-class head mapped to 1K: 'official' (official Swin "
                  "22K checkpoints) or 'fall11' (sorted fall11: swin_jax's ImageNet-22K runs).")


def parse_overrides(items: list[str]) -> dict[str, object]:
  """``['depths=2,2', 'dtype=bfloat16']`` -> ``{'depths': (2, 2), 'dtype': 'bfloat16'}``:
  Python literals, anything else as a string."""
  out = {}
  for item in items:
    name, sep, text = item.partition("=")
    if not sep or not name.strip():
      raise app.UsageError(f"--override {item!r}: expected NAME=VALUE")
    try:
      out[name.strip()] = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      out[name.strip()] = text.strip()
  return out


def _to_jax() -> None:
  if not (FLAGS.checkpoint and FLAGS.model and FLAGS.out):
    raise app.UsageError("converting needs --checkpoint, --model and --out")
  overrides = parse_overrides(FLAGS.override)
  overrides.update({k: getattr(FLAGS, k) for k in ("num_classes", "img_size", "window_size")
                    if getattr(FLAGS, k) is not None})
  try:
    model = registry.create_model(FLAGS.model, **overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if swin_unet.is_swin_unet(model):
    params, report = swin_unet.load_swin_unet(FLAGS.checkpoint, model,
                                              allow=() if FLAGS.strict else ALL_PROBLEMS)
    print(report.summary())
    variables = {}
  else:
    # UperNet's BatchNorm statistics come with its params (``{'batch_stats': ...}``).
    variables = load_torch_variables(FLAGS.checkpoint, model, strict=FLAGS.strict,
                                     label_space=FLAGS.label_space)
    params = variables.pop("params")
  out = params_dir.save_params_dir(FLAGS.out, params, FLAGS.model, overrides,
                                   model_state=variables)
  logging.info("wrote %s (%s)", out, registry.resolve_name(FLAGS.model))
  print(f"converted {FLAGS.checkpoint} -> {out}")


def _to_torch() -> None:
  import torch  # pylint: disable=import-outside-toplevel
  model, params = params_dir.load_params_dir(FLAGS.params)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.to_torch)), exist_ok=True)
  if swin_unet.is_swin_unet(model):
    if FLAGS.layout != "official":
      raise app.UsageError("Swin-Unet checkpoints have one layout; drop --layout timm")
    # As the official trainer saves ViT_seg: its state_dict(), buffers included.
    torch.save(swin_unet.export_swin_unet_state_dict(params, model, include_buffers=True,
                                                     to_torch=True), FLAGS.to_torch)
    print(f"exported {FLAGS.params} -> {FLAGS.to_torch} (official Swin-Unet layout)")
    return
  state_dict = export_torch_state_dict(params, model, layout=FLAGS.layout,
                                       include_buffers=FLAGS.layout == "official", to_torch=True)
  torch.save({"model": state_dict} if FLAGS.layout == "official" else state_dict,
             FLAGS.to_torch)
  print(f"exported {FLAGS.params} -> {FLAGS.to_torch} ({FLAGS.layout} layout)")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if FLAGS.to_torch or FLAGS.params:
    if not (FLAGS.to_torch and FLAGS.params):
      raise app.UsageError("exporting needs both --params and --to_torch")
    _to_torch()
  else:
    _to_jax()


if __name__ == "__main__":
  cli.run(main, command="convert")
