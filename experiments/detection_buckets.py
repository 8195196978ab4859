"""Padding waste of the COCO Mask R-CNN train canvases: one square canvas vs canvas buckets.

  python experiments/detection_buckets.py            # writes detection_buckets.{json,md}

The official train pipeline (mmdet 2.11 Swin recipe: flip 0.5, then with odds 1/2 either a
keep-ratio resize to short side 480..800 step 32 / long side <= 1333, or resize to short
400/500/600 -> RandomCrop 384..600 -> the same multi-scale resize) is applied, sizes only, by
the library's own planner (``detection_buckets.geometry_stream``: the draws the train
iterator makes) to a SYNTHETIC COCO-like set of source sizes (COCO's own sizes are not
available here): ``SOURCE_MIX`` below. For each set of canvases, every output goes to the
smallest canvas that holds it (``detection_buckets.bucket_of``, what training does), and:

- canvas padding: the share of canvas pixels outside the image (what FPN / RPN see);
- Swin padding: the share of the dense-mode Swin-T attention tokens that are padding, per
  stage (canvas / 4, 8, 16, 32, each padded to a multiple of the window 7: the grid the
  blocks attend over; a token counts as image if it overlaps the image), and over all
  stages weighted by Swin-T's per-token block MACs (depth x (12 C^2 + 2 x 49 C));
- backbone cost: the weighted padded tokens per image relative to the single 1344 canvas;
- compiles: the canvases used (the train step compiles once per canvas).

The bucket sets: the single canvas (the recipe before buckets), orientation only (mmdet's
GroupSampler key, on the augmented size), the same rounded up to sides whose /32 is a
multiple of 7 (no window padding at stages 3-4), and greedy sets of 4..8 canvases: starting
from the orientation pair, repeatedly adding the landscape canvas (with its portrait
transpose) that most lowers the weighted Swin cost per added compile, over every
(h, w) of multiples of 32 within (800, 1344). As a reference, mmdet's own dynamic padding
(per-GPU batches of 2 of one source-orientation group, padded to their max, to 32) is what
the official PyTorch runs pay; it is not a static shape.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swin_jax.data import detection_buckets as db  # noqa: E402
from swin_jax.data import detection_transforms as dt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# Synthetic COCO-like source sizes (H, W) and their shares: mostly 640-wide landscape 4:3,
# a quarter portrait 3:4, a fifth 3:2 landscape. Stated, not measured.
SOURCE_MIX = (((480, 640), 0.55), ((640, 480), 0.25), ((427, 640), 0.20))
SWIN_T = dict(depths=(2, 2, 6, 2), dims=(96, 192, 384, 768), window=7)


def recipe_transform() -> dt.DetectionTrainTransform:
  """The COCO recipe's train geometry (``configs/detection/common.py``), sizes only."""
  return dt.DetectionTrainTransform(canvas=(1344, 1344), reader=None, scales=dt.MSTRAIN_SCALES,
                                    flip_prob=0.5, crop_prob=0.5, crop_scales=dt.CROP_SCALES,
                                    crop_size=dt.CROP_SIZE)


def source_sizes(n: int, seed: int) -> np.ndarray:
  """``(n, 2)`` source sizes drawn from ``SOURCE_MIX``."""
  sizes, shares = zip(*SOURCE_MIX)
  picks = np.random.default_rng(seed).choice(len(sizes), size=n, p=np.asarray(shares))
  return np.asarray(sizes, np.int32)[picks]


