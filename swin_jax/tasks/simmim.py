"""SimMIM masked-image-modelling pretraining on the task seam (microsoft/SimMIM).

Batches are ``{'image': (B, S, S, 3) float32, 'patch_mask': (B, S/p, S/p) int32}`` (1 =
masked, at the encoder's patch resolution ``p``; eval batches add the loop's ``'mask': (B,)``
of real examples); labels, where the dataset has them, are not read.
Training minimises the model's own loss (``SimMIM.__call__``: L1 on the masked pixels
against the normalised image, or its ``norm_targets`` for the V2 recipe). Evaluation
reports ``eval/loss``, the same loss over the whole eval set (masked pixels of every real
example pooled, as the official loss pools them over a batch), with one fixed mask per
eval image (drawn from a generator seeded by the image's bytes, so every run and host
masks an image the same way).

Host transforms (``data_simmim.SimMIMTransform``): RandomResizedCrop (bicubic, scale
``task.crop_scale``, ratio ``task.crop_ratio``), horizontal flip, ImageNet normalisation,
then a mask from ``task.mask_patch_size`` / ``task.mask_ratio`` (``MaskGenerator``), all
drawn from the example's ``np.random.Generator`` so a resumed run draws the same masks.

At the end of training the task writes ``reconstructions/step_<N>.png``: for the first
eval images, the masked input, the reconstruction (masked patches predicted, visible ones
from the input) and the original, side by side (``swin_jax.visualize.reconstruction``).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from swin_jax.data import images as images_lib
from swin_jax.data import transforms
from swin_jax.data.simmim_mask import MaskGenerator
from swin_jax.models import registry
from swin_jax.models.simmim import SimMIM, norm_targets, upsample_mask
from swin_jax.models.swin import SwinTransformer
from swin_jax.tasks import base

ConfigDict = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class SimMIMTrainTransform:
  """``(example, rng) -> {'image': float32 (S, S, 3), 'patch_mask': int32 (S/p, S/p)}``.

  A frozen dataclass so that grain can pickle it into worker processes.
  """
  image_size: int
  masks: MaskGenerator
  crop_scale: tuple[float, float] = (0.67, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  hflip: float = 0.5

  def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = transforms.random_resized_crop(transforms.to_pil_rgb(example["image"]), rng,
                                           self.image_size, self.crop_scale, self.crop_ratio)
    if self.hflip > 0 and rng.random() < self.hflip:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return {"image": images_lib.normalize(image), "patch_mask": self.masks(rng)}


@dataclasses.dataclass(frozen=True)
class SimMIMEvalTransform:
  """``example -> {'image', 'patch_mask'}``: the eval geometry, a mask fixed per image."""
  image_size: int
  masks: MaskGenerator
  crop: bool = True

  def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
    raw = np.ascontiguousarray(example["image"])
    rng = np.random.default_rng(zlib.crc32(raw.tobytes()))
    pixels = images_lib.eval_transform(transforms.to_pil_rgb(raw), self.image_size, self.crop)
    return {"image": pixels, "patch_mask": self.masks(rng)}


def masked_l1_sums(target: jnp.ndarray, reconstruction: jnp.ndarray, mask: jnp.ndarray,
                   patch_size: int, example_mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Eval sums of the official loss over real examples: ``loss`` = sum of ``|x - x_rec| / C``
  over their masked pixels, ``count`` = the number of those pixels (their ratio is
  ``masked_l1_loss`` over the pooled pixels)."""
  pixel_mask = upsample_mask(mask.astype(jnp.float32), patch_size)
  pixel_mask = pixel_mask * example_mask[:, None, None]
  channels = target.shape[-1]
  l1 = jnp.abs(target.astype(jnp.float32) - reconstruction).sum(-1) / channels
  return {"loss": jnp.sum(l1 * pixel_mask), "count": jnp.sum(pixel_mask)}


