"""SimMIM's random block masks, drawn on the host (microsoft/SimMIM ``MaskGenerator``).

    gen = MaskGenerator()                          # 192 px, 32 px mask patches, ratio 0.6
    rng = np.random.default_rng(seed)
    masks = gen.batch(rng, 128)                    # (128, 48, 48) int32, 1 = masked

The image is cut into ``(input_size / mask_patch_size)**2`` mask patches (6 x 6 = 36);
``ceil(36 * 0.6) = 22`` of them, picked by one random permutation per image, are masked.
The grid is then repeated to the model's patch resolution (x8 -> 48 x 48), which is what
``SimMIM`` takes. Randomness comes only from the ``numpy.random.Generator`` passed in, so a
run that checkpoints ``rng.bit_generator.state`` resumes the exact mask sequence.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskGenerator:
  """Random block masks ``(H/p, W/p)`` at model-patch resolution ``p``."""
  input_size: int = 192
  mask_patch_size: int = 32
  model_patch_size: int = 4
  mask_ratio: float = 0.6

  def __post_init__(self):
    if self.input_size % self.mask_patch_size:
      raise ValueError(f"input_size {self.input_size} is not divisible by mask_patch_size "
                       f"{self.mask_patch_size}")
    if self.mask_patch_size % self.model_patch_size:
      raise ValueError(f"mask_patch_size {self.mask_patch_size} is not divisible by "
                       f"model_patch_size {self.model_patch_size}")
    if not 0.0 <= self.mask_ratio <= 1.0:
      raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")

  @property
  def grid_size(self) -> int:
    """Mask patches per side (6)."""
    return self.input_size // self.mask_patch_size

  @property
  def scale(self) -> int:
    """Model patches per mask patch, per side (8)."""
    return self.mask_patch_size // self.model_patch_size

  @property
  def token_count(self) -> int:
    return self.grid_size**2

  @property
  def mask_count(self) -> int:
    """Masked mask patches per image: ``ceil(token_count * mask_ratio)`` (22)."""
    return int(math.ceil(self.token_count * self.mask_ratio))

  @property
  def mask_shape(self) -> tuple[int, int]:
    """``(H/p, W/p)`` of one mask (48, 48)."""
    side = self.grid_size * self.scale
    return side, side

  def __call__(self, rng: np.random.Generator) -> np.ndarray:
    """One mask ``(H/p, W/p)`` int32: the first ``mask_count`` cells of a permutation."""
    cells = np.zeros(self.token_count, np.int32)
    cells[rng.permutation(self.token_count)[:self.mask_count]] = 1
    grid = cells.reshape(self.grid_size, self.grid_size)
    return grid.repeat(self.scale, axis=0).repeat(self.scale, axis=1)

  def batch(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
    """``(batch_size, H/p, W/p)`` int32, one permutation per image, in order."""
    return np.stack([self(rng) for _ in range(batch_size)])
