"""swin_jax.bench on tiny models: every report field, the MAC counts, the JSON. No timing checks."""

import json
import math
import subprocess
import sys

import pytest

from swin_jax import bench
from swin_jax.models import SwinTransformer, create_model, registry

# The tiny model of the brief, at 40 px: a 10x10 token grid with 4x4 windows, so stage 0
# attends over 3x3 windows of a zero-padded 12x12 map and stage 1 (5x5) over 2x2 windows of
# an 8x8 map; the analytic count must include those padding windows.
TINY = dict(img_size=40, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
            window_size=4, num_classes=10, drop_path_rate=0.1)


# XLA's CPU backend at optimisation level 0 (LLVM's; the HLO passes still run, so the
# programs and their cost analysis are the same): about half the compile time of the rows'
# train steps, which is most of their run time. Nothing here checks speed.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture
def fast_compiles(monkeypatch):
  """Every ``lower(...).compile()`` of the bench (all its measured programs) compiles with
  FAST_COMPILE added to its options."""
  import jax  # pylint: disable=import-outside-toplevel
  compile_ = jax.stages.Lowered.compile

  def compile(self, compiler_options=None):  # pylint: disable=redefined-builtin
    return compile_(self, {**FAST_COMPILE, **(compiler_options or {})})

  monkeypatch.setattr(jax.stages.Lowered, "compile", compile)


def test_analytic_macs_reproduce_the_paper():
  # The official flops() gives 4.49G / 8.75G / 15.44G / 47.1G for these.
  for name, paper in [("swin_tiny_patch4_window7_224", 4.5), ("swin_small_patch4_window7_224", 8.7),
                      ("swin_base_patch4_window7_224", 15.4),
                      ("swin_base_patch4_window12_384", 47.0)]:
    macs = bench.analytic_macs(create_model(name))["total"] / 1e9
    assert macs == pytest.approx(paper, rel=0.01), name


def test_analytic_macs_by_hand():
  """The tiny model without padding (32 px), summed by hand from the official formulas."""
  model = SwinTransformer(**{**TINY, "img_size": 32})
  patch = 8 * 8 * 16 * 3 * 16 + 8 * 8 * 16
  stage0 = 2 * (2 * 16 * 64 + 4 * (16 * 16 * 48 + 2 * 16 * 16 * 16 + 16 * 16 * 16) +
                2 * 64 * 16 * 64)
  merge = 4 * 4 * 64 + 4 * 4 * 64 * 32
  stage1 = 2 * (2 * 32 * 16 + 1 * (16 * 32 * 96 + 2 * 2 * 16 * 16 * 16 + 16 * 32 * 32) +
                2 * 16 * 32 * 128)
  head = 32 * 64 // 4 + 32 * 10
  assert bench.analytic_macs(model)["total"] == patch + stage0 + merge + stage1 + head


def test_stablehlo_matmul_parser():
  text = """
  func.func public @main(%arg0: tensor<2x8xf32>) -> tensor<2x4xf32> {
    %0 = stablehlo.dot_general %arg0, %w, contracting_dims = [1] x [0] : (tensor<2x8xf32>, tensor<8x4xf32>) -> tensor<2x4xf32>
    %1 = call @inner(%0) : (tensor<2x4xf32>) -> tensor<2x4xf32>
    %2 = call @inner(%1) : (tensor<2x4xf32>) -> tensor<2x4xf32>
  }
  func.func private @inner(%arg0: tensor<2x4xf32>) -> tensor<2x4xf32> {
    %0 = stablehlo.dot_general %a, %b, batching_dims = [0] x [0], contracting_dims = [2] x [1] : (tensor<3x2x5xbf16>, tensor<3x5x4xbf16>) -> tensor<3x2x4xbf16>
    %1 = stablehlo.convolution(%x, %k) dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f], window = {stride = [4, 4]} : (tensor<1x8x8x3xf32>, tensor<4x4x3x16xf32>) -> tensor<1x2x2x16xf32>
  }
  """
  inner = 3 * 2 * 4 * 5 + 1 * 2 * 2 * 16 * (4 * 4 * 3)
  assert bench.stablehlo_matmul_macs(text) == 2 * 4 * 8 + 2 * inner


