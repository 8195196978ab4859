"""Numerical parity of SimMIM with a PyTorch reference, float32 on CPU.

The reference is built here: timm's Swin (V1 and V2) as the encoder, with the official
SimMIM mask-token injection, final norm, 1x1-conv decoder, ``PixelShuffle`` and masked L1
loss written in torch after microsoft/SimMIM ``models/simmim.py``. Every tensor (mask token,
norms and decoder included) gets seeded random values, goes through the converter into
swin_jax (official ``encoder.*`` / ``decoder.0.*`` keys), and both run on the same images
and mask. Loss within 1e-5 relative, reconstruction within 1e-4 absolute.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import swin_jax  # noqa: E402
from swin_jax import convert  # noqa: E402
from swin_jax.data.simmim_mask import MaskGenerator  # noqa: E402

import torch_oracle as oracle  # noqa: E402

# Tiny, four stages (stride 32, as the real model): 64 px -> 16, 8, 4, 2 tokens per side;
# window 4, so the last stage clamps its window to 2 and drops the shift.
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4,
            img_size=64, drop_path_rate=0.0)
IMG = 64
PATCH = 4


class TorchSimMIM(torch.nn.Module):
  """The official ``SimMIM(SwinTransformerForSimMIM)`` forward over a timm Swin encoder."""

  def __init__(self, swin: torch.nn.Module, stride: int = 32, norm_target: int = 0):
    super().__init__()
    self.norm_target = norm_target
    self.encoder = swin
    self.encoder.mask_token = torch.nn.Parameter(torch.zeros(1, 1, swin.embed_dim))
    self.decoder = torch.nn.Sequential(
        torch.nn.Conv2d(swin.num_features, stride**2 * 3, kernel_size=1),
        torch.nn.PixelShuffle(stride))

  def encode(self, x, mask):
    enc = self.encoder
    x = enc.patch_embed(x)                     # timm: (B, H/4, W/4, C), after its norm
    b, h, w, c = x.shape
    tokens = enc.mask_token.expand(b, h * w, -1)
    weight = mask.flatten(1).unsqueeze(-1).type_as(tokens)
    x = x.reshape(b, h * w, c) * (1.0 - weight) + tokens * weight
    x = enc.layers(x.reshape(b, h, w, c))      # timm: no absolute position embedding here
    x = enc.norm(x)
    return x.permute(0, 3, 1, 2)               # (B, 8C, H/32, W/32)

  def forward(self, x, mask):
    reconstruction = self.decoder(self.encode(x, mask))
    pixel_mask = mask.repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2).unsqueeze(1)
    if self.norm_target:
      x = torch_norm_targets(x, self.norm_target)
    l1 = torch.nn.functional.l1_loss(x, reconstruction, reduction="none")
    loss = (l1 * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3
    return loss, reconstruction


def torch_norm_targets(x, k):
  """The official V2 ``norm_targets``: mean / unbiased variance over k x k neighbourhoods."""
  pool = dict(kernel_size=k, stride=1, padding=k // 2)
  mean = torch.nn.functional.avg_pool2d(x, count_include_pad=False, **pool)
  square_mean = torch.nn.functional.avg_pool2d(x**2, count_include_pad=False, **pool)
  count = torch.nn.functional.avg_pool2d(torch.ones_like(x), count_include_pad=True,
                                         **pool) * k**2
  var = torch.clamp((square_mean - mean**2) * (count / (count - 1)), min=0.0)
  return (x - mean) / (var + 1e-6)**0.5


def official_state_dict(model: TorchSimMIM) -> dict[str, np.ndarray]:
  """``encoder.*`` in the official layout (timm's downsample moved back one stage)."""
  sd = oracle.state_dict_numpy(model)
  encoder = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
  out = {f"encoder.{k}": v for k, v in oracle.timm_to_official(encoder).items()}
  out.update({k: v for k, v in sd.items() if k.startswith("decoder.")})
  return out


@pytest.mark.parametrize("version", [1, 2])
def test_loss_and_reconstruction_match_the_official_simmim(version):
  """V1: the SimMIM repo's model; V2: Swin-Transformer's, with its normalised target (7 px
  neighbourhoods here, 47 in the recipe)."""
  timm_kwargs = dict(img_size=IMG, patch_size=PATCH, embed_dim=TINY["embed_dim"],
                     depths=TINY["depths"], num_heads=TINY["num_heads"],
                     window_size=TINY["window_size"], num_classes=0, drop_path_rate=0.0)
  if version == 1:
    swin = oracle.timm_swin(timm_kwargs)
    name = "simmim_swin_tiny_window6_192"
  else:
    swin = oracle.timm_swinv2(timm_kwargs)
    name = "simmim_swinv2_base_window12_192"
  norm_target = 0 if version == 1 else 7
  ref = TorchSimMIM(swin, norm_target=norm_target).float().eval()
  if version == 1:
    oracle.randomize_(ref, seed=3)
  else:
    oracle.randomize_v2_(ref, seed=3, clamped_head=False)
  with torch.no_grad():  # the mask token clearly distinct from a patch embedding
    ref.encoder.mask_token.copy_(torch.linspace(-1.0, 1.0, TINY["embed_dim"])[None, None])

  model = swin_jax.create_model(name, **TINY, norm_target_patch_size=norm_target)
  variables = convert.load_torch_variables(official_state_dict(ref), model)
  # Every official tensor made it in, and comes back out unchanged.
  exported = convert.export_torch_state_dict(variables, model)
  sd = official_state_dict(ref)
  assert set(exported) == set(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)

  images = oracle.random_images(2, IMG, IMG, seed=5)
  masks = MaskGenerator(IMG, 16, PATCH, 0.6).batch(np.random.default_rng(0), 2)
  assert masks.shape == (2, 16, 16) and 0 < masks.mean() < 1

  with torch.no_grad():
    ref_loss, ref_rec = ref(oracle.nhwc_to_nchw(images), torch.from_numpy(masks))
  ref_loss, ref_rec = float(ref_loss), oracle.nchw_to_nhwc(ref_rec)

  out = jax.jit(lambda v, x, m: model.apply(v, x, m, train=False))(
      variables, jnp.asarray(images), jnp.asarray(masks))
  rec = np.asarray(out["reconstruction"])
  assert rec.shape == (2, IMG, IMG, 3)
  assert 0.1 < float(np.std(ref_rec)) < 100.0  # O(1) outputs: 1e-4 is a real test
  np.testing.assert_allclose(rec, ref_rec, atol=1e-4, rtol=0)
  print(f"v{version}: reconstruction max |diff| {np.max(np.abs(rec - ref_rec)):.3g}, loss "
        f"{float(out['loss']):.7g} vs {ref_loss:.7g}")
  assert abs(float(out["loss"]) - ref_loss) <= 1e-5 * abs(ref_loss), (float(out["loss"]),
                                                                      ref_loss)

