"""Throughput, compile time, memory and MACs of swin_jax models, optionally against timm.

    python -m swin_jax.bench --model swin_tiny_patch4_window7_224 --batch 8,32 --vs timm \\
        --out experiments/benchmarks.json

For each (model, batch) it measures, for swin_jax:

* forward img/s: jitted ``model.apply({'params': p}, x, train=False)``;
* train-step img/s: the real jitted ``swin_jax.train.step.train_step`` (AdamW from
  ``make_optimizer`` with ``base_config()`` values, clipping, no-decay mask; mixup off;
  stochastic depth on as in the recipe; the state is donated);
* jit compile seconds: wall time of ``jax.jit(f).lower(...).compile()`` (tracing +
  lowering + XLA compilation);
* memory: XLA's buffer assignment of each compiled executable (``memory_analysis()``:
  arguments + outputs + temporaries - aliased (donated) bytes) and the worker process's RSS
  high-water mark (``ru_maxrss``);
* MACs per image: ``compiled.cost_analysis()['flops'] / 2 / batch`` (XLA counts every op:
  elementwise ops, softmax, GELU, norms count one flop per element, so this is a few % above
  the official count), the matmul/conv MACs read from the StableHLO (dot_general and
  convolution only), the official ``flops()`` convention computed analytically
  (``analytic_macs``) and the paper's figure;

The swin_jax model is built with the training recipes' performance options unless told
otherwise: ``--scan_blocks on|off`` (default on), ``--remat none|full|dots|dots_no_batch``
(default dots_no_batch), ``--attention_impl explicit|dot_product`` (default explicit);
the table's ``options`` column names them.

and with ``--vs timm`` (or ``--vs torch``) the same throughputs for the PyTorch model
(eager, no ``torch.compile``, same threads, NCHW input) plus the ratios swin_jax / PyTorch:
``timm.create_model(name)`` for the classifiers, and for Swin-Unet
(``swin_unet_tiny_patch4_window7_224``) the reference assembled from timm's blocks
(``swin_jax.oracles.torch_swin_unet``, the one the parity tests check against), and for
nnFormer, UperNet and the detectors the ``swin_jax.oracles`` references below. The report
keeps the PyTorch side under ``timm`` in either case; ``reference`` names the model.

SimMIM models (``simmim_*``) take images and the official masks (32 px cells, ratio 0.6)
and train with the ``simmim`` task's masked L1 and the AdamW above; they have no PyTorch
side, and their MACs no official-formula count.

Swin-Unet rows train with the official ``trainer.py`` setup on both sides: loss 0.4 CE + 0.6
softmax Dice on random masks, SGD (momentum 0.9, weight decay 1e-4, no clipping; swin_jax's
segmentation task and ``make_optimizer``, ``torch.optim.SGD``). Their MACs have no
official-formula count (``analytic_macs`` covers the classifier only).

nnFormer rows (``nnformer_synapse``, ``nnformer_acdc``, ``nnformer_tumor``) take volumes of the
model's crop ``(B, D, H, W, C)`` (``--img_size`` does not apply: the network is built for its
crop; img/s are volumes/s). Forward: eval-mode logits. Train: nnU-Net v1's step on both sides,
Dice + CE over the deep-supervision outputs (weights 4/7, 2/7, 1/7) against nnU-Net's
downsampled random labels (swin_jax's ``volume_segmentation`` task;
``torch_nnformer.official_loss``), SGD lr 1e-2, momentum 0.99, Nesterov, weight decay 3e-5,
gradients clipped to norm 12 (``configs/nnformer/common.py``); ACDC and Tumor have one
output, so one term. The PyTorch side is the official network rebuilt
(``swin_jax.oracles.torch_nnformer.build_like``), ``do_ds`` off in eval and on in training,
as nnU-Net's trainer sets it. No scan or remat options (the ``options`` column shows what
applies); no official-formula MACs.

UperNet rows (``upernet_swin_*_patch4_window7_512``) take 512 x 512 images (``--img_size``:
another square) and keep their BatchNorm statistics as the train state's ``model_state``.
Forward: eval-mode logits at the input size (BN on its running statistics). Train, both
sides: mmseg's CE(decode) + 0.4 CE(aux) on random labels (the segmentation task's
``ce_aux``), BN in train mode, drop path on, and the ADE20K recipe's AdamW (``MM_ADAMW``).
The PyTorch side is mmdet 3.3.0's ``SwinTransformer`` with mmsegmentation 1.2.2's
``UPerHead`` and ``FCNHead`` (``swin_jax.oracles.torch_upernet``).

Detector rows (``mask_rcnn_swin_*`` / ``faster_rcnn_swin_*``) take the 800 x 1344 canvas of
the official test scale (1333 x 800 padded to 32; ``--img_size``: a square canvas, a
multiple of 32), each image filling it. Forward: the test path (RPN proposals, NMS, 100
detections, their 28x28 masks; no paste). Train, both sides: the two-stage loss (RPN, R-CNN
and mask terms with the official assigners and samplers; swin_jax's ``detection`` task) on
``synthetic_instances`` (``DETECTION_INSTANCES`` random boxes per image, their rectangles as
masks) and the COCO recipe's AdamW. The PyTorch side is mmdet 3.3.0's ``MaskRCNN``
(``swin_jax.oracles.torch_mask_rcnn``), mmcv's compiled ops run through torchvision.

Timings are medians over ``--repeats`` runs after ``--warmup`` runs. Each (framework, model,
batch) runs in its own worker process (unless ``--no_isolate``), so RSS peaks are not
mixed up and torch/JAX never share a process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import types
from typing import Any, Sequence

from swin_jax import cli

# Paper / official-README MACs per image (G), at each model's own resolution.
PAPER_GMACS = {
    "swin_tiny_patch4_window7_224": 4.5,
    "swin_small_patch4_window7_224": 8.7,
    "swin_base_patch4_window7_224": 15.4,
    "swin_base_patch4_window12_384": 47.0,
    "swin_large_patch4_window7_224": 34.5,
    "swin_large_patch4_window12_384": 103.9,
    "swinv2_tiny_window8_256": 5.9,
    "swinv2_tiny_window16_256": 6.6,
    "swinv2_small_window8_256": 11.5,
    "swinv2_small_window16_256": 12.6,
    "swinv2_base_window8_256": 20.3,
    "swinv2_base_window16_256": 21.8,
}

MB = 1024.0 * 1024.0
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}  # the untimed params init
TORCH_SIDE = ("timm", "torch")  # --vs values: both measure the PyTorch model


def is_swin_unet(model: Any) -> bool:
  """Whether ``model`` is a Swin-Unet (a dense model: masks, not class labels)."""
  from swin_jax.convert import swin_unet  # pylint: disable=import-outside-toplevel
  return swin_unet.is_swin_unet(model)


def is_simmim(model: Any) -> bool:
  """Whether ``model`` is a SimMIM pretraining model (images and masks in, a loss out)."""
  from swin_jax.models.simmim import SimMIM  # pylint: disable=import-outside-toplevel
  return isinstance(model, SimMIM)


def is_nnformer(model: Any) -> bool:
  """Whether ``model`` is an nnFormer (3D volumes of a fixed crop, voxel labels)."""
  from swin_jax.models.nnformer import NnFormer  # pylint: disable=import-outside-toplevel
  return isinstance(model, NnFormer)


def is_upernet(model: Any) -> bool:
  """Whether ``model`` is an UperNet (Swin backbone, BatchNorm heads, ``batch_stats``)."""
  from swin_jax.models.upernet import UperNet  # pylint: disable=import-outside-toplevel
  return isinstance(model, UperNet)


def is_detector(model: Any) -> bool:
  """Whether ``model`` is a Mask R-CNN / Faster R-CNN (boxes and masks, not class maps)."""
  from swin_jax.models.detection import MaskRCNN  # pylint: disable=import-outside-toplevel
  return isinstance(model, MaskRCNN)   # FasterRCNN subclasses it


def is_dense(model: Any) -> bool:
  """Whether ``model`` labels every pixel / voxel (Swin-Unet, nnFormer, UperNet)."""
  return is_swin_unet(model) or is_nnformer(model) or is_upernet(model)


def has_torch_reference(model: Any) -> bool:
  """Whether ``--vs torch`` measures one of ``swin_jax.oracles``' references (not timm)."""
  return is_dense(model) or is_detector(model)


