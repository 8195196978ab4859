"""Draw a Swin model's attention on one image: PNG figures in --out.

  python -m swin_jax.visualize --model swin_tiny_patch4_window7_224 --image chelsea \\
      --out figures/ [--checkpoint swin_tiny.pth | converted_dir | RUN_DIR] \\
      [--query 112,112] [--stage 0 --block 1 --head 2]
  python -m swin_jax.visualize --checkpoint /tmp/wd_C --image digit:300 --out figures/

Writes
  query_s{S}_b{B}.png  the input with the block's window grid (shift undone) and the query,
                       then where the query looked, one panel per head (--head: that one);
  blocks.png           attention received per token (mean over queries and heads) for every
                       block of every stage, on the image, each with its window grid;
  rollout.png          attention rollout (0.5 A + 0.5 I per block, 2x2 merges averaged):
                       the query within its stage, the query's last-stage token down to the
                       patches, and the mean over all last-stage tokens.

--checkpoint: a PyTorch file, a converted-params directory (python -m swin_jax.convert), or
a swin_jax training run directory (config.json + checkpoints/; its own model is used, --model
is ignored). Without one the weights are random and the maps only show the mechanics.
--image: a path, a bundled name (chelsea, astronaut, coffee, rocket), or digit:N, the N-th
held-out example of the demo dataset (resized to the model's img_size like the demo's eval).
--query: pixel (y, x) in the model input (after resizing); default its centre.
"""

from __future__ import annotations

import os
import time

from absl import app, flags, logging
import numpy as np

from swin_jax import cli

# --model, --checkpoint, --image and --num_classes are predict's flags (defined when it is
# imported); --image here also accepts digit:N.
from swin_jax import predict  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output directory for the PNG figures.")
flags.DEFINE_string("query", None, "Query pixel 'y,x' in the model input; default the centre.")
flags.DEFINE_integer("stage", 0, "Stage of the per-head query figure.")
flags.DEFINE_integer("block", 1, "Block of the per-head query figure (odd blocks are shifted).")
flags.DEFINE_integer("head", None, "Only this head in the query figure (default: all).")
flags.mark_flag_as_required("out")

DIGIT_PREFIX = "digit:"


def load_model(name: str, checkpoint: str | None, **overrides):
  """``(model, params, source)`` from a run directory, a converted dir, a .pth or nothing."""
  from swin_jax.train import init_from  # pylint: disable=import-outside-toplevel
  if checkpoint and os.path.exists(os.path.join(checkpoint, init_from.RUN_CONFIG_FILE)):
    model, params = init_from.latest_run_params(checkpoint)
    return model, params, f"training run {checkpoint} (latest checkpoint)"
  return predict.load_model_and_params(name, checkpoint, **overrides)


def load_input(image: str, size: int) -> tuple[np.ndarray, str]:
  """``(pixels (size, size, 3) float32 normalised, description)``."""
  from swin_jax.data import images  # pylint: disable=import-outside-toplevel
  from swin_jax.data import transforms  # pylint: disable=import-outside-toplevel
  if image.startswith(DIGIT_PREFIX):
    from swin_jax.data import demo_dataset  # pylint: disable=import-outside-toplevel
    index = int(image[len(DIGIT_PREFIX):])
    digits, labels = demo_dataset.demo_splits()["test"]
    if not 0 <= index < len(digits):
      raise app.UsageError(f"--image {image}: the demo test split has {len(digits)} digits")
    # The demo's eval transform: grey -> RGB, direct bicubic resize (eval_crop=False).
    pil = transforms.to_pil_rgb(digits[index])
    return images.eval_transform(pil, size, crop=False), (f"held-out digit #{index} "
                                                          f"(label {labels[index]})")
  return images.eval_transform(images.load_image(image), size, crop=size < 384), image


