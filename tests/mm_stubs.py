"""Lets OpenMMLab's pure-PyTorch modules import under mmcv-lite.

``import mmseg.models`` (and ``mmdet.models``) imports ``mmcv.ops``, which loads mmcv's
compiled extension ``mmcv._ext``; mmcv-lite ships without it. The modules the parity tests
use (mmseg's ``UPerHead`` and ``FCNHead``, mmdet's ``SwinTransformer``) call none of its ops,
so a stand-in module whose every function raises is enough for the imports to succeed.
Import this module before any ``mmseg`` / ``mmdet`` import.
"""

import sys
import types

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


install()