def train_task(model: Any) -> str:
  """The swin_jax task whose loss the bench's train step runs for ``model``."""
  if is_simmim(model):
    return "simmim"
  if is_nnformer(model):
    return "volume_segmentation"
  if is_detector(model):
    return "detection"
  return "segmentation" if is_swin_unet(model) or is_upernet(model) else "classification"


def the_swin(model: Any) -> Any:
  """The module holding the image geometry and layout options (SimMIM's encoder, UperNet's
  and the detectors' backbone)."""
  if is_simmim(model):
    return model.encoder
  return model.backbone if is_upernet(model) or is_detector(model) else model


def is_scanned(model: Any) -> bool:
  """Whether ``model`` runs its blocks under ``nn.scan`` (nnFormer never does)."""
  return bool(getattr(the_swin(model), "scan_blocks", False))


def input_size(model: Any, img_size: int | Sequence[int] | None = None) -> tuple[int, ...]:
  """The spatial input size: ``(H, W)`` (``img_size``, else the model's), or an nnFormer's
  crop ``(D, H, W)``, which ``img_size`` cannot change (a ValueError unless it is the crop)."""
  if is_nnformer(model):
    if img_size is not None and (isinstance(img_size, int) or
                                 tuple(img_size) != tuple(model.crop_size)):
      raise ValueError(f"--img_size does not apply to nnFormer-{model.variant}: it is built for "
                       f"volumes of its crop {'x'.join(map(str, model.crop_size))}")
    return tuple(int(s) for s in model.crop_size)
  from swin_jax.models import window as window_ops  # pylint: disable=import-outside-toplevel
  return window_ops.to_pair(the_swin(model).img_size if img_size is None else img_size)


def in_channels(model: Any) -> int:
  return model.in_channels if is_nnformer(model) else the_swin(model).in_chans


def without_scan(model: Any) -> Any:
  """The unscanned twin of ``model`` (its MACs: XLA counts a scan's body once)."""
  if not is_scanned(model):
    return model
  if is_simmim(model):
    return model.clone(encoder=model.encoder.clone(scan_blocks=False))
  if is_upernet(model) or is_detector(model):
    return model.clone(backbone=model.backbone.clone(scan_blocks=False))
  return model.clone(scan_blocks=False)


def unscanned_params(model: Any, params: Any) -> Any:
  """``params`` of the scanned ``model`` in its unscanned twin's layout."""
  from swin_jax.models import scan_layout  # pylint: disable=import-outside-toplevel
  if is_swin_unet(model):
    from swin_jax.convert import swin_unet  # pylint: disable=import-outside-toplevel
    return swin_unet.unstack_scanned(params, model)
  swin = the_swin(model)
  if swin is model:
    return scan_layout.unstack_blocks(params, model.depths)
  key = "encoder" if is_simmim(model) else "backbone"
  return dict(params, **{key: scan_layout.unstack_blocks(params[key], swin.depths)})


def init_variables(model: Any, rng: Any, *inputs: Any) -> Any:
  """``model.init``'s variables (``params`` and, for UperNet, ``batch_stats``) on
  ``model_inputs``; a detector's through ``create_heads`` (every head, without compiling
  the test path's proposals and NMS)."""
  if is_detector(model):
    from swin_jax.tasks import detection  # pylint: disable=import-outside-toplevel
    return model.init(rng, *inputs, method=detection.create_heads)
  return model.init(rng, *inputs, train=False)


