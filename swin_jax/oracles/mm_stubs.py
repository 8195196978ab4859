"""Lets OpenMMLab's pure-PyTorch modules import and run under mmcv-lite.

``import mmseg.models`` (and ``mmdet.models``) imports ``mmcv.ops``, which loads mmcv's
compiled extension ``mmcv._ext``; mmcv-lite ships without it. ``install()`` registers a
stand-in module whose every function raises, which is enough for the imports: mmseg's
``UPerHead`` / ``FCNHead`` and mmdet's ``SwinTransformer`` call none of its ops. Call it
before any ``mmseg`` / ``mmdet`` import.

Mask R-CNN does call two compiled ops; ``torchvision_ops()`` routes them to torchvision's
(same rules): mmcv's ``nms`` (which ``batched_nms`` looks up by name in its module) and the
``roi_align`` function with which mmdet's ``BitmapMasks.crop_and_resize`` cuts the mask
targets. mmcv's ``RoIAlign`` module reaches torchvision on its own with
``use_torchvision=True``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from typing import Iterator

EXTENSION = "mmcv._ext"


def _missing_op(name: str):
  def op(*args, **kwargs):
    raise NotImplementedError(f"{EXTENSION}.{name} is a compiled mmcv op; mmcv-lite has none")
  return op


def _module_getattr(name: str):
  if name.startswith("__"):  # keep Python's protocol lookups (__path__, __file__, ...) honest
    raise AttributeError(name)
  return _missing_op(name)


def install() -> None:
  """Registers the stand-in ``mmcv._ext`` unless a real one is importable."""
  if EXTENSION in sys.modules:
    return
  try:
    import mmcv._ext  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    return
  except ImportError:
    pass
  stub = types.ModuleType(EXTENSION)
  stub.__getattr__ = _module_getattr
  sys.modules[EXTENSION] = stub


def torchvision_nms(boxes, scores, iou_threshold, offset=0, score_threshold=0, max_num=-1):
  """mmcv's ``nms(boxes (N, 4), scores (N,), iou) -> (dets (K, 5), keep (K,))`` through
  ``torchvision.ops.nms`` (the same greedy rule); only mmcv's defaults are supported."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  if offset != 0 or score_threshold != 0 or max_num != -1:
    raise NotImplementedError("torchvision_nms supports mmcv's default offset, "
                              "score_threshold and max_num only")
  keep = torchvision.ops.nms(boxes, scores, float(iou_threshold))
  return torch.cat([boxes[keep], scores[keep, None]], 1), keep


def torchvision_roi_align(features, rois, output_size, spatial_scale=1.0, sampling_ratio=0,
                          pool_mode="avg", aligned=True):
  """mmcv's ``roi_align`` function (``rois (R, 5)``: image index, x1 y1 x2 y2) through
  ``torchvision.ops.roi_align``, which averages as mmcv's 'avg' mode does."""
  import torchvision  # pylint: disable=import-outside-toplevel
  if pool_mode != "avg":
    raise NotImplementedError("torchvision's roi_align averages; pool_mode 'max' is mmcv's")
  return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio,
                                   aligned)


@contextlib.contextmanager
def torchvision_ops() -> Iterator[None]:
  """Within: mmcv's ``nms`` and mmdet's mask-target ``roi_align`` run through torchvision
  (see the module docstring); the originals are restored on exit."""
  install()
  patches = [(importlib.import_module("mmcv.ops.nms"), "nms", torchvision_nms),
             (importlib.import_module("mmdet.structures.mask.structures"), "roi_align",
              torchvision_roi_align)]
  originals = [getattr(module, name) for module, name, _ in patches]
  try:
    for module, name, op in patches:
      setattr(module, name, op)
    yield
  finally:
    for (module, name, _), original in zip(patches, originals):
      setattr(module, name, original)
