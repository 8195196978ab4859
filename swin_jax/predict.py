"""Classify one image with a Swin model and print the top classes.

  python -m swin_jax.predict --model swin_tiny_patch4_window7_224 \
      --checkpoint swin_tiny_patch4_window7_224.pth --image cat.jpg
  python -m swin_jax.predict --model swin_t --image chelsea     # random weights: a smoke run

``--checkpoint`` is a PyTorch file (official/timm) or a directory written by
``python -m swin_jax.convert``. Without one the model keeps random weights and the
classes mean nothing (the run still shows shapes, parameter count and timings).
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from swin_jax import cli
from swin_jax.convert import params_dir
from swin_jax.convert.torch_checkpoint import init_params, load_torch_checkpoint
from swin_jax.data import class_names, images
from swin_jax.models import registry

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "swin_tiny_patch4_window7_224",
                    f"Model name, one of: {', '.join(registry.list_models())}.")
flags.DEFINE_string("checkpoint", None, "PyTorch checkpoint or converted-params directory.")
flags.DEFINE_string("image", "chelsea", "Image path, or a bundled scikit-image name "
                    f"({', '.join(images.BUNDLED_IMAGES)}).")
flags.DEFINE_integer("num_classes", None, "Override the head size (e.g. 21841 for 22K).")
flags.DEFINE_integer("top", 5, "How many classes to print.")


def load_model_and_params(name: str, checkpoint: str | None, **overrides):
  """``(model, params, source)``: from a converted dir, a PyTorch file, or a random init."""
  if checkpoint and os.path.isdir(checkpoint):
    model, params = params_dir.load_params_dir(checkpoint)
    return model, params, checkpoint
  model = registry.create_model(name, **overrides)
  if checkpoint:
    return model, load_torch_checkpoint(checkpoint, model), checkpoint
  return model, init_params(model), "random init (no --checkpoint: classes are meaningless)"


def top_classes(logits: np.ndarray, k: int) -> list[tuple[int, str, float]]:
  """``[(index, name, probability)]`` of the ``k`` most probable classes of ``(classes,)``."""
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)))
  names = class_names.class_names(logits.shape[-1])
  order = np.argsort(-probs)[:k]
  return [(int(i), names[i], float(probs[i])) for i in order]


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  overrides = {"num_classes": FLAGS.num_classes} if FLAGS.num_classes else {}
  image = images.load_image(FLAGS.image)  # before the weights: a wrong path fails at once
  model, params, source = load_model_and_params(FLAGS.model, FLAGS.checkpoint, **overrides)
  size = model.img_size if isinstance(model.img_size, int) else model.img_size[0]
  pixels = images.eval_transform(image, size, crop=size < 384)
  batch = jnp.asarray(pixels[None])
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  start = time.perf_counter()
  compiled = forward.lower(params, batch).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  logits = np.asarray(compiled(params, batch))[0]
  run_s = time.perf_counter() - start

  print(f"model      {FLAGS.model} (window {model.window_size}, "
        f"{num_params:,} params)")
  print(f"weights    {source}")
  print(f"image      {FLAGS.image} -> input {tuple(batch.shape)} (B, H, W, C) float32")
  print(f"logits     {logits.shape[0]} classes; compile {compile_s:.2f} s, forward {run_s:.3f} s")
  if logits.shape[0] == class_names.NUM_CLASSES_22K:
    print(f"note       22K names past head index ~{class_names.APPROXIMATE_22K_FROM} "
          "are approximate (official head order differs from fall11)")
  for rank, (index, name, prob) in enumerate(top_classes(logits, FLAGS.top), 1):
    print(f"  {rank}. {prob:7.2%}  [{index:5d}] {name}")


if __name__ == "__main__":
  cli.run(main, command="predict")