def model_inputs(model: Any, batch: int, size: Sequence[int], seed: int = 0) -> tuple[Any, ...]:
  """``model.apply``'s inputs for a batch of spatial ``size`` (``input_size``): ``(images,)``
  (volumes for nnFormer), and for SimMIM ``(images, masks)`` with the official masks (32 px
  cells, ratio 0.6) at the encoder's patch size."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  images = jax.random.normal(jax.random.PRNGKey(seed), (batch, *size, in_channels(model)),
                             jnp.float32)
  if not is_simmim(model):
    return (images,)
  from swin_jax.data.simmim_mask import MaskGenerator  # pylint: disable=import-outside-toplevel
  masks = MaskGenerator(input_size=size[0], model_patch_size=the_swin(model).patch_size).batch(
      np.random.default_rng(seed), batch)
  return images, jnp.asarray(masks)


# ----------------------------------------------------------------------------------------
# MAC counts that need no timing.


def analytic_macs(model: Any, img_size: int | Sequence[int] | None = None) -> dict[str, float]:
  """MACs per image of a ``SwinTransformer`` in the official ``flops()`` convention.

  Conventions of microsoft/Swin-Transformer ``models/swin_transformer.py`` ``flops()``
  (which counts multiply-adds): patch-embed conv ``Ho*Wo*C*in*p*p`` (+ ``Ho*Wo*C`` for its
  norm); per block: each LayerNorm ``C*H*W``, per window of N tokens qkv ``N*C*3C``,
  ``q@k^T`` and ``attn@v`` ``heads*N*N*(C/heads)`` each, proj ``N*C*C``; MLP
  ``2*H*W*C*(mlp_ratio*C)``; PatchMerging ``H*W*C`` (norm on 4C) ``+ (H/2)(W/2)*4C*2C``;
  final pooling ``num_features * Hp*Wp // 2**num_stages`` (official formula, verbatim) and
  the head ``num_features * num_classes``. Not counted (as in the official code): biases,
  softmax, GELU, scaling, residual adds, position bias / mask adds, V2's CPB MLP.

  One deliberate deviation: the official code assumes H, W divisible by the window
  (``nW = H*W/ws^2``); here ``nW = ceil(H/wh)*ceil(W/ww)``, i.e. the zero-padding windows the
  model really computes are counted (identical when divisible). Merges of odd maps count
  the padded map. ``img_size`` defaults to the model's ``img_size``.
  """
  from swin_jax.models import window as window_ops  # pylint: disable=import-outside-toplevel
  h_img, w_img = window_ops.to_pair(model.img_size if img_size is None else img_size)
  p = model.patch_size
  h, w = h_img // p, w_img // p
  c = model.embed_dim
  num_stages = len(model.depths)
  nf = c * 2**(num_stages - 1)
  patch_norm = h * w * c if model.patch_norm else 0
  pool = nf * h * w // 2**num_stages  # the official formula, verbatim
  out = dict(patch_embed=h * w * c * model.in_chans * p * p + patch_norm, norms=0, attn_linear=0,
             attn_matmul=0, mlp=0, merge=0, head=pool + nf * max(model.num_classes, 0))
  merge_norms = 0
  for i, (depth, heads) in enumerate(zip(model.depths, model.num_heads)):
    dim = c * 2**i
    for j in range(depth):
      (wh, ww), _ = model.block_geometry(i, j)
      n = wh * ww
      num_windows = math.ceil(h / wh) * math.ceil(w / ww)
      out["norms"] += 2 * dim * h * w
      out["attn_linear"] += num_windows * (n * dim * 3 * dim + n * dim * dim)
      out["attn_matmul"] += num_windows * 2 * heads * n * n * (dim // heads)
      out["mlp"] += 2 * h * w * dim * int(dim * model.mlp_ratio)
    if i < num_stages - 1:
      h, w = -(-h // 2), -(-w // 2)
      merge_norms += h * w * 4 * dim
      out["merge"] += h * w * 4 * dim + h * w * 4 * dim * 2 * dim
  out["total"] = sum(out.values())
  # The terms of the total that are not matmuls/convs: LayerNorms and the final pooling.
  out["norm_terms"] = out["norms"] + patch_norm + merge_norms + pool
  return out


_TENSOR = re.compile(r"tensor<([0-9x]*)x?[a-z]+[0-9]*>")
_FUNC = re.compile(r"func\.func\s+(?:public\s+|private\s+)?@([\w.$-]+)")
_CALL = re.compile(r"(?:func\.)?call\s+@([\w.$-]+)")


def _dims(spec: str) -> list[int]:
  return [int(d) for d in spec.split("x") if d]


def _line_macs(line: str) -> int:
  """MACs of one StableHLO ``dot_general`` / ``convolution`` line (0 for anything else)."""
  if "stablehlo.dot_general" in line:
    shapes = [_dims(s) for s in _TENSOR.findall(line.split(" : ", 1)[1])]
    lhs, out = shapes[0], shapes[-1]
    contracting = re.search(r"contracting_dims = \[([0-9, ]*)\]", line).group(1)
    k = math.prod(lhs[int(d)] for d in contracting.split(",") if d.strip())
    return math.prod(out) * k
  if "stablehlo.convolution" in line:
    shapes = [_dims(s) for s in _TENSOR.findall(line.split(" : ", 1)[1])]
    rhs, out = shapes[1], shapes[-1]
    rhs_labels = re.search(r"x\[([^\]]*)\]->", line).group(1).replace(" ", "").split(",")
    out_features = rhs[rhs_labels.index("o")]
    return math.prod(out) * math.prod(rhs) // out_features
  return 0


def stablehlo_matmul_macs(text: str) -> int:
  """Total dot_general + convolution MACs of a StableHLO module (``lowered.as_text()``).

  Private functions are counted once per call (following ``call @f`` from ``main``).
  """
  funcs: dict[str, tuple[int, list[str]]] = {}
  name, macs, calls = None, 0, []
  for line in text.splitlines():
    match = _FUNC.search(line)
    if match:
      if name is not None:
        funcs[name] = (macs, calls)
      name, macs, calls = match.group(1), 0, []
      continue
    macs += _line_macs(line)
    calls += _CALL.findall(line)
  if name is not None:
    funcs[name] = (macs, calls)

  def total(fn: str, depth: int = 0) -> int:
    own, callees = funcs.get(fn, (0, []))
    return own + sum(total(c, depth + 1) for c in callees if depth < 50)

  return total("main") if "main" in funcs else sum(m for m, _ in funcs.values())


def _cost(compiled: Any) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device/partition
    cost = cost[0] if cost else {}
  return dict(cost or {})


def _macs_dict(cost: dict[str, float], matmul_macs: int, analytic: dict[str, float] | None,
               batch: int, paper: float | None) -> dict[str, Any]:
  """``analytic``: ``analytic_macs`` of a classifier; None for other models."""
  return dict(
      xla_forward_per_img=cost.get("flops", float("nan")) / 2 / batch,
      xla_transcendentals_per_img=cost.get("transcendentals", float("nan")) / batch,
      matmul_forward_per_img=matmul_macs / batch,
      analytic_per_img=analytic["total"] if analytic else None,
      analytic_matmul_per_img=analytic["total"] - analytic["norm_terms"] if analytic else None,
      analytic_breakdown=analytic,
      paper_per_img=paper)


def _analytic(model: Any, hw: tuple[int, int]) -> dict[str, float] | None:
  """The official-formula count of a classifier; None for Swin-Unet, nnFormer and SimMIM
  (not modelled)."""
  return None if train_task(model) != "classification" else analytic_macs(model, hw)


def _paper(name: str, model: Any, hw: tuple[int, int]) -> float | None:
  from swin_jax.models import registry  # pylint: disable=import-outside-toplevel
  from swin_jax.models import window as window_ops  # pylint: disable=import-outside-toplevel
  own = registry.MODEL_CONFIGS.get(name, {}).get("img_size")
  if (name in PAPER_GMACS and
      hw == window_ops.to_pair(the_swin(model).img_size) == window_ops.to_pair(own)):
    return PAPER_GMACS[name] * 1e9
  return None


def _forward(model: Any, variables: Any, *inputs: Any) -> Any:
  """The measured forward: eval mode, BatchNorm on its running statistics; a detector's
  test path (boxes, scores, classes, 28x28 masks)."""
  return model.apply(variables, *inputs, train=False)


def forward_macs(model: Any, batch: int = 1, img_size: int | Sequence[int] | None = None,
                 name: str = "") -> dict[str, Any]:
  """The MAC figures of ``measure_jax`` without running anything (abstract params).

  Counted on the unscanned model: XLA's cost analysis sees a scan's loop body once.
  """
  import jax  # pylint: disable=import-outside-toplevel

  model = without_scan(model)
  size = input_size(model, img_size)
  inputs = jax.eval_shape(lambda: model_inputs(model, batch, size))
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0),
                                                    *model_inputs(model, 1, size)))
  lowered = jax.jit(functools.partial(_forward, model)).lower(variables, *inputs)
  compiled = lowered.compile()
  return _macs_dict(_cost(compiled), stablehlo_matmul_macs(lowered.as_text()),
                    _analytic(model, size), batch, _paper(name, model, size))


def _memory(compiled: Any) -> dict[str, Any]:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {f.replace("_size_in_bytes", "_bytes"): int(getattr(stats, f, 0) or 0) for f in fields}
  out["peak_estimate_bytes"] = (out["argument_bytes"] + out["output_bytes"] +
                                out["temp_bytes"] - out["alias_bytes"])
  return out


def _rss_mb() -> float:
  """Current resident set size (MiB) from /proc; ru_maxrss where /proc is missing."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
  except OSError:
    return _maxrss_mb()


def _maxrss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _timings(fn, warmup: int, repeats: int, iters: int) -> list[float]:
  """Seconds per call of ``fn`` (which must block), ``repeats`` samples after warm-up."""
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iters):
      fn()
    out.append((time.perf_counter() - start) / iters)
  return out


def _summary(times: list[float], batch: int) -> dict[str, Any]:
  med = statistics.median(times)
  return dict(img_per_s=batch / med, median_s=med, min_s=min(times), max_s=max(times),
              times_s=times)


# ----------------------------------------------------------------------------------------
# swin_jax.


def synthetic_instances(batch: int, size: Sequence[int], num_classes: int,
                        num: int | None = None, seed: int = 0) -> dict[str, Any]:
  """The detection rows' ground truth, the same numpy arrays on both sides: ``num``
  (``DETECTION_INSTANCES``) boxes per image, ``boxes (B, G, 4)`` x1y1x2y2 float32 on whole
  pixels, 5-50% of the canvas side each way, ``labels (B, G)``, ``valid (B, G)`` (all True)
  and ``masks (B, G, H, W)`` bool, each box's rectangle."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  num = num or DETECTION_INSTANCES
  rng = np.random.default_rng(seed)
  h, w = size
  side = np.array([w, h], np.float64)
  wh = np.round(rng.uniform(0.05, 0.5, (batch, num, 2)) * side)
  xy = np.floor(rng.uniform(0.0, 1.0, (batch, num, 2)) * (side - wh))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  masks = np.zeros((batch, num, h, w), bool)
  for b in range(batch):
    for g, (x0, y0, x1, y1) in enumerate(boxes[b].astype(int)):
      masks[b, g, y0:y1, x0:x1] = True
  return dict(boxes=boxes, labels=rng.integers(0, num_classes, (batch, num)).astype(np.int32),
              valid=np.ones((batch, num), bool), masks=masks)


def _train_batch(model: Any, inputs: Sequence[Any], size: Sequence[int], rng: Any,
                 seed: int) -> dict[str, Any]:
  """The train step's batch for ``model``'s task on ``inputs`` (``model_inputs``): random
  class labels per image, or per pixel / voxel for the dense models; SimMIM's masks (its
  target is the image itself); a detector's ``synthetic_instances`` on the whole canvas."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  images = inputs[0]
  batch = images.shape[0]
  task_name = train_task(model)
  if task_name == "simmim":
    return {"image": images, "patch_mask": inputs[1]}
  if task_name == "detection":
    gt = synthetic_instances(batch, size, model.num_classes, seed=seed)
    out = {"image": images, "image_hw": jnp.tile(jnp.asarray([size], jnp.int32), (batch, 1)),
           "gt_boxes": gt["boxes"], "gt_labels": gt["labels"], "gt_valid": gt["valid"]}
    if model.with_mask:
      out["gt_masks"] = gt["masks"]
    return jax.tree.map(jnp.asarray, out)
  label_shape = (batch, *size) if is_dense(model) else (batch,)
  return {"image": images,
          "label": jax.random.randint(rng, label_shape, 0, max(model.num_classes, 1))}


