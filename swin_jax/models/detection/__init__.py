"""Static-shape building blocks of the two-stage detectors (Faster / Mask R-CNN on Swin + FPN).

* ``anchors``: mmdet ``AnchorGenerator`` grids (numpy constants per feature-map shape);
* ``box_coder``: ``DeltaXYWHBBoxCoder`` encode / decode;
* ``nms``: greedy NMS (torchvision semantics) padded to a fixed output size, and per-category;
* ``roi_align``: RoIAlign (aligned, fixed sampling ratio) on one map or the FPN levels;
* ``fpn``, ``rpn_head``, ``bbox_head``, ``mask_head``: the official config's modules, params
  named as the official ``neck.*``, ``rpn_head.*``, ``roi_head.{bbox,mask}_head.*`` keys
  (``swin_jax.convert.detection``);
* ``proposals``: the RPN's proposals (per-level top-k, decode, NMS across levels), padded;
* ``postprocess``: the test outputs (per-class NMS, 100 detections, the detected class's
  mask) and the host-side mask paste;
* ``rcnn``: ``MaskRCNN`` / ``FasterRCNN``, the whole detector on a Swin backbone.
"""

from swin_jax.models.detection.bbox_head import Shared2FCBBoxHead
from swin_jax.models.detection.fpn import FPN
from swin_jax.models.detection.mask_head import FCNMaskHead
from swin_jax.models.detection.rcnn import FasterRCNN, MaskRCNN
from swin_jax.models.detection.rpn_head import RPNHead

__all__ = ["FPN", "FasterRCNN", "FCNMaskHead", "MaskRCNN", "RPNHead", "Shared2FCBBoxHead"]