def parse_query(text: str | None, image_hw) -> tuple[int, int]:
  if text is None:
    return image_hw[0] // 2, image_hw[1] // 2
  try:
    y, x = (int(v) for v in text.split(","))
  except ValueError as e:
    raise app.UsageError(f"--query must be 'y,x' in pixels, got {text!r}") from e
  if not (0 <= y < image_hw[0] and 0 <= x < image_hw[1]):
    raise app.UsageError(f"--query {y},{x} is outside the {image_hw[0]}x{image_hw[1]} input")
  return y, x


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # Imported here so --help stays fast.
  from swin_jax.data import class_names  # pylint: disable=import-outside-toplevel
  from swin_jax.visualize import attention_maps as am  # pylint: disable=import-outside-toplevel
  from swin_jax.visualize import plots  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  overrides = {"num_classes": FLAGS.num_classes} if FLAGS.num_classes else {}
  model, params, source = load_model(FLAGS.model, FLAGS.checkpoint, **overrides)
  load_s = time.perf_counter() - start
  _, swin = am.find_backbone(model)  # the model itself, or a task model's backbone
  size = swin.img_size if isinstance(swin.img_size, int) else swin.img_size[0]
  pixels, described = load_input(FLAGS.image, size)
  image_hw = pixels.shape[:2]
  query = parse_query(FLAGS.query, image_hw)
  key = (FLAGS.stage, FLAGS.block)
  geometries = am.model_geometry(model, image_hw)
  if key not in geometries:
    raise app.UsageError(f"--stage {key[0]} --block {key[1]}: the model has depths "
                         f"{tuple(swin.depths)}")

  logits, probs = am.collect_attention(model, params, pixels[None])
  probs = {k: p[0] for k, p in probs.items()}
  forward_s = time.perf_counter() - start - load_s
  top = int(np.argmax(logits[0]))
  name = class_names.class_names(logits.shape[-1])[top]
  if FLAGS.image.startswith(DIGIT_PREFIX):  # the demo head: class i is the digit i
    name = f"digit {top}"
  prediction = f"predicted {name}"
  if FLAGS.checkpoint:
    weights = f"weights {os.path.basename(os.path.normpath(FLAGS.checkpoint))}"
  else:
    weights = "RANDOM weights"
  header = f"{described}; {weights}; {prediction}"
  os.makedirs(FLAGS.out, exist_ok=True)
  image = plots.display_image(pixels)
  written = []

  # (a) The query, per head, in the chosen block.
  geometry = geometries[key]
  token = (query[0] // geometry.cell, query[1] // geometry.cell)
  head_maps = am.to_pixels(am.query_attention(probs[key], geometry, token), geometry.cell,
                           image_hw)
  head_ids = list(range(len(head_maps)))
  if FLAGS.head is not None:
    if not 0 <= FLAGS.head < len(head_maps):
      raise app.UsageError(f"--head {FLAGS.head}: block {key} has {len(head_maps)} heads")
    head_ids = [FLAGS.head]
    head_maps = head_maps[head_ids]
  fig = plots.plot_query_heads(
      image, head_maps, geometry, query,
      f"{plots.block_label(key, geometry)}, query pixel {query} (token {token})\n{header}",
      head_ids)
  written.append(plots.save(fig, os.path.join(FLAGS.out, f"query_s{key[0]}_b{key[1]}.png")))

  # (b) Attention received per token, every block.
  maps = {k: am.to_pixels(am.received_attention(p, geometries[k]).mean(0) *
                          geometries[k].num_tokens, geometries[k].cell, image_hw)
          for k, p in probs.items()}
  fig = plots.plot_block_maps(
      image, maps, geometries, "attention received per token (query and head mean; 1 = "
      f"uniform; colours min..max)\n{header}")
  written.append(plots.save(fig, os.path.join(FLAGS.out, "blocks.png")))

  # (c) Rollout.
  grids = am.stage_grids(model, image_hw)
  dense = {k: am.dense_attention(p.mean(1, keepdims=True), geometries[k])[0]
           for k, p in probs.items()}
  stage, last = key[0], len(grids) - 1
  cell0 = geometries[0, 0].cell
  stage_token = token[0] * grids[stage][1] + token[1]
  within = am.model_rollout(dense, grids, last_stage=stage, first_stage=stage,
                            rows=[stage_token])[0].reshape(grids[stage])
  last_cell = geometries[last, 0].cell
  last_token = (query[0] // last_cell) * grids[last][1] + query[1] // last_cell
  full = am.model_rollout(dense, grids)  # (T_last, T_0)
  panels = [
      ("input", None),
      (f"stage {stage} rollout, query", am.to_pixels(within, geometry.cell, image_hw)),
      ("model rollout, query's last token",
       am.to_pixels(full[last_token].reshape(grids[0]), cell0, image_hw)),
      ("model rollout, all last tokens",
       am.to_pixels(full.mean(0).reshape(grids[0]), cell0, image_hw)),
  ]
  fig = plots.plot_panels(image, panels, f"attention rollout (0.5 A + 0.5 I, 2x2 merges "
                          f"averaged)\n{header}", query)
  written.append(plots.save(fig, os.path.join(FLAGS.out, "rollout.png")))

  print(f"model   {type(model).__name__} img {size}, depths {tuple(swin.depths)}, "
        f"window {swin.window_size}; {source}")
  print(f"image   {described}; {prediction}")
  print(f"time    load/init {load_s:.1f} s, forward (incl. compile) {forward_s:.1f} s, total "
        f"{time.perf_counter() - start:.1f} s")
  for path in written:
    print(f"wrote   {path}")


if __name__ == "__main__":
  cli.run(main, command="visualize")
