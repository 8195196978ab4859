"""Per-device memory of params + AdamW state under the FSDP rule, for pod-sized meshes.

Uses only ``jax.eval_shape`` (nothing is allocated or compiled) and the same
``sharding.fsdp_spec`` rule the trainer uses, so it runs in seconds on a laptop:

  python experiments/fsdp_memory.py      # prints the markdown table in experiments/benchmarks.md

Activations are not included (they depend on batch, remat and scan; see the XLA memory
columns of the benchmark table for measured programs).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from swin_jax.models import registry
from swin_jax.models.swin import SwinTransformer
from swin_jax.train import sharding

MIN_SIZE = 2**18  # the config default fsdp_min_weight_size
# The recipes' layout: blocks stacked per pair, so the rule sees (depth // 2, ...) arrays.
RECIPE = dict(scan_blocks=True)
FSDP_SIZES = (1, 8, 64, 256)

# SwinV2-G as in the V2 paper (3.0B params): C=512, depths (2,2,42,4), heads (16,32,64,128),
# 640x640 with window 40 for fine-tuning; 192/W12 at pretraining. The extra main-branch norms
# of the paper's G model are not part of this implementation (spec section 3).
SWINV2_G = dict(version=2, img_size=192, window_size=12, embed_dim=512, depths=(2, 2, 42, 4),
                num_heads=(16, 32, 64, 128), num_classes=1000)


def per_device_bytes(model: SwinTransformer, fsdp_size: int) -> tuple[int, int]:
  """(total params, bytes per device of params + AdamW mu/nu + count) in float32."""
  image = jax.ShapeDtypeStruct((1, *[model.img_size] * 2, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)["params"]
  opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
  total = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
  per_device = 0
  for leaf in jax.tree.leaves((params, opt_state)):
    spec = sharding.fsdp_spec(leaf.shape, fsdp_size, MIN_SIZE)
    split = fsdp_size if "fsdp" in tuple(spec) else 1
    per_device += math.prod(leaf.shape) * leaf.dtype.itemsize // split
  return total, per_device


def main() -> None:
  models = {
      "Swin-L 224 (swin_large_patch4_window7_224)": registry.create_model("swin_l", **RECIPE),
      "SwinV2-B 192 (22K head)": registry.create_model("swinv2_base_window12_192", **RECIPE),
      "SwinV2-G-sized (C 512, depths 2-2-42-4)": SwinTransformer(**SWINV2_G, **RECIPE),
  }
  header = " | ".join(f"fsdp={n}" for n in FSDP_SIZES)
  print(f"| model | params | {header} |")
  print("|---|---|" + "---|" * len(FSDP_SIZES))
  for name, model in models.items():
    cells = []
    for n in FSDP_SIZES:
      total, per_device = per_device_bytes(model, n)
      cells.append(f"{per_device / 2**30:.2f} GiB")
    print(f"| {name} | {total / 1e6:.1f}M | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
