"""PyTorch checkpoints <-> swin_jax params (official and timm layouts)."""

from swin_jax.convert.head_map import LABEL_SPACES, map_22k_to_1k
from swin_jax.convert.resize import resize_bias_table
from swin_jax.convert.swin_unet import (export_swin_unet_state_dict,
                                        load_swin_unet_from_imagenet)
from swin_jax.convert.torch_checkpoint import (CheckpointMismatchError, LoadReport,
                                               abstract_params, export_torch_state_dict,
                                               init_params, load_torch_checkpoint,
                                               load_torch_variables, load_with_report)

__all__ = ["CheckpointMismatchError", "LABEL_SPACES", "LoadReport", "abstract_params",
           "export_swin_unet_state_dict", "export_torch_state_dict", "init_params",
           "load_swin_unet_from_imagenet", "load_torch_checkpoint", "load_torch_variables",
           "load_with_report", "map_22k_to_1k", "resize_bias_table"]