# The report's model: stage 1 holds two scanned block pairs, so its MACs only match the
# official count if the bench counts every block (XLA's cost analysis sees a scan's loop body
# once; the bench counts the unrolled twin).
REPORT_TINY = dict(TINY, depths=(2, 4))


@pytest.fixture
def tiny_report(tmp_path, monkeypatch, fast_compiles):
  monkeypatch.setitem(registry.MODEL_CONFIGS, "bench_tiny", REPORT_TINY)
  out = tmp_path / "bench.json"
  rc = bench.main(["--model", "bench_tiny", "--batch", "2", "--repeats", "2", "--warmup", "1",
                   "--no_isolate", "--out", str(out)])
  assert rc == 0
  return json.loads(out.read_text())


def test_report_fields_macs_and_json(tiny_report):
  report = tiny_report
  assert set(report) >= {"meta", "args", "method", "results"}
  env = report["meta"]["env"]["swin_jax"]
  for key in ("jax", "jaxlib", "flax", "cpu", "usable_cpus", "jax_threads", "platform"):
    assert env[key], key
  (row,) = report["results"]
  assert (row["model"], row["batch"], row["dtype"]) == ("bench_tiny", 2, "float32")
  res = row["swin_jax"]
  assert res["img_size"] == [40, 40] and res["num_params"] > 0
  for phase in ("forward", "train"):
    r = res[phase]
    assert len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"])
    assert r["img_per_s"] == pytest.approx(2 / r["median_s"])
    assert r["compile_s"] > 0 and r["first_call_s"] > 0 and r["rss_peak_mb"] > 0
    mem = r["xla_memory"]
    assert mem["peak_estimate_bytes"] == (mem["argument_bytes"] + mem["output_bytes"] +
                                          mem["temp_bytes"] - mem["alias_bytes"]) > 0
  assert math.isfinite(res["train"]["final_loss"])
  # The donated train state: XLA aliases (almost) all of the outputs to the inputs.
  assert res["train"]["xla_memory"]["alias_bytes"] > 0.9 * res["train"]["xla_memory"][
      "output_bytes"]

  macs = res["macs"]
  analytic = bench.analytic_macs(SwinTransformer(**REPORT_TINY))
  assert macs["analytic_per_img"] == analytic["total"]
  assert macs["paper_per_img"] is None
  # Matmuls/convs read from the compiled program == the analytic count minus its LayerNorm
  # and pooling terms, exactly (padding windows included).
  assert macs["matmul_forward_per_img"] == analytic["total"] - analytic["norm_terms"]
  # XLA's cost analysis also counts every elementwise op (GELU's erf polynomial, softmax,
  # norms): at this width that is a large share, so only bounds here (the 5% check is below).
  assert macs["matmul_forward_per_img"] < macs["xla_forward_per_img"] < 1.6 * analytic["total"]
  assert macs["xla_train_per_img"] > 2 * macs["matmul_forward_per_img"]
  table = bench.format_table(report)
  assert "bench_tiny" in table and "fwd img/s" in table and "official-formula" in table
  # The recipes' default options.
  assert "| bench_tiny | 2 | float32 | scan, remat=dots_no_batch |" in table


@pytest.mark.usefixtures("fast_compiles")
def test_model_options_reach_the_model_and_the_table(monkeypatch):
  monkeypatch.setitem(registry.MODEL_CONFIGS, "bench_tiny", TINY)
  args = bench.parse_args(["--model", "bench_tiny", "--batch", "2", "--repeats", "1",
                           "--warmup", "0", "--no_isolate", "--scan_blocks", "off",
                           "--remat", "dots", "--skip_train"])
  overrides = bench.model_overrides(args)
  assert (overrides["scan_blocks"], overrides["remat"]) == (False, "dots")
  assert "--remat" in bench._worker_args("swin_jax", "bench_tiny", 2, args)
  report = bench.run(args, log=lambda *a, **k: None)
  assert report["results"][0]["swin_jax"]["forward"]["img_per_s"] > 0
  assert "| bench_tiny | 2 | float32 | remat=dots |" in bench.format_table(report)


