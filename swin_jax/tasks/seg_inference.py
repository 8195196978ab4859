"""mmseg's test-time inference on static canvases: whole image, sliding window, and the
multi-scale + flip test of the official ms+flip numbers. Pure and jit-able.

    scores = predict(apply_fn, images, image_sizes, label_size, label_canvas,
                     mode="whole" | "slide", crop=(512, 512), stride=(341, 341), flip=False)

``apply_fn(images (B, h, w, 3)) -> logits (B, h', w', K)`` is the model's decode output,
which mmseg's ``encode_decode`` resizes bilinearly to the input ``(h, w)`` (UperNet: the
1/4-scale decode logits; a model with full-resolution logits: ``h' = h``). Each image lies
zero-padded (bottom/right) on a static canvas ``(B, Hc, Wc, 3)`` with its valid size
``(B, 2)``; the output is at the original label size ``label_size (B, 2)`` on a static label
canvas, zero outside it. So one program serves every image of a bucket.

What each mode mirrors (mmseg 1.2.2 ``EncoderDecoder`` and the official fork, mmseg 0.11):

* ``whole_inference``: the logits at the canvas (``encode_decode`` resizes them to the
  padded input, mmseg 1.2.2's ``pad_shape``), cropped to the valid image (``postprocess_result``
  removes ``padding_size``) and resized bilinearly, align_corners False, to the original size
  (``ori_shape``). The model sees the canvas padding, as in mmseg 1.2.2 with a test-time
  ``size``/``size_divisor``; the official fork (batch 1, no padding) sees none, so the two
  differ a little near the bottom/right edge of a padded image.
* ``slide_inference``: windows of ``crop`` every ``stride`` over the *valid* image,
  ``h_grids = max(h - crop + stride - 1, 0) // stride + 1``, the last one shifted back to end
  at the image edge; logits summed and divided by the per-pixel window count, then resized to
  the original size. The window count is static (that of the full canvas); windows past the
  image's own grid weigh 0. A window never reaches the padding while the image is at least
  ``crop`` along that axis: the result then equals mmseg's exactly. An image smaller than the
  crop: mmseg runs the smaller window without padding ("decode without padding"), here the
  window is ``min(crop, canvas)``, which includes canvas padding unless the image fills the
  canvas on that axis.
* ``predict`` with several scales and/or ``flip``: the official fork's ``aug_test``, the
  mean over scales (and the horizontal flip of each, flipped back) of
  ``softmax(logits resized to the original size)``, i.e. averaged *probabilities* (its
  ``inference`` applies ``F.softmax`` before ``aug_test`` sums; mmseg 1.2.2's
  ``SegTTAModel.merge_preds`` does the same). It returns the log of that mean, so argmax and
  cross-entropy read it like logits. One scale without flip returns the logits themselves.

The resizes are linear maps per axis, built as ``(out, in)`` matrices on the fly from the
traced sizes (PyTorch's bilinear source index, float32), composed with the static
``encode_decode`` resize so that no canvas-size ``K``-channel tensor is ever formed, and
applied as two matmuls at float32 precision.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from swin_jax.models import interpolate

ApplyFn = Callable[[jnp.ndarray], jnp.ndarray]
MODES = ("whole", "slide")
_HIGHEST = jax.lax.Precision.HIGHEST   # TPUs would otherwise multiply float32 in bfloat16


def resize_matrix(in_size: jnp.ndarray, out_size: jnp.ndarray, in_canvas: int,
                  out_canvas: int, flip: jnp.ndarray | None = None) -> jnp.ndarray:
  """``(B, out_canvas, in_canvas)`` float32: per example, ``F.interpolate(bilinear,
  align_corners=False)`` from the first ``in_size`` entries to the first ``out_size``
  (``(B,)`` ints); entries past ``in_size`` are never read and rows past ``out_size`` are 0.
  ``flip`` ``(B,)`` bool reverses the output within ``out_size`` (mmseg flips a flipped
  test image's result back)."""
  in_size = jnp.maximum(jnp.asarray(in_size, jnp.int32), 1)[:, None]
  out_size = jnp.maximum(jnp.asarray(out_size, jnp.int32), 1)[:, None]
  rows = jnp.arange(out_canvas, dtype=jnp.int32)[None]
  dst = rows if flip is None else jnp.where(flip[:, None], out_size - 1 - rows, rows)
  # PyTorch: scale = in / out in float32, src = max(scale (dst + 0.5) - 0.5, 0).
  scale = in_size.astype(jnp.float32) / out_size.astype(jnp.float32)
  src = jnp.maximum((dst.astype(jnp.float32) + 0.5) * scale - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_size - 1)
  i1 = jnp.minimum(i0 + 1, in_size - 1)
  frac = src - i0.astype(jnp.float32)
  cols = jnp.arange(in_canvas, dtype=jnp.int32)
  matrix = ((1.0 - frac)[..., None] * (cols == i0[..., None])
            + frac[..., None] * (cols == i1[..., None]))
  return jnp.where((rows < out_size)[..., None], matrix, 0.0)


def _model_to_output(logit_size: int, canvas: int, valid: jnp.ndarray, out_size: jnp.ndarray,
                     out_canvas: int, flip: jnp.ndarray | None = None) -> jnp.ndarray:
  """``(B, out_canvas, logit_size)``: logits along one axis -> resized to the canvas
  (``encode_decode``, static) -> cropped to ``valid`` and resized to ``out_size``."""
  to_output = resize_matrix(valid, out_size, canvas, out_canvas, flip)
  if logit_size == canvas:
    return to_output
  to_canvas = interpolate.bilinear_matrix(logit_size, canvas)   # (canvas, logit_size)
  return jnp.einsum("boc,cl->bol", to_output, jnp.asarray(to_canvas), precision=_HIGHEST)


def _apply_separable(rows: jnp.ndarray, cols: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """``out[b, i, j] = sum_hw rows[b, i, h] cols[b, j, w] x[b, h, w]`` for ``x (B, h, w, K)``,
  the cheaper axis order first (shapes are static)."""
  (_, oh, h), (_, ow, w) = rows.shape, cols.shape
  x = x.astype(jnp.float32)
  if oh * h * w + oh * w * ow <= ow * w * h + ow * h * oh:
    x = jnp.einsum("bih,bhwk->biwk", rows, x, precision=_HIGHEST)
    return jnp.einsum("bjw,biwk->bijk", cols, x, precision=_HIGHEST)
  x = jnp.einsum("bjw,bhwk->bhjk", cols, x, precision=_HIGHEST)
  return jnp.einsum("bih,bhjk->bijk", rows, x, precision=_HIGHEST)


def whole_inference(apply_fn: ApplyFn, image: jnp.ndarray, valid_hw: jnp.ndarray,
                    out_hw: jnp.ndarray, out_canvas: Sequence[int],
                    flip: jnp.ndarray | None = None) -> jnp.ndarray:
  """mmseg's whole mode: ``image (B, Hc, Wc, 3)`` with valid ``(B, 2)`` sizes -> logits
  ``(B, Lh, Lw, K)`` at ``out_hw (B, 2)`` on the ``out_canvas (Lh, Lw)`` (module doc);
  ``flip`` ``(B,)`` flips each result back horizontally."""
  logits = apply_fn(image)
  (hc, wc), (lh, lw) = image.shape[1:3], tuple(out_canvas)
  rows = _model_to_output(logits.shape[1], hc, valid_hw[:, 0], out_hw[:, 0], lh)
  cols = _model_to_output(logits.shape[2], wc, valid_hw[:, 1], out_hw[:, 1], lw, flip)
  return _apply_separable(rows, cols, logits)


def window_grid(canvas: int, crop: int, stride: int) -> tuple[int, int]:
  """Static ``(window, count)`` along one axis: the window is ``min(crop, canvas)`` and the
  count mmseg's ``h_grids`` for an image filling the canvas (the most any image has)."""
  if crop <= 0 or stride <= 0:
    raise ValueError(f"slide crop {crop} and stride {stride} must be positive")
  window = min(crop, canvas)
  return window, max(canvas - window + stride - 1, 0) // stride + 1


def window_starts(valid: jnp.ndarray, window: int, stride: int,
                  count: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """``(starts, active)``, both ``(B, count)``: mmseg's window offsets over an image of
  ``valid`` ``(B,)`` pixels (the last shifted back to end at the edge) and whether each window
  is one of the image's own ``max(valid - window + stride - 1, 0) // stride + 1``."""
  valid = jnp.asarray(valid, jnp.int32)[:, None]
  index = jnp.arange(count, dtype=jnp.int32)[None]
  end = jnp.minimum(index * stride + window, valid)
  starts = jnp.maximum(end - window, 0)
  grids = jnp.maximum(valid - window + stride - 1, 0) // stride + 1
  return starts, index < grids


def _window_axis(logit_size: int, canvas: int, window: int, stride: int, count: int,
                 valid: jnp.ndarray, out_size: jnp.ndarray, out_canvas: int,
                 flip: jnp.ndarray | None):
  """Per axis: ``starts``, ``active`` ``(B, count)`` and ``to_output (B, out_canvas,
  canvas)``, the crop-and-resize to ``out_size`` already divided by the window count of
  each canvas pixel (mmseg's ``count_mat`` is the outer product of the two axes' counts),
  plus the static ``(window, logit_size)`` resize of a window's logits to the window."""
  starts, active = window_starts(valid, window, stride, count)
  pixels = jnp.arange(canvas, dtype=jnp.int32)[None, None]
  covered = ((pixels >= starts[..., None]) & (pixels < starts[..., None] + window)
             & active[..., None])
  counts = jnp.sum(covered, axis=1).astype(jnp.float32)                  # (B, canvas)
  per_count = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0)
  to_output = resize_matrix(valid, out_size, canvas, out_canvas, flip) * per_count[:, None]
  to_window = jnp.asarray(interpolate.bilinear_matrix(logit_size, window))
  return starts, active, to_output, to_window


def slide_inference(apply_fn: ApplyFn, image: jnp.ndarray, valid_hw: jnp.ndarray,
                    out_hw: jnp.ndarray, out_canvas: Sequence[int], crop: Sequence[int],
                    stride: Sequence[int], flip: jnp.ndarray | None = None) -> jnp.ndarray:
  """mmseg's slide mode (module doc): ``image (B, Hc, Wc, 3)`` -> logits ``(B, Lh, Lw, K)``
  at ``out_hw`` on ``out_canvas``; ``crop`` and ``stride`` are ``(h, w)``. The windows run
  one after another (``lax.scan``, one trace of the model) on ``(B, window_h, window_w, 3)``.
  """
  batch, hc, wc, channels = image.shape
  lh, lw = tuple(out_canvas)
  (wh, nh), (ww, nw) = window_grid(hc, crop[0], stride[0]), window_grid(wc, crop[1], stride[1])
  probe = jax.eval_shape(apply_fn, jax.ShapeDtypeStruct((batch, wh, ww, channels), image.dtype))
  _, logit_h, logit_w, classes = probe.shape
  starts_h, active_h, rows_all, rows_window = _window_axis(
      logit_h, hc, wh, stride[0], nh, valid_hw[:, 0], out_hw[:, 0], lh, None)
  starts_w, active_w, cols_all, cols_window = _window_axis(
      logit_w, wc, ww, stride[1], nw, valid_hw[:, 1], out_hw[:, 1], lw, flip)
  crop_image = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (wh, ww, channels)))

  def take_cols(matrix, start, size):   # (B, out, canvas) -> (B, out, size) from start
    return jax.vmap(lambda m, s: jax.lax.dynamic_slice_in_dim(m, s, size, 1))(matrix, start)

  def one_window(total, k):
    i, j = k // nw, k % nw
    y, x = starts_h[:, i], starts_w[:, j]
    logits = apply_fn(crop_image(image, y, x))
    weight = (active_h[:, i] & active_w[:, j]).astype(jnp.float32)
    rows = jnp.einsum("boc,cl->bol", take_cols(rows_all, y, wh), rows_window,
                      precision=_HIGHEST) * weight[:, None, None]
    cols = jnp.einsum("boc,cl->bol", take_cols(cols_all, x, ww), cols_window,
                      precision=_HIGHEST)
    return total + _apply_separable(rows, cols, logits), None

  total = jnp.zeros((batch, lh, lw, classes), jnp.float32)
  total, _ = jax.lax.scan(one_window, total, jnp.arange(nh * nw))
  return total