def measure_jax(model: Any, batch: int, *, name: str = "", repeats: int = 5, warmup: int = 2,
                iters: int = 1, skip_train: bool = False,
                img_size: int | Sequence[int] | None = None, seed: int = 0) -> dict[str, Any]:
  """All swin_jax figures for one model object and batch (see the module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel

  from swin_jax import tasks  # pylint: disable=import-outside-toplevel
  from swin_jax.tasks import base as task_base  # pylint: disable=import-outside-toplevel
  from swin_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from swin_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from swin_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel

  size = input_size(model, img_size)
  rss_start = _rss_mb()
  rng = jax.random.PRNGKey(seed)
  inputs = model_inputs(model, batch, size, seed)
  task_name = train_task(model)
  # Random variables, untimed: the init program is compiled at XLA's lowest backend
  # optimisation level (nnFormer's init, one RNG draw per param, otherwise compiles for
  # minutes on CPU). UperNet's BatchNorm statistics come back as the model state.
  init = jax.jit(lambda r: init_variables(model, r, *[x[:1] for x in inputs]))
  variables = init.lower(rng).compile(INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu"
                                      else None)(rng)
  params, model_state = task_base.split_variables(variables)
  num_params = sum(int(x.size) for x in jax.tree.leaves(params))
  res: dict[str, Any] = dict(num_params=num_params, img_size=list(size))

  # Forward.
  forward = jax.jit(functools.partial(_forward, model))
  start = time.perf_counter()
  lowered = forward.lower(variables, *inputs)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  def run_forward():
    jax.block_until_ready(compiled(variables, *inputs))

  start = time.perf_counter()
  run_forward()
  first_call_s = time.perf_counter() - start
  times = _timings(run_forward, warmup, repeats, iters)
  res["forward"] = dict(**_summary(times, batch), compile_s=compile_s, first_call_s=first_call_s,
                        xla_memory=_memory(compiled), rss_peak_mb=_maxrss_mb())
  if is_scanned(model):  # counted on the unscanned twin, see forward_macs
    res["macs"] = forward_macs(model, batch, size, name)
  else:
    res["macs"] = _macs_dict(_cost(compiled), stablehlo_matmul_macs(lowered.as_text()),
                            _analytic(model, size), batch, _paper(name, model, size))

  # Train step: the real one, the optimizer from the recipe's optimizer code.
  if not skip_train:
    num_classes = 1 if task_name == "simmim" else max(model.num_classes, 1)
    config = _train_config(task_name, name, batch, size, num_classes, recipe_optimizer(model))
    tx, schedule = optimizer_lib.make_optimizer(config, total_steps=10_000,
                                                steps_per_epoch=1_000)
    task = tasks.get_task(config)

    def jitted_train_step(m):
      return jax.jit(functools.partial(step_lib.train_step, task=task, model=m, tx=tx,
                                       schedule=schedule), donate_argnums=0)

    state = state_lib.create_train_state(params, tx, rng, model_state)
    batch_data = _train_batch(model, inputs, size, rng, seed)
    start = time.perf_counter()
    compiled_train = jitted_train_step(model).lower(state, batch_data).compile()
    train_compile_s = time.perf_counter() - start
    if is_scanned(model):  # the unscanned twin, compiled only for its cost analysis
      twin_state = state_lib.create_train_state(unscanned_params(model, params), tx, rng,
                                                model_state)
      train_cost = _cost(jitted_train_step(without_scan(model)).lower(
          twin_state, batch_data).compile())
    else:
      train_cost = _cost(compiled_train)
    holder = {"state": state}

    def run_train():
      holder["state"], metrics = compiled_train(holder["state"], batch_data)
      metrics["train/loss"].block_until_ready()

    start = time.perf_counter()
    run_train()
    train_first_s = time.perf_counter() - start
    times = _timings(run_train, warmup, repeats, iters)
    _, metrics = compiled_train(holder["state"], batch_data)
    # The task's own terms (e.g. UperNet's ce / aux_ce, the detector's five losses).
    terms = {k.removeprefix("train/"): float(v) for k, v in metrics.items()
             if k not in ("train/loss", "train/lr", "train/grad_norm", "train/update_norm")}
    res["train"] = dict(**_summary(times, batch), compile_s=train_compile_s,
                        first_call_s=train_first_s, xla_memory=_memory(compiled_train),
                        rss_peak_mb=_maxrss_mb(), final_loss=float(metrics["train/loss"]),
                        loss_terms=terms)
    res["macs"]["xla_train_per_img"] = train_cost.get("flops", float("nan")) / 2 / batch
  res["rss_start_mb"] = rss_start
  return res


# The official SGD of the dense models' trainers, on both sides of their rows (torch's lr is
# ``base_lr``; swin_jax scales it by batch / reference_batch_size, None: the batch).
# Swin-Unet: trainer.py. nnFormer: nnUNetTrainerV2 (configs/nnformer/common.py).
DENSE_SGD = {
    "segmentation": dict(base_lr=0.05, reference_batch_size=24, momentum=0.9, nesterov=False,
                         weight_decay=1e-4, clip_grad_norm=0.0),
    "volume_segmentation": dict(base_lr=1e-2, reference_batch_size=None, momentum=0.99,
                                nesterov=True, weight_decay=3e-5, clip_grad_norm=12.0),
}


# The official AdamW of the OpenMMLab recipes, on both sides of their rows (torch's lr is
# ``base_lr``; swin_jax's reference batch is the batch): betas (0.9, 0.999), no clipping, no
# decay for names holding one of ``MM_NO_DECAY`` (biases and BN weights decay).
# UperNet: configs/upernet/common.py (mmseg ADE20K 160k). Detection: configs/detection/common.py.
MM_ADAMW = {
    "upernet": dict(base_lr=6e-5, weight_decay=0.01),
    "detection": dict(base_lr=1e-4, weight_decay=0.05),
}
MM_NO_DECAY = ("absolute_pos_embed", "relative_position_bias_table", "norm")
# Ground-truth instances per image of the detection rows (COCO train2017 averages 7.3).
DETECTION_INSTANCES = 8


def recipe_optimizer(model: Any) -> dict[str, Any] | None:
  """The official optimizer of a model benched beside one of ``swin_jax.oracles``'
  references, used on both sides: ``{'name': 'sgd', **DENSE_SGD[task]}`` (Swin-Unet,
  nnFormer) or ``{'name': 'adamw', **MM_ADAMW[family]}`` (UperNet, detectors); None for
  the others (``base_config()``'s AdamW)."""
  if is_upernet(model) or is_detector(model):
    return dict(MM_ADAMW["upernet" if is_upernet(model) else "detection"], name="adamw")
  if is_dense(model):
    return dict(DENSE_SGD[train_task(model)], name="sgd")
  return None


def _train_config(task: str, name: str, batch: int, size: Sequence[int], num_classes: int,
                  optimizer: dict[str, Any] | None = None) -> Any:
  """The run config of the measured train step.

  Classifiers: ``base_config()`` (AdamW, clipping 5, no-decay mask), mixup off. Swin-Unet:
  the segmentation task (0.4 CE + 0.6 Dice) with the official ``trainer.py`` optimizer, SGD
  momentum 0.9 and weight decay 1e-4 on every param, no clipping. nnFormer: the
  volume_segmentation task (nnU-Net's Dice + CE over the deep-supervision outputs) with
  nnU-Net's SGD (``DENSE_SGD``). UperNet: the segmentation task's mmseg loss (``ce_aux``:
  CE(decode) + 0.4 CE(aux), ignore 255) with the ADE20K AdamW (``MM_ADAMW``). Detectors: the
  detection task (mmdet's RPN + R-CNN + mask losses, the official samplers) on a canvas of
  ``size`` with ``DETECTION_INSTANCES`` instances and the COCO AdamW. SimMIM: its task
  (masked L1) with the same AdamW as the classifiers (the pretraining recipe's: clipping 5,
  mask token not decayed). ``optimizer``: ``recipe_optimizer``'s.
  """
  from swin_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config(task)
  config.batch_size = batch
  config.optimizer.warmup_epochs = 1.0
  config.dataset.num_classes = num_classes
  config.dataset.image_size = size[0]
  optimizer = dict(optimizer or {})
  kind = optimizer.pop("name", None)
  if kind == "sgd":
    optimizer["reference_batch_size"] = optimizer["reference_batch_size"] or batch
    config.optimizer.update(dict(name="sgd", schedule="poly", warmup_epochs=0.0,
                                 no_decay_1d_and_bias=False, no_decay_keywords=(),
                                 **optimizer))
  elif kind == "adamw":
    config.optimizer.update(dict(name="adamw", reference_batch_size=batch, b1=0.9, b2=0.999,
                                 eps=1e-8, clip_grad_norm=0.0, no_decay_1d_and_bias=False,
                                 no_decay_keywords=MM_NO_DECAY, **optimizer))
  if task == "classification":
    config.task.mixup.mixup_alpha = 0.0
    config.task.mixup.cutmix_alpha = 0.0
  elif task == "segmentation" and kind == "adamw":
    config.task.loss = "ce_aux"
  elif task == "detection":
    config.task.canvas = tuple(size)
    config.task.max_instances = DETECTION_INSTANCES
  if name:
    config.model.name = name
  return config


# ----------------------------------------------------------------------------------------
# PyTorch: timm's classifiers, the references of ``swin_jax.oracles``.


def measure_timm(name: str, batch: int, *, dtype: str = "float32", repeats: int = 5,
                 warmup: int = 2, iters: int = 1, skip_train: bool = False,
                 img_size: int | None = None, lr: float = 1e-3, seed: int = 0,
                 **create_kwargs: Any) -> dict[str, Any]:
  """timm's eager PyTorch figures: forward (no_grad, eval) and CE + backward + AdamW step.

  bfloat16 runs under ``torch.autocast('cpu', torch.bfloat16)`` with float32 params (the
  analogue of swin_jax's ``dtype=bfloat16`` compute with float32 params).
  """
  import torch  # pylint: disable=import-outside-toplevel

  import timm  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  rss_start = _rss_mb()
  if img_size is not None:
    create_kwargs.setdefault("img_size", img_size)  # timm checks the input size strictly
  model = timm.create_model(name, pretrained=False, **create_kwargs)
  if img_size is None:
    img_size = model.default_cfg.get("input_size", (3, 224, 224))[1:]
  h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
  images = torch.randn(batch, 3, h, w)
  labels = torch.randint(0, model.num_classes, (batch,))
  ce = torch.nn.CrossEntropyLoss()
  res = _measure_torch(model, images, lambda: model(images), lambda: ce(model(images), labels),
                       lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.05),
                       dtype=dtype, repeats=repeats, warmup=warmup, iters=iters,
                       skip_train=skip_train)
  return dict(res, reference=f"timm.create_model({name!r})", rss_start_mb=rss_start)