class SimMIMTask(base.Task):
  """SimMIM pretraining of a Swin (V1 or V2) encoder on unlabelled images."""
  name = "simmim"

  @classmethod
  def section_defaults(cls) -> ConfigDict:
    return ConfigDict(dict(
        mask_patch_size=32,            # pixels per side of a mask cell (official 32)
        mask_ratio=0.6,                # ceil(cells * ratio) cells masked per image
        crop_scale=(0.67, 1.0),        # RandomResizedCrop area fraction (official)
        crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        hflip=0.5,
        num_figure_images=8,           # rows of the final reconstruction figure; 0: none
    ))

  def build_model(self) -> SimMIM:
    model = registry.create_model(self.config.model.name, **self.config.model.overrides)
    if not isinstance(model, SimMIM):
      raise ValueError(f"task 'simmim' needs a SimMIM model (simmim_*), got "
                       f"{self.config.model.name}")
    encoder, size = model.encoder, int(self.config.dataset.image_size)
    img_size = encoder.img_size if isinstance(encoder.img_size, int) else encoder.img_size[0]
    if img_size != size:
      raise ValueError(f"model {self.config.model.name} is built for {img_size} px images but "
                       f"dataset.image_size is {size}; set config.model.overrides.img_size")
    stride = encoder.patch_size * 2 ** (len(encoder.depths) - 1)
    if model.encoder_stride != stride:
      raise ValueError(f"encoder_stride {model.encoder_stride} must be the encoder's total "
                       f"downsampling {stride} (patch_size {encoder.patch_size}, "
                       f"{len(encoder.depths)} stages); set config.model.overrides.encoder_stride")
    self.mask_generator()   # checks the mask geometry now, not in a data worker
    return model

  def mask_generator(self) -> MaskGenerator:
    # The encoder's patch size from the model's config (or the Swin default): no model is
    # built for it.
    fields = registry.model_config(self.config.model.name, **self.config.model.overrides)
    patch_size = fields.get("patch_size",
                            registry.constructor_fields(SwinTransformer)["patch_size"])
    return MaskGenerator(input_size=int(self.config.dataset.image_size),
                         mask_patch_size=int(self.config.task.mask_patch_size),
                         model_patch_size=int(patch_size),
                         mask_ratio=float(self.config.task.mask_ratio))

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    size = int(self.config.dataset.image_size)
    side = self.mask_generator().mask_shape
    return {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32),
            "patch_mask": jax.ShapeDtypeStruct((batch_size, *side), jnp.int32)}

  def train_transform(self) -> SimMIMTrainTransform:
    task = self.config.task
    return SimMIMTrainTransform(image_size=int(self.config.dataset.image_size),
                                masks=self.mask_generator(),
                                crop_scale=tuple(task.crop_scale),
                                crop_ratio=tuple(task.crop_ratio), hflip=float(task.hflip))

  def eval_transform(self) -> SimMIMEvalTransform:
    return SimMIMEvalTransform(image_size=int(self.config.dataset.image_size),
                               masks=self.mask_generator(), crop=self.config.dataset.eval_crop)

  def loss_fn(self, model, params, model_state, batch, rng):
    out, model_state = base.apply_with_state(model, params, model_state, batch["image"],
                                             batch["patch_mask"], train=True,
                                             rngs={"dropout": rng})
    return out["loss"], ({}, model_state)

  def eval_step(self, model, params, model_state, batch):
    variables = {"params": params, **model_state}
    reconstruction = model.apply(variables, batch["image"], batch["patch_mask"],
                                 train=False, method=SimMIM.reconstruct)
    target = batch["image"]
    if model.norm_target_patch_size:
      target = norm_targets(target, model.norm_target_patch_size)
    return masked_l1_sums(target, reconstruction, batch["patch_mask"],
                          model.encoder.patch_size, batch["mask"])

  def evaluator(self) -> base.Evaluator:
    return base.SumEvaluator(("loss",))

  def write_figures(self, model, params, model_state, workdir: str, step: int) -> list[str]:
    """``reconstructions/step_<step>.png`` of the first eval images (see module doc)."""
    # pylint: disable-next=import-outside-toplevel
    from swin_jax.visualize import reconstruction as figure
    count = int(self.config.task.num_figure_images)
    if count <= 0:
      return []
    images, masks = [], []
    for batch in self.eval_batches():
      real = np.asarray(batch["mask"]) > 0
      images.append(np.asarray(batch["image"])[real])
      masks.append(np.asarray(batch["patch_mask"])[real])
      if sum(len(x) for x in images) >= count:
        break
    images = np.concatenate(images)[:count]
    masks = np.concatenate(masks)[:count]
    variables = {"params": params, **model_state}
    predicted = np.asarray(jax.jit(
        lambda v, x, m: model.apply(v, x, m, train=False, method=SimMIM.reconstruct))(
            variables, images, masks))
    panel = figure.reconstruction_panel(images, masks, predicted, model.encoder.patch_size,
                                        normalised_target=bool(model.norm_target_patch_size))
    path = os.path.join(workdir, "reconstructions", f"step_{step}.png")
    figure.save_png(panel, path)
    print(f"wrote {path}", flush=True)
    return [path]