def test_xla_cost_analysis_matches_analytic_count():
  """XLA's flops/2 within 5% of the official-convention count once channels are Swin-like."""
  model = SwinTransformer(img_size=32, patch_size=4, embed_dim=192, depths=(2, 2),
                          num_heads=(6, 12), window_size=4, num_classes=10)
  macs = bench.forward_macs(model, batch=2)
  assert macs["matmul_forward_per_img"] == macs["analytic_matmul_per_img"]
  assert macs["xla_forward_per_img"] == pytest.approx(macs["analytic_per_img"], rel=0.05)


def test_timm_side_tiny():
  pytest.importorskip("timm")
  res = bench.measure_timm("swin_tiny_patch4_window7_224", 2, repeats=2, warmup=1,
                           img_size=32, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                           window_size=4, num_classes=10)
  for phase in ("forward", "train"):
    assert len(res[phase]["times_s"]) == 2 and res[phase]["img_per_s"] > 0
    assert res[phase]["rss_peak_mb"] > 0
  assert math.isfinite(res["train"]["final_loss"])


# A two-stage Swin-Unet, built at 64 px and benched at 32 px through --img_size.
UNET_TINY = dict(img_size=64, patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                 window_size=4, num_classes=3, drop_path_rate=0.1)


@pytest.mark.usefixtures("fast_compiles")
def test_swin_unet_row_measures_swin_jax_and_the_torch_reference(tmp_path, monkeypatch):
  """``--vs torch`` on a Swin-Unet: both rows, the same network, the official train loss."""
  pytest.importorskip("timm")
  monkeypatch.setitem(registry.MODEL_CONFIGS, "bench_unet_tiny", UNET_TINY)
  monkeypatch.setitem(registry.SWIN_UNET_CONFIGS, "bench_unet_tiny", UNET_TINY)
  out = tmp_path / "bench.json"
  rc = bench.main(["--model", "bench_unet_tiny", "--batch", "2", "--img_size", "32",
                   "--repeats", "2", "--warmup", "0", "--vs", "torch", "--no_isolate",
                   "--out", str(out)])
  assert rc == 0
  report = json.loads(out.read_text())
  (row,) = report["results"]
  jax_res, torch_res = row["swin_jax"], row["timm"]
  assert "torch_swin_unet" in torch_res["reference"]
  # The same network on both sides: same input size and parameter count.
  assert jax_res["img_size"] == torch_res["img_size"] == [32, 32]
  assert jax_res["num_params"] == torch_res["num_params"] > 0
  for res in (jax_res, torch_res):
    for phase in ("forward", "train"):
      assert len(res[phase]["times_s"]) == 2 and res[phase]["img_per_s"] > 0
    # 0.4 CE + 0.6 Dice on random masks of 3 classes: CE ~ ln 3 at init, Dice near 2/3.
    assert 0.2 < res["train"]["final_loss"] < 3.0
  assert row["ratio"]["forward"] == pytest.approx(
      jax_res["forward"]["img_per_s"] / torch_res["forward"]["img_per_s"])
  macs = jax_res["macs"]
  assert macs["analytic_per_img"] is None and macs["matmul_forward_per_img"] > 0
  assert macs["xla_train_per_img"] > 2 * macs["matmul_forward_per_img"]
  table = bench.format_table(report)
  # The recipes' options: scanned encoder and decoder stages (their MACs from the twin).
  assert "| bench_unet_tiny | 2 | float32 | scan, remat=dots_no_batch |" in table
  assert "| bench_unet_tiny | 32x32 |" in table


SIMMIM_TINY = dict(registry.MODEL_CONFIGS["simmim_swin_tiny_window6_192"], img_size=64,
                   embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=4,
                   encoder_stride=8)