def torch_images(model: Any, batch: int) -> Any:
  """Random NC(D)HW float32 inputs of the PyTorch reference of ``model``."""
  import torch  # pylint: disable=import-outside-toplevel
  return torch.randn(batch, in_channels(model), *input_size(model))


def _torch_job(model: Any, images: Any, seed: int) -> types.SimpleNamespace:
  """The PyTorch reference of a swin_jax ``model`` (its fields; no params are used) on
  NC(D)HW ``images``: ``network``, ``predict()`` (the eval forward), ``train_loss()`` (the
  official loss of random targets, in train mode), ``set_mode(train)`` (or None) and
  ``description``."""
  import torch  # pylint: disable=import-outside-toplevel
  job = types.SimpleNamespace(set_mode=None)
  batch, size = images.shape[0], tuple(images.shape[2:])
  if is_detector(model):
    from swin_jax.oracles import torch_mask_rcnn  # pylint: disable=import-outside-toplevel
    net = torch_mask_rcnn.build_like(model)
    gt = synthetic_instances(batch, size, model.num_classes, seed=seed)
    if not model.with_mask:
      gt.pop("masks")
    image_hw = [size] * batch   # every image fills the canvas, as on the swin_jax side
    eval_samples = torch_mask_rcnn.data_samples(image_hw, size)
    train_samples = torch_mask_rcnn.data_samples(image_hw, size, gt)
    job.predict = lambda: torch_mask_rcnn.predict(net, images, eval_samples)
    job.train_loss = lambda: torch_mask_rcnn.official_loss(net, images, train_samples)
    job.description = ("swin_jax.oracles.torch_mask_rcnn (mmdet 3.3.0 MaskRCNN, mmdet "
                       "SwinTransformer)")
  elif is_upernet(model):
    from swin_jax.oracles import torch_upernet  # pylint: disable=import-outside-toplevel
    net = torch_upernet.build_like(model)
    labels = torch.randint(0, model.num_classes, (batch, *size))
    job.predict = lambda: net(images)
    job.train_loss = lambda: net.official_loss(images, labels)
    job.description = ("swin_jax.oracles.torch_upernet (mmdet 3.3.0 SwinTransformer, mmseg "
                       "1.2.2 UPerHead + FCNHead)")
  else:
    labels = torch.randint(0, model.num_classes, (batch, *size))
    if is_nnformer(model):
      from swin_jax.oracles import torch_nnformer  # pylint: disable=import-outside-toplevel
      net, loss_fn = torch_nnformer.build_like(model), torch_nnformer.official_loss
      job.description = "swin_jax.oracles.torch_nnformer (the official network rebuilt)"

      def set_mode(train: bool) -> None:
        net.do_ds = train and model.deep_supervision

      job.set_mode = set_mode
    else:
      from swin_jax.oracles import torch_swin_unet  # pylint: disable=import-outside-toplevel
      net = torch_swin_unet.build(torch_swin_unet.official_config(model))
      loss_fn = torch_swin_unet.official_loss
      job.description = "swin_jax.oracles.torch_swin_unet (timm blocks)"
    job.predict = lambda: net(images)
    job.train_loss = lambda: loss_fn(net(images), labels)
  job.network = net
  return job