def output_sizes(sources: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
  """Each source's augmented size (one epoch of the planner) and the planner's cost per
  image in microseconds."""
  stream = db.geometry_stream(sources, recipe_transform(), seed)
  start = time.perf_counter()
  out = np.asarray([stream[j][1].out_hw for j in range(len(sources))], np.int64)
  return out, (time.perf_counter() - start) / len(sources) * 1e6


def stage_weights() -> np.ndarray:
  """Swin-T block MACs per token of each stage: depth x (12 C^2 + 2 window^2 C)."""
  w2 = SWIN_T["window"] ** 2
  return np.asarray([d * (12 * c * c + 2 * w2 * c) for d, c in zip(SWIN_T["depths"],
                                                                   SWIN_T["dims"])], float)


def image_tokens(hw: np.ndarray) -> np.ndarray:
  """``(N, 4)`` tokens overlapping the image at each stage (patch 4, then halved)."""
  h, w = -(-hw[:, 0] // 4), -(-hw[:, 1] // 4)
  out = []
  for _ in range(4):
    out.append(h * w)
    h, w = -(-h // 2), -(-w // 2)
  return np.stack(out, 1).astype(float)


def canvas_tokens(canvas) -> np.ndarray:
  """``(4,)`` window-padded attention tokens of each stage on ``canvas``."""
  return np.asarray([gh * gw for gh, gw in db.swin_token_grids(tuple(canvas))], float)


def assign(out: np.ndarray, buckets) -> np.ndarray:
  """Each output's bucket index (``bucket_of``, vectorised: smallest area, first on ties)."""
  buckets = np.asarray(buckets)
  fits = (out[:, None, 0] <= buckets[None, :, 0]) & (out[:, None, 1] <= buckets[None, :, 1])
  area = np.where(fits, (buckets[:, 0] * buckets[:, 1])[None], np.iinfo(np.int64).max)
  return np.argmin(area, axis=1)   # argmin takes the first of equal areas


def waste(out: np.ndarray, buckets) -> dict:
  """The metrics of the module docstring for one bucket set."""
  k = assign(out, buckets)
  used = sorted(set(k.tolist()))
  return {
      "buckets": [list(map(int, b)) for b in buckets],
      "compiles": len(used),
      "share": [float(np.mean(k == i)) for i in range(len(buckets))],
      **padding(out, np.asarray(buckets)[k]),
  }


def padding(images: np.ndarray, canvases: np.ndarray) -> dict:
  """Canvas and Swin window padding of ``images (N, 2)`` (h, w) each on its canvas ``(N, 2)``."""
  img_tok = image_tokens(images)
  pad_tok = np.stack([canvas_tokens(c) for c in canvases])
  weights = stage_weights()
  return {
      "canvas_padding": float(1 - images.prod(1).sum() / canvases.prod(1).sum()),
      "swin_padding_per_stage": [float(1 - img_tok[:, s].sum() / pad_tok[:, s].sum())
                                 for s in range(4)],
      "swin_padding": float(1 - (img_tok @ weights).sum() / (pad_tok @ weights).sum()),
      "swin_cost": float((pad_tok @ weights).mean()),
      "canvas_area": float(canvases.prod(1).mean()),
  }


def mmdet_dynamic(out: np.ndarray, sources: np.ndarray, seed: int, per_gpu: int = 2) -> dict:
  """mmdet's padding: GroupSampler batches of ``per_gpu`` (one source-orientation flag),
  each padded to its largest height and width, rounded up to 32 (``Pad`` + collate)."""
  rng = np.random.default_rng(seed)
  flag = sources[:, 1] >= sources[:, 0]   # mmdet's group flag: aspect ratio w / h >= 1
  images, canvases = [], []
  for group in (np.flatnonzero(flag), np.flatnonzero(~flag)):
    group = rng.permutation(group)
    for start in range(0, len(group) - per_gpu + 1, per_gpu):
      members = out[group[start:start + per_gpu]]
      images.append(members)
      canvases += [-(-members.max(0) // 32) * 32] * per_gpu
  return padding(np.concatenate(images), np.asarray(canvases))


def greedy_sets(out: np.ndarray, max_compiles: int) -> list[list[tuple[int, int]]]:
  """Bucket sets of 2, 4, ... canvases: the orientation pair, then each time the landscape
  canvas (with its transpose; a square alone) that most lowers the mean weighted Swin cost
  per added compile (outputs assigned by smallest area, as training does)."""
  short, long = db.scale_envelope(dt.MSTRAIN_SCALES)
  top = (-(-short // 32) * 32, -(-long // 32) * 32)
  chosen = [top, top[::-1]]
  candidates = [(h, w) for h in range(32, top[0] + 1, 32) for w in range(h, top[1] + 1, 32)
                if (h, w) != top]
  cand = np.asarray(candidates)
  weights = stage_weights()
  cost = np.asarray([canvas_tokens(c) @ weights for c in candidates])
  area = cand.prod(1)
  # An output fits a candidate or its transpose: the transposed output of a portrait image
  # fits the landscape candidate, so work on outputs sorted (short, long).
  sorted_out = np.sort(out, axis=1)
  fits = (sorted_out[:, None, 0] <= cand[None, :, 0]) & (sorted_out[:, None, 1] <= cand[None, :, 1])
  sets = [list(chosen)]
  while len(chosen) < max_compiles:
    k = assign(out, chosen)
    cur_area = np.asarray(chosen)[k].prod(1)
    cur_cost = np.asarray([canvas_tokens(c) @ weights for c in chosen])[k]
    better = fits & (area[None] < cur_area[:, None])
    gain = np.where(better, cur_cost[:, None] - cost[None], 0.0).sum(0)
    added = np.where(cand[:, 0] == cand[:, 1], 1, 2)
    added = np.where(len(chosen) + added > max_compiles, np.inf, added)
    best = int(np.argmax(gain / added))
    if not np.isfinite(added[best]) or gain[best] <= 0:
      break
    h, w = candidates[best]
    chosen += [(h, w)] if h == w else [(h, w), (w, h)]
    sets.append(list(chosen))
  return sets


def run(n: int, seed: int, max_compiles: int) -> dict:
  sources = source_sizes(n, seed)
  out, plan_us = output_sizes(sources, seed)
  short, long = db.scale_envelope(dt.MSTRAIN_SCALES)
  rows = {"single canvas (recipe before buckets)": [(1344, 1344)],
          "orientation": [(800, 1344), (1344, 800)],
          "orientation, sides /32 multiples of 7": [(896, 1344), (1344, 896)]}
  for chosen in greedy_sets(out, max_compiles)[1:]:
    rows[f"greedy {len(chosen)}"] = chosen
  results = {name: waste(out, buckets) for name, buckets in rows.items()}
  for name, buckets in rows.items():   # every set is one training would accept
    db.parse_buckets(buckets, dt.MSTRAIN_SCALES)
  base = results["single canvas (recipe before buckets)"]
  for r in results.values():
    r["relative_swin_cost"] = r["swin_cost"] / base["swin_cost"]
    r["relative_canvas_area"] = r["canvas_area"] / base["canvas_area"]
  ref = mmdet_dynamic(out, sources, seed)
  ref["relative_swin_cost"] = ref["swin_cost"] / base["swin_cost"]
  ref["relative_canvas_area"] = ref["canvas_area"] / base["canvas_area"]
  return {"images": n, "seed": seed, "source_mix": [[list(s), p] for s, p in SOURCE_MIX],
          "envelope": [short, long], "planner_us_per_image": plan_us,
          "output_landscape_share": float(np.mean(out[:, 1] > out[:, 0])),
          "output_square_share": float(np.mean(out[:, 1] == out[:, 0])),
          "results": results, "mmdet_dynamic_reference": ref}


def table(report: dict) -> str:
  """The markdown table of ``run``'s report."""
  lines = ["| buckets (h x w) | compiles | canvas padding | Swin padding (stages 1 / 2 / 3 / 4) "
           "| Swin padding, MAC-weighted | backbone cost | canvas area |",
           "|---|---:|---:|---|---:|---:|---:|"]

  def row(name, r, buckets):
    stages = " / ".join(f"{v:.0%}" for v in r["swin_padding_per_stage"])
    return (f"| {name}: {buckets} | {r.get('compiles', '-')} | {r['canvas_padding']:.1%} | "
            f"{stages} | {r['swin_padding']:.1%} | {r['relative_swin_cost']:.2f} | "
            f"{r['relative_canvas_area']:.2f} |")

  for name, r in report["results"].items():
    buckets = ", ".join(f"{h}x{w}" for h, w in r["buckets"])
    lines.append(row(name, r, buckets))
  lines.append(row("mmdet dynamic padding (reference, not static)",
                   report["mmdet_dynamic_reference"], "per-GPU pairs"))
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=20000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max_compiles", type=int, default=8)
  parser.add_argument("--out", default=os.path.join(HERE, "detection_buckets.json"))
  args = parser.parse_args(argv)
  report = run(args.images, args.seed, args.max_compiles)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(table(report))
  for name, r in report["results"].items():
    print(name, "shares:", ", ".join(f"{h}x{w} {p:.1%}" for (h, w), p in zip(r["buckets"],
                                                                              r["share"])))
  print(f"planner: {report['planner_us_per_image']:.0f} us per image; outputs landscape "
        f"{report['output_landscape_share']:.1%}, square {report['output_square_share']:.1%}")


if __name__ == "__main__":
  main()