@pytest.mark.usefixtures("fast_compiles")
def test_simmim_row_measures_the_pretraining_step(tmp_path, monkeypatch):
  """A SimMIM model: forward on images and official masks, the simmim task's train step,
  and MACs from the unscanned twin (scanned encoder by default)."""
  monkeypatch.setitem(registry.MODEL_CONFIGS, "bench_simmim_tiny", SIMMIM_TINY)
  monkeypatch.setitem(registry.SIMMIM_CONFIGS, "bench_simmim_tiny", SIMMIM_TINY)
  out = tmp_path / "bench.json"
  rc = bench.main(["--model", "bench_simmim_tiny", "--batch", "2", "--repeats", "2",
                   "--warmup", "0", "--no_isolate", "--out", str(out)])
  assert rc == 0
  (row,) = json.loads(out.read_text())["results"]
  res = row["swin_jax"]
  model = create_model("bench_simmim_tiny")
  assert bench.is_simmim(model)
  assert res["img_size"] == [64, 64]
  for phase in ("forward", "train"):
    assert len(res[phase]["times_s"]) == 2 and res[phase]["img_per_s"] > 0
  # L1 of a random reconstruction against N(0, 1) images: about E|x - y|, ~1.1 at init.
  assert 0.3 < res["train"]["final_loss"] < 3.0
  masks = bench.model_inputs(model, 3, (64, 64))[1]
  # 32 px cells on 64 px: 2 x 2 cells, ceil(4 * 0.6) = 3 masked, at 16 x 16 patches.
  assert masks.shape == (3, 16, 16) and set(masks.sum(axis=(1, 2)).tolist()) == {3 * 64}
  macs = res["macs"]
  assert macs["analytic_per_img"] is None and macs["matmul_forward_per_img"] > 0
  assert macs["xla_train_per_img"] > 2 * macs["matmul_forward_per_img"]


# The Synapse network at width 8 on 16 x 32 x 32 crops (8^3, 4^3, 2^3, 1 tokens by stage),
# deep supervision on: three outputs in training. Drop path off: it makes XLA's compile of
# the train step ~40% longer (the Swin-Unet row covers a drop-path train step).
NNFORMER_TINY = dict(registry.NNFORMER_CONFIGS["nnformer_synapse"], crop_size=(16, 32, 32),
                     embed_dim=8, num_heads=(1, 1, 2, 2), num_classes=4, drop_path_rate=0.0)


@pytest.mark.usefixtures("fast_compiles")
def test_nnformer_row_measures_swin_jax_and_the_official_network(tmp_path, monkeypatch):
  """``--vs torch`` on an nnFormer: volumes of its crop, both rows, the same network, the
  nnU-Net loss (Dice + CE over the deep-supervision outputs) on both sides."""
  pytest.importorskip("timm")
  monkeypatch.setitem(registry.MODEL_CONFIGS, "bench_nnformer_tiny", NNFORMER_TINY)
  monkeypatch.setitem(registry.NNFORMER_CONFIGS, "bench_nnformer_tiny", NNFORMER_TINY)
  out = tmp_path / "bench.json"
  rc = bench.main(["--model", "bench_nnformer_tiny", "--batch", "2", "--repeats", "2",
                   "--warmup", "0", "--vs", "torch", "--no_isolate", "--out", str(out)])
  assert rc == 0
  report = json.loads(out.read_text())
  (row,) = report["results"]
  jax_res, torch_res = row["swin_jax"], row["timm"]
  assert "torch_nnformer" in torch_res["reference"]
  assert jax_res["img_size"] == torch_res["img_size"] == [16, 32, 32]
  assert jax_res["num_params"] == torch_res["num_params"] > 0
  for res in (jax_res, torch_res):
    for phase in ("forward", "train"):
      assert len(res[phase]["times_s"]) == 2 and res[phase]["img_per_s"] > 0
    # CE of 4 classes ~ ln 4 at init, minus a mean foreground Dice in [0, 1].
    assert math.log(4) - 1.2 < res["train"]["final_loss"] < math.log(4) + 0.5
  assert row["ratio"]["train"] == pytest.approx(
      jax_res["train"]["img_per_s"] / torch_res["train"]["img_per_s"])
  macs = jax_res["macs"]
  assert macs["analytic_per_img"] is None and macs["paper_per_img"] is None
  assert 0 < macs["matmul_forward_per_img"] < macs["xla_forward_per_img"]
  assert macs["xla_train_per_img"] > 2 * macs["matmul_forward_per_img"]
  table = bench.format_table(report)
  # No scan or remat in an nnFormer: the options column says so.
  assert "| bench_nnformer_tiny | 2 | float32 | - |" in table
  assert "| bench_nnformer_tiny | 16x32x32 |" in table
  # Its crop is its input: --img_size is refused before anything runs.
  with pytest.raises(ValueError, match="--img_size does not apply"):
    bench.run(bench.parse_args(["--model", "bench_nnformer_tiny", "--img_size", "32"]),
              log=lambda *a, **k: None)