def _torch_optimizer(settings: dict[str, Any], network: Any) -> Any:
  """``recipe_optimizer``'s ``settings`` as a torch optimizer of ``network``: SGD, or AdamW
  with the names holding an ``MM_NO_DECAY`` keyword in a group without weight decay."""
  import torch  # pylint: disable=import-outside-toplevel
  if settings["name"] == "sgd":
    return torch.optim.SGD(network.parameters(), lr=settings["base_lr"],
                           momentum=settings["momentum"], nesterov=settings["nesterov"],
                           weight_decay=settings["weight_decay"])
  named = list(network.named_parameters())
  no_decay = [p for n, p in named if any(k in n for k in MM_NO_DECAY)]
  decay = [p for n, p in named if not any(k in n for k in MM_NO_DECAY)]
  return torch.optim.AdamW([dict(params=decay), dict(params=no_decay, weight_decay=0.0)],
                           lr=settings["base_lr"], betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=settings["weight_decay"])


def measure_torch_reference(model: Any, batch: int, *, dtype: str = "float32",
                            repeats: int = 5, warmup: int = 2, iters: int = 1,
                            skip_train: bool = False, seed: int = 0) -> dict[str, Any]:
  """The PyTorch reference of a Swin-Unet, nnFormer, UperNet or detector, as
  ``measure_timm``: forward, and the official train step (``_torch_job``'s loss, backward,
  ``recipe_optimizer``'s optimizer and clipping).

  ``model``: the swin_jax model to mirror (its fields and input size; no params are used).
  An nnFormer's ``do_ds`` is off in eval and on in training (where it has deep supervision),
  as nnU-Net's trainer sets it. A detector runs with mmcv's compiled ops through torchvision
  (``mm_stubs.torchvision_ops``).
  """
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  rss_start = _rss_mb()
  images = torch_images(model, batch)
  settings = recipe_optimizer(model)
  with contextlib.ExitStack() as stack:
    if is_detector(model):
      from swin_jax.oracles import mm_stubs  # pylint: disable=import-outside-toplevel
      stack.enter_context(mm_stubs.torchvision_ops())
    job = _torch_job(model, images, seed)
    res = _measure_torch(job.network, images, job.predict, job.train_loss,
                         functools.partial(_torch_optimizer, settings),
                         clip_grad_norm=settings.get("clip_grad_norm", 0.0),
                         set_mode=job.set_mode, dtype=dtype, repeats=repeats, warmup=warmup,
                         iters=iters, skip_train=skip_train)
  return dict(res, reference=job.description, rss_start_mb=rss_start)


def _measure_torch(model: Any, images: Any, predict: Any, train_loss: Any, make_optimizer: Any,
                   *, dtype: str, repeats: int, warmup: int, iters: int, skip_train: bool,
                   clip_grad_norm: float = 0.0, set_mode: Any = None) -> dict[str, Any]:
  """Forward (eval, no_grad: ``predict()``) and train-step (train, ``train_loss()``,
  backward, [gradient clipping,] optimizer step) figures of an eager PyTorch ``model`` on
  NC(D)HW ``images``. ``make_optimizer(model)`` builds the optimizer; ``set_mode(train)``
  is called after ``model.eval()`` / ``model.train()``."""
  import torch  # pylint: disable=import-outside-toplevel

  batch = images.shape[0]
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" \
      else contextlib.nullcontext
  res: dict[str, Any] = dict(num_params=sum(p.numel() for p in model.parameters()),
                             img_size=list(images.shape[2:]))

  model.eval()
  if set_mode:
    set_mode(False)

  def run_forward():
    with torch.no_grad(), autocast():
      predict()

  start = time.perf_counter()
  run_forward()
  first_call_s = time.perf_counter() - start
  times = _timings(run_forward, warmup, repeats, iters)
  res["forward"] = dict(**_summary(times, batch), first_call_s=first_call_s,
                        rss_peak_mb=_maxrss_mb())

  if not skip_train:
    model.train()
    if set_mode:
      set_mode(True)
    opt = make_optimizer(model)
    last = {}

    def run_train():
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = train_loss()
      loss.backward()
      if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
      opt.step()
      last["loss"] = loss.detach()

    start = time.perf_counter()
    run_train()
    train_first_s = time.perf_counter() - start
    times = _timings(run_train, warmup, repeats, iters)
    res["train"] = dict(**_summary(times, batch), first_call_s=train_first_s,
                        rss_peak_mb=_maxrss_mb(), final_loss=float(last["loss"]))
  return res


# ----------------------------------------------------------------------------------------
# Environment.


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def set_threads(threads: int) -> int:
  """Pins this process to ``threads`` CPUs (affinity) so XLA and torch both see that many.

  Must run before jax/torch start their thread pools. Returns the CPUs now usable.
  """
  try:
    cpus = sorted(os.sched_getaffinity(0))
    if 0 < threads < len(cpus):
      os.sched_setaffinity(0, cpus[:threads])
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def environment(framework: str, threads: int) -> dict[str, Any]:
  env: dict[str, Any] = dict(python=platform.python_version(), cpu=cpu_model(),
                             cpu_count=os.cpu_count(), usable_cpus=threads,
                             xla_flags=os.environ.get("XLA_FLAGS", ""))
  if framework == "swin_jax":
    import jax  # pylint: disable=import-outside-toplevel
    import jaxlib  # pylint: disable=import-outside-toplevel
    import flax  # pylint: disable=import-outside-toplevel
    env.update(jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__,
               device=str(jax.devices()[0].device_kind), platform=jax.default_backend(),
               num_devices=jax.device_count(),
               jax_threads=f"XLA CPU runs on the {threads} CPUs the process is pinned to "
                           "(affinity; JAX has no thread-count setting)")
  else:
    import torch  # pylint: disable=import-outside-toplevel
    import timm  # pylint: disable=import-outside-toplevel
    env.update(torch=torch.__version__, timm=timm.__version__, device="cpu",
               torch_threads=torch.get_num_threads(),
               torch_interop_threads=torch.get_num_interop_threads())
    for package in ("torchvision", "mmdet", "mmseg", "mmcv"):  # those the reference used
      if package in sys.modules:
        env[package] = getattr(sys.modules[package], "__version__", "?")
  return env


# ----------------------------------------------------------------------------------------
# One job (framework, model, batch), in-process or in a worker.


def _nnformer_name(name: str) -> bool:
  from swin_jax.models import registry  # pylint: disable=import-outside-toplevel
  from swin_jax.models.nnformer import NnFormer  # pylint: disable=import-outside-toplevel
  return bool(name) and registry.model_class(name) is NnFormer


def model_overrides(args: argparse.Namespace, name: str = "") -> dict[str, Any]:
  """swin_jax model fields set by the command line (dtype, size, performance options) for
  model ``name``. nnFormer takes dtype and attention_impl only: it has no scan or remat, and
  its input is its crop (``--img_size``: a ValueError)."""
  overrides = dict(dtype=args.dtype, attention_impl=args.attention_impl)
  if _nnformer_name(name):
    if args.img_size:
      raise ValueError(f"--img_size does not apply to {name}: nnFormer is built for volumes of "
                       "its crop_size (D, H, W); bench it without --img_size")
    return overrides
  overrides.update(scan_blocks=args.scan_blocks == "on", remat=args.remat)
  if args.img_size:
    overrides["img_size"] = args.img_size
  return overrides


def options_label(args: dict[str, Any], name: str = "") -> str:
  """``'scan'``, ``'scan, remat=dots'``, ``'-'``: the model options of a report's rows (of
  model ``name``: nnFormer has no scan or remat)."""
  nnformer = _nnformer_name(name)
  parts = (["scan"] if args.get("scan_blocks", "off") == "on" and not nnformer else [])
  if args.get("remat", "none") != "none" and not nnformer:
    parts.append(f"remat={args['remat']}")
  if args.get("attention_impl", "explicit") != "explicit":
    parts.append(args["attention_impl"])
  return ", ".join(parts) or "-"