def flip_valid(image: jnp.ndarray, valid_w: jnp.ndarray) -> jnp.ndarray:
  """``(B, H, W, C)`` flipped left-right within each image's valid width ``(B,)``; the
  padding stays on the right (mmseg flips the resized image, then pads)."""
  columns = jnp.arange(image.shape[2], dtype=jnp.int32)[None]
  valid_w = jnp.asarray(valid_w, jnp.int32)[:, None]
  source = jnp.where(columns < valid_w, valid_w - 1 - columns, columns)
  return jax.vmap(lambda im, idx: jnp.take(im, idx, axis=1))(image, source)


def predict(apply_fn: ApplyFn, images: Sequence[jnp.ndarray], image_sizes: jnp.ndarray,
            label_size: jnp.ndarray, label_canvas: Sequence[int], *, mode: str = "whole",
            crop: Sequence[int] = (512, 512), stride: Sequence[int] = (341, 341),
            flip: bool = False) -> jnp.ndarray:
  """Scores ``(B, Lh, Lw, K)`` at the original label size: the logits of one scale, or the
  log of the mean softmax over every scale (and its flip) -- the official fork's
  ``aug_test``. ``images``: one ``(B, Hc_r, Wc_r, 3)`` canvas per scale; ``image_sizes``
  ``(B, n, 2)`` their valid sizes; ``label_size`` ``(B, 2)``."""
  if mode not in MODES:
    raise ValueError(f"test mode {mode!r} is not one of {MODES}")

  def infer(image, valid, out_hw, flips):
    if mode == "slide":
      return slide_inference(apply_fn, image, valid, out_hw, label_canvas, crop, stride, flips)
    return whole_inference(apply_fn, image, valid, out_hw, label_canvas, flips)

  if len(images) == 1 and not flip:
    return infer(images[0], image_sizes[:, 0], label_size, None)
  mean = 0.0
  for r, image in enumerate(images):
    valid = image_sizes[:, r]
    if not flip:
      mean += jax.nn.softmax(infer(image, valid, label_size, None), axis=-1)
      continue
    # The flip rides in the batch: (B, 2, ...) -> (2B, ...) keeps each example's pair on
    # the device holding that example.
    batch = image.shape[0]
    pair = lambda a, b: jnp.stack([a, b], axis=1).reshape((2 * batch,) + a.shape[1:])
    both = pair(image, flip_valid(image, valid[:, 1]))
    flips = jnp.tile(jnp.array([False, True]), batch)
    scores = infer(both, pair(valid, valid), pair(label_size, label_size), flips)
    probs = jax.nn.softmax(scores, axis=-1)
    mean += jnp.sum(probs.reshape((batch, 2) + probs.shape[1:]), axis=1)
  mean /= len(images) * (2 if flip else 1)
  return jnp.log(jnp.maximum(mean, np.finfo(np.float32).tiny))