def test_torch_nnunet_loss_matches_swin_jax():
  """``torch_nnformer.official_loss`` == the volume_segmentation task's loss (same targets,
  same weights), with and without deep supervision."""
  torch = pytest.importorskip("torch")
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from swin_jax.oracles import torch_nnformer  # pylint: disable=import-outside-toplevel
  from swin_jax.tasks import nnunet_loss  # pylint: disable=import-outside-toplevel
  from swin_jax.tasks.volume_segmentation import downsampled_labels  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (2, 8, 16, 16))
  outs = [2 * rng.normal(size=(2, 8 // 2**i, 16 // 2**i, 16 // 2**i, 5)).astype(np.float32)
          for i in range(3)]
  for n in (3, 1):
    expected, _ = nnunet_loss.deep_supervision_loss(
        [jnp.asarray(o) for o in outs[:n]], downsampled_labels(jnp.asarray(labels), n),
        nnunet_loss.deep_supervision_weights(n))
    got = torch_nnformer.official_loss(
        [torch.from_numpy(o).permute(0, 4, 1, 2, 3) for o in outs[:n]], torch.from_numpy(labels))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


# UperNet on a 4-stage Swin of width 8 at 64 px (stage 3 is 2x2, under the PPM's 6 bins) with
# heads of 16 / 8 channels; Mask R-CNN likewise on a non-square 64x96 canvas with narrow heads
# and few proposals. One block per stage and no scan keep XLA's compiles short (the scanned
# twin that counts MACs is checked without compiling, in the test after these).
UPERNET_TINY = dict(registry.UPERNET_CONFIGS["upernet_swin_tiny_patch4_window7_512"], img_size=64,
                    embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4,
                    channels=16, aux_channels=8, num_classes=5, drop_path_rate=0.1)
MASK_RCNN_TINY = dict(registry.MASK_RCNN_CONFIGS["mask_rcnn_swin_tiny_patch4_window7_fpn"],
                      img_size=(64, 96), embed_dim=8, depths=(1, 1, 1, 1),
                      num_heads=(1, 1, 1, 1), window_size=4, num_classes=10, neck_channels=16,
                      rpn_channels=16, fc_channels=32, mask_channels=16, rpn_max_per_img=64,
                      rpn_train_nms_pre=128, rpn_test_nms_pre=128, max_detections=20,
                      pre_nms_top_k=256, drop_path_rate=0.1)
FAST = ["--batch", "2", "--repeats", "1", "--warmup", "0", "--vs", "torch", "--scan_blocks",
        "off", "--remat", "none", "--no_isolate"]


def _register(monkeypatch, family: dict, name: str, config: dict) -> None:
  monkeypatch.setitem(registry.MODEL_CONFIGS, name, config)
  monkeypatch.setitem(family, name, config)


def _both_sides(tmp_path, name: str) -> tuple[dict, dict, dict]:
  """``(report, swin_jax result, PyTorch result)`` of ``FAST`` on ``name``; both phases
  timed on both sides, the same network (input size, parameter count)."""
  out = tmp_path / "bench.json"
  assert bench.main(["--model", name, *FAST, "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  (row,) = report["results"]
  jax_res, torch_res = row["swin_jax"], row["timm"]
  assert jax_res["img_size"] == torch_res["img_size"]
  assert jax_res["num_params"] == torch_res["num_params"] > 0
  for res in (jax_res, torch_res):
    for phase in ("forward", "train"):
      assert len(res[phase]["times_s"]) == 1 and res[phase]["img_per_s"] > 0
      assert res[phase]["rss_peak_mb"] > 0
    assert math.isfinite(res["train"]["final_loss"])
  for phase in ("forward", "train"):
    assert row["ratio"][phase] == pytest.approx(
        jax_res[phase]["img_per_s"] / torch_res[phase]["img_per_s"])
  assert jax_res["macs"]["matmul_forward_per_img"] > 0
  assert jax_res["macs"]["xla_train_per_img"] > 2 * jax_res["macs"]["matmul_forward_per_img"]
  return report, jax_res, torch_res


@pytest.mark.usefixtures("fast_compiles")
def test_upernet_row_measures_swin_jax_and_mmseg_upernet(tmp_path, monkeypatch):
  """``--vs torch`` on an UperNet: both rows, mmseg's loss on both sides (swin_jax: the
  segmentation task's ``ce_aux`` with the BatchNorm state)."""
  pytest.importorskip("mmseg")
  _register(monkeypatch, registry.UPERNET_CONFIGS, "bench_upernet_tiny", UPERNET_TINY)
  report, jax_res, torch_res = _both_sides(tmp_path, "bench_upernet_tiny")
  assert "torch_upernet" in torch_res["reference"] and jax_res["img_size"] == [64, 64]
  terms = jax_res["train"]["loss_terms"]
  assert set(terms) == {"ce", "aux_ce"}
  assert jax_res["train"]["final_loss"] == pytest.approx(terms["ce"] + 0.4 * terms["aux_ce"],
                                                         rel=1e-5)
  # Near-zero logits at init (conv_seg ~ N(0, 0.01)): each CE about ln 5.
  for res in (jax_res, torch_res):
    assert res["train"]["final_loss"] == pytest.approx(1.4 * math.log(5), abs=0.3)
  table = bench.format_table(report)
  assert "| bench_upernet_tiny | 2 | float32 | - |" in table
  assert "| bench_upernet_tiny | 64x64 |" in table


@pytest.mark.usefixtures("fast_compiles")
def test_mask_rcnn_row_measures_swin_jax_and_mmdet_mask_rcnn(tmp_path, monkeypatch):
  """``--vs torch`` on a Mask R-CNN: the test path and the two-stage loss on both sides
  (swin_jax: the detection task's), on the model's own non-square canvas."""
  pytest.importorskip("mmdet")
  _register(monkeypatch, registry.MASK_RCNN_CONFIGS, "bench_mask_rcnn_tiny", MASK_RCNN_TINY)
  report, jax_res, torch_res = _both_sides(tmp_path, "bench_mask_rcnn_tiny")
  assert "torch_mask_rcnn" in torch_res["reference"] and jax_res["img_size"] == [64, 96]
  terms = jax_res["train"]["loss_terms"]
  names = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")
  assert set(terms) == {*names, "rcnn_acc"}
  assert jax_res["train"]["final_loss"] == pytest.approx(sum(terms[n] for n in names), rel=1e-5)
  # At init: BCE ~ ln 2 (RPN, masks), CE ~ ln 11 (R-CNN), small L1s; a few steps move it.
  for res in (jax_res, torch_res):
    assert 2.0 < res["train"]["final_loss"] < 7.0
  assert "| bench_mask_rcnn_tiny | 64x96 |" in bench.format_table(report)


def test_upernet_and_mask_rcnn_twins_optimizers_and_tasks(monkeypatch):
  """Without compiling: the scanned models' MAC twins take ``unscanned_params``; the train
  config runs the project's task and loss; both sides exempt the same tensors from AdamW's
  weight decay, at the same lr and decay."""
  pytest.importorskip("mmseg")
  pytest.importorskip("mmdet")
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from swin_jax import tasks  # pylint: disable=import-outside-toplevel
  from swin_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  for name, family, config, loss in (
      ("bench_upernet_tiny", registry.UPERNET_CONFIGS, UPERNET_TINY, "ce_aux"),
      ("bench_mask_rcnn_tiny", registry.MASK_RCNN_CONFIGS, MASK_RCNN_TINY, None)):
    _register(monkeypatch, family, name, config)
    model = create_model(name, depths=(2, 2, 2, 2), scan_blocks=True)
    size = bench.input_size(model)
    images = jnp.zeros((1, *size, 3))
    key = jax.random.PRNGKey(0)
    scanned = jax.eval_shape(lambda m=model: bench.init_variables(m, key, images))["params"]
    twin = bench.without_scan(model)
    expected = jax.eval_shape(lambda m=twin: bench.init_variables(m, key, images))["params"]
    got = jax.eval_shape(lambda p, m=model: bench.unscanned_params(m, p), scanned)
    assert jax.tree.map(lambda x: x.shape, got) == jax.tree.map(lambda x: x.shape, expected)

    settings = bench.recipe_optimizer(model)
    run = bench._train_config(bench.train_task(model), name, 2, size, model.num_classes,
                              settings)
    task = tasks.get_task(run)
    assert task.name == bench.train_task(model)
    if loss:
      assert task.loss_kind(model) == loss
    else:
      assert tuple(run.task.canvas) == size == (64, 96)
      assert run.task.max_instances == bench.DETECTION_INSTANCES
    reference = bench._torch_job(model, bench.torch_images(model, 1), 0).network
    torch_opt = bench._torch_optimizer(settings, reference)
    decay, no_decay = torch_opt.param_groups
    mask = optimizer_lib.weight_decay_mask(expected, run.optimizer)
    assert len(no_decay["params"]) == sum(not m for m in jax.tree.leaves(mask)) > 0
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, run.optimizer.weight_decay)
    assert decay["lr"] == run.optimizer.base_lr and run.optimizer.reference_batch_size == 2
    assert run.optimizer.clip_grad_norm == 0.0


def test_synthetic_instances_are_boxes_with_their_rectangles():
  gt = bench.synthetic_instances(2, (64, 96), num_classes=10, num=5, seed=3)
  assert gt["boxes"].shape == (2, 5, 4) and gt["masks"].shape == (2, 5, 64, 96)
  boxes = gt["boxes"]
  assert (boxes[..., :2] >= 0).all() and (boxes[..., 2] <= 96).all() and (boxes[..., 3] <= 64).all()
  assert (boxes[..., 2:] > boxes[..., :2]).all() and gt["valid"].all()
  areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  assert (gt["masks"].sum(axis=(2, 3)) == areas).all()
  assert ((gt["labels"] >= 0) & (gt["labels"] < 10)).all()
  again = bench.synthetic_instances(2, (64, 96), num_classes=10, num=5, seed=3)
  assert all((again[k] == gt[k]).all() for k in gt)   # the same on both sides of a row


def test_cli_lists_and_no_tensorflow():
  args = bench.parse_args(["--model", "swin_t,swin_s", "--model", "swin_b", "--batch", "8,32"])
  assert args.models == ["swin_t", "swin_s", "swin_b"] and args.batches == [8, 32]
  code = ("import sys, swin_jax.bench, swin_jax.train.step, swin_jax.oracles.torch_swin_unet, "
          "swin_jax.oracles.torch_upernet, swin_jax.oracles.torch_mask_rcnn; "
          "bad = [m for m in ('tensorflow', 'torch', 'timm') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)