def run_job(framework: str, name: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
  from swin_jax.models import registry  # pylint: disable=import-outside-toplevel
  threads = set_threads(args.threads)
  common = dict(repeats=args.repeats, warmup=args.warmup, iters=args.iters,
                skip_train=args.skip_train, img_size=args.img_size)
  name = registry.resolve_name(name)
  # The swin_jax model as measured (on the PyTorch side, the fields its reference mirrors).
  model = registry.create_model(name, **model_overrides(args, name))
  if framework == "swin_jax":
    result = measure_jax(model, batch, name=name, **common)
  elif framework == "timm":  # the PyTorch side: timm, or a reference of swin_jax.oracles
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads)
    if is_simmim(model):
      raise ValueError(f"{name}: bench has no PyTorch SimMIM model; measure it without --vs")
    if has_torch_reference(model):
      common.pop("img_size")  # in the model already
      result = measure_torch_reference(model, batch, dtype=args.dtype, **common)
    else:
      result = measure_timm(name, batch, dtype=args.dtype, **common)
  else:
    raise ValueError(f"unknown framework {framework!r}")
  result["env"] = environment(framework, threads)
  return result


def _worker_args(framework: str, name: str, batch: int, args: argparse.Namespace) -> list[str]:
  out = [sys.executable, "-m", "swin_jax.bench", "--worker", framework, "--model", name,
         "--batch", str(batch), "--dtype", args.dtype, "--scan_blocks", args.scan_blocks,
         "--remat", args.remat, "--attention_impl", args.attention_impl,
         "--repeats", str(args.repeats),
         "--warmup", str(args.warmup), "--iters", str(args.iters), "--threads",
         str(args.threads)]
  if args.skip_train:
    out.append("--skip_train")
  if args.debug:
    out.append("--debug")
  if args.img_size:
    out += ["--img_size", str(args.img_size)]
  return out


def run_isolated(framework: str, name: str, batch: int,
                 args: argparse.Namespace) -> dict[str, Any]:
  proc = subprocess.run(_worker_args(framework, name, batch, args), capture_output=True,
                        text=True, check=False)
  marker = "BENCH_RESULT "
  for line in proc.stdout.splitlines():
    if line.startswith(marker):
      return json.loads(line[len(marker):])
  return dict(error=f"worker exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")


# ----------------------------------------------------------------------------------------
# Report.


def _fmt(value: Any, spec: str = ".1f") -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return format(value, spec)


def _fmt_rate(value: Any) -> str:
  """img/s with two decimals, or two significant digits below 0.1 (a 200 s train step
  shows 0.0047, not 0.00)."""
  return _fmt(value, ".2g" if value is not None and abs(value) < 0.1 else ".2f")


def _get(d: dict, *keys: str) -> Any:
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def _scaled(value: float | None, factor: float) -> float | None:
  return None if value is None else value * factor


def format_table(report: dict[str, Any]) -> str:
  """The markdown tables (throughput/compile/memory, then MACs) of a report."""
  vs = report["args"].get("vs") in TORCH_SIDE
  head = ["model", "batch", "dtype", "options", "fwd img/s", "train img/s", "fwd compile s",
          "train compile s", "fwd XLA MiB", "train XLA MiB", "RSS peak MiB"]
  if vs:
    head += ["timm fwd img/s", "timm train img/s", "timm RSS peak MiB", "fwd ratio",
             "train ratio"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  timed = [row for row in report["results"]
           if any(k in row.get("swin_jax", {}) for k in ("forward", "error"))]
  for row in timed:
    j = row.get("swin_jax", {})
    cells = [row["model"], str(row["batch"]), row["dtype"],
             row.get("options") or options_label(report["args"])]
    if "error" in j:
      cells += ["error"] * (len(head) - 4 - (5 if vs else 0))
    else:
      fwd_mem = _get(j, "forward", "xla_memory", "peak_estimate_bytes")
      train_mem = _get(j, "train", "xla_memory", "peak_estimate_bytes")
      rss = _get(j, "train", "rss_peak_mb") or _get(j, "forward", "rss_peak_mb")
      cells += [_fmt_rate(_get(j, "forward", "img_per_s")),
                _fmt_rate(_get(j, "train", "img_per_s")),
                _fmt(_get(j, "forward", "compile_s"), ".1f"),
                _fmt(_get(j, "train", "compile_s"), ".1f"),
                _fmt(fwd_mem / MB if fwd_mem is not None else None, ".0f"),
                _fmt(train_mem / MB if train_mem is not None else None, ".0f"),
                _fmt(rss, ".0f")]
    if vs:
      t = row.get("timm", {})
      if "error" in t:
        cells += ["error"] * 3
      else:
        rss = _get(t, "train", "rss_peak_mb") or _get(t, "forward", "rss_peak_mb")
        cells += [_fmt_rate(_get(t, "forward", "img_per_s")),
                  _fmt_rate(_get(t, "train", "img_per_s")), _fmt(rss, ".0f")]
      cells += [_fmt(_get(row, "ratio", "forward"), ".2f"),
                _fmt(_get(row, "ratio", "train"), ".2f")]
    lines.append("| " + " | ".join(cells) + " |")

  if not timed:
    lines = []
  lines += ["", "| model | res | XLA fwd GMACs/img | matmul GMACs/img | official-formula "
            "GMACs/img | paper GMACs | XLA/paper | XLA train GMACs/img |",
            "|---|---|---|---|---|---|---|---|"]
  seen = set()
  for row in report["results"]:
    j = row.get("swin_jax", {})
    key = (row["model"], tuple(j.get("img_size", ())))
    if "macs" not in j or key in seen:
      continue
    seen.add(key)
    m = j["macs"]
    paper = m.get("paper_per_img")
    lines.append("| " + " | ".join([
        row["model"], "x".join(map(str, j["img_size"])),
        _fmt(m["xla_forward_per_img"] / 1e9, ".3f"), _fmt(m["matmul_forward_per_img"] / 1e9,
                                                          ".3f"),
        _fmt(_scaled(m.get("analytic_per_img"), 1e-9), ".3f"),
        _fmt(paper / 1e9 if paper else None, ".1f"),
        _fmt(m["xla_forward_per_img"] / paper if paper else None, ".3f"),
        _fmt(m.get("xla_train_per_img", float("nan")) / 1e9, ".2f")]) + " |")
  return "\n".join(lines)


def format_header(report: dict[str, Any]) -> str:
  meta = report["meta"]
  parts = [f"swin_jax bench {meta['date']}  cpu: {meta.get('cpu')}  "
           f"usable CPUs: {meta.get('usable_cpus')}"]
  for fw in ("swin_jax", "timm"):
    env = meta.get("env", {}).get(fw)
    if env:
      keys = (("jax", "jaxlib", "flax", "platform", "device", "jax_threads") if fw == "swin_jax"
              else ("torch", "timm", "mmdet", "mmseg", "torch_threads",
                    "torch_interop_threads"))
      parts.append(f"{fw}: " + ", ".join(f"{k}={env[k]}" for k in keys if k in env))
  a = report["args"]
  parts.append(f"repeats={a['repeats']} (median) after warmup={a['warmup']}, "
               f"iters/repeat={a['iters']}; torch.compile not used; XLA MiB = compiled "
               "memory_analysis() args+outputs+temps-aliased; RSS = worker ru_maxrss")
  return "\n".join(parts)


def _csv_list(values: Sequence[str] | None, cast=str) -> list:
  out = []
  for v in values or []:
    out += [cast(x.strip()) for x in str(v).split(",") if x.strip()]
  return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m swin_jax.bench", description=__doc__.split("\n")[0])
  p.add_argument("--model", action="append", help="model name or alias; repeatable or "
                 "comma-separated (default swin_tiny_patch4_window7_224)")
  p.add_argument("--batch", action="append", help="batch size(s); repeatable or comma list "
                 "(default 8)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype (params stay float32; timm: autocast)")
  p.add_argument("--scan_blocks", default="on", choices=("on", "off"),
                 help="swin_jax: nn.scan over block pairs (default on, as the recipes)")
  p.add_argument("--remat", default="dots_no_batch",
                 choices=("none", "full", "dots", "dots_no_batch"),
                 help="swin_jax: rematerialisation policy of each block (pair); default: "
                 "the recipes' dots_no_batch")
  p.add_argument("--attention_impl", default="explicit", choices=("explicit", "dot_product"),
                 help="swin_jax: einsum attention or jax.nn.dot_product_attention")
  p.add_argument("--img_size", type=int, default=0, help="build both models for this "
                 "square input size (0: the model's own: 512x512 for UperNet, the 800x1344 "
                 "canvas for the detectors, where it must be a multiple of 32); window "
                 "clamps follow it, as in timm. Not for nnFormer (its crop is its input)")
  p.add_argument("--repeats", type=int, default=5, help="timed runs; medians are reported")
  p.add_argument("--warmup", type=int, default=2, help="untimed runs after the first call")
  p.add_argument("--iters", type=int, default=1, help="calls per timed run")
  p.add_argument("--vs", choices=TORCH_SIDE, default=None, help="also measure the PyTorch "
                 "model (same meaning for both values): timm's for the classifiers, the "
                 "timm-assembled reference for Swin-Unet, the official network rebuilt for "
                 "nnFormer, mmseg's UperNet, mmdet's Mask R-CNN")
  p.add_argument("--threads", type=int, default=0, help="CPUs for both frameworks (process "
                 "affinity; torch.set_num_threads); 0 = all usable CPUs")
  p.add_argument("--skip_train", action="store_true", help="forward only")
  p.add_argument("--macs_only", action="store_true", help="only the MAC counts (compile, no "
                 "timing, no timm), in this process")
  p.add_argument("--out", default="", help="write the report as JSON here")
  p.add_argument("--no_isolate", dest="isolate", action="store_false",
                 help="run every job in this process (RSS peaks then accumulate)")
  p.add_argument("--debug", action="store_true", help="on an error, show the traceback "
                 f"(also: {cli.DEBUG_ENV}=1) instead of one line and a log file")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.models = _csv_list(args.model) or ["swin_tiny_patch4_window7_224"]
  args.batches = _csv_list(args.batch, int) or [8]
  args.img_size = args.img_size or None
  if args.threads <= 0:
    try:
      args.threads = len(os.sched_getaffinity(0))
    except AttributeError:
      args.threads = os.cpu_count() or 1
  return args


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
  from swin_jax.models import registry  # pylint: disable=import-outside-toplevel
  frameworks = ["swin_jax"] + (["timm"] if args.vs in TORCH_SIDE and not args.macs_only else [])
  report: dict[str, Any] = dict(
      meta=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                cpu=cpu_model(), cpu_count=os.cpu_count(), usable_cpus=args.threads,
                host=platform.node(), env={}),
      args={k: v for k, v in vars(args).items() if k not in ("model", "batch", "worker")},
      method=dict(
          timing="median of --repeats timed runs after one first call and --warmup runs; "
                 "each run blocks on the result",
          forward="jax: jit(model.apply(train=False)); timm (the PyTorch side: timm, or "
                  "the Swin-Unet / nnFormer / UperNet / Mask R-CNN reference): eval() under "
                  "torch.no_grad() (nnFormer: do_ds off). UperNet: logits at the input size; "
                  "detectors: boxes, scores, classes and 28x28 masks of 100 detections "
                  "(no paste)",
          train="jax: swin_jax.train.step.train_step (AdamW, clip 5, no-decay mask, mixup "
                "off, drop path on, state donated); timm: train(), CrossEntropyLoss, "
                "backward, torch.optim.AdamW.step. Swin-Unet, both sides: 0.4 CE + 0.6 "
                "softmax Dice, SGD momentum 0.9 wd 1e-4, no clipping, drop path on. "
                "nnFormer, both sides: nnU-Net's Dice + CE over the deep-supervision "
                "outputs (weights 1/2**i normalised, downsampled random labels), SGD lr "
                "1e-2 momentum 0.99 Nesterov wd 3e-5, clip 12, drop path on; img/s = "
                "volumes/s. UperNet, both sides: mmseg's CE(decode) + 0.4 CE(aux), ignore "
                "255, BatchNorm in train mode, AdamW 6e-5 wd 0.01 (no decay: norm, "
                "position tables), drop path on. Detectors, both sides: mmdet's RPN + "
                "R-CNN (+ mask) losses of 8 random boxes per image with the official "
                "assigners and samplers, AdamW 1e-4 wd 0.05 (same no-decay names), drop "
                "path on",
          compile_s="wall time of jax.jit(f).lower(...).compile()",
          xla_memory="compiled.memory_analysis(): peak_estimate = argument + output + temp "
                     "- alias bytes (XLA buffer assignment, not measured)",
          rss_peak_mb="ru_maxrss of the worker process after the phase (whole process, "
                      "imports included; rss_start_mb is the RSS before the model exists)",
          macs="xla_*: cost_analysis()['flops'] / 2 / batch (all ops, elementwise included); "
               "matmul_*: dot_general + convolution MACs from the StableHLO; analytic: the "
               "official flops() convention (swin_jax.bench.analytic_macs)",
          ratio="swin_jax img/s / timm img/s"),
      results=[])
  names = [registry.resolve_name(name) for name in args.models]
  for name in names:
    model_overrides(args, name)  # option errors (--img_size for an nnFormer) before any run
  for name in names:
    for batch in args.batches:
      row: dict[str, Any] = dict(model=name, batch=batch, dtype=args.dtype,
                                 options=options_label(vars(args), name))
      if args.macs_only:
        log(f"[bench] MACs of {name} batch {batch} ...", file=sys.stderr)
        model = registry.create_model(name, **model_overrides(args, name))
        size = list(input_size(model, args.img_size))
        row["swin_jax"] = dict(img_size=size, macs=forward_macs(model, batch, size, name))
        report["results"].append(row)
        continue
      for fw in frameworks:
        log(f"[bench] {fw} {name} batch {batch} {args.dtype} ...", file=sys.stderr)
        try:
          res = (run_isolated(fw, name, batch, args) if args.isolate
                 else run_job(fw, name, batch, args))
        except Exception as e:  # pylint: disable=broad-except
          res = dict(error=f"{type(e).__name__}: {e}")
        if "env" in res:
          report["meta"]["env"][fw] = res.pop("env")
        row[fw] = res
      if "timm" in row:
        row["ratio"] = {}
        for phase in ("forward", "train"):
          a, b = _get(row, "swin_jax", phase, "img_per_s"), _get(row, "timm", phase, "img_per_s")
          row["ratio"][phase] = a / b if a and b else None
      report["results"].append(row)
  return report


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  with cli.report_errors("bench", debug=args.debug or cli.debug_requested()):
    return _main(args)


def _main(args: argparse.Namespace) -> int:
  if args.worker:
    set_threads(args.threads)  # before the first JAX computation / torch import
    result = run_job(args.worker, args.models[0], args.batches[0], args)
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0
  report = run(args)
  print(format_header(report))
  print()
  print(format_table(report))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}")
  errors = [row for row in report["results"]
            if any("error" in row.get(fw, {}) for fw in ("swin_jax", "timm"))]
  for row in errors:
    for fw in ("swin_jax", "timm"):
      if "error" in row.get(fw, {}):
        print(f"ERROR {fw} {row['model']} b{row['batch']}: {row[fw]['error']}", file=sys.stderr)
  return 1 if errors else 0


if __name__ == "__main__":
  sys.exit(main())
