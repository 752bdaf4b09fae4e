"""How fast a converted openMaMMUT indexes on this machine: random weights with the real shapes of the fork's
mammut_ViT-L-14 and mammut_ViT-B-32 configs, written as the hub holds them, then `mammut convert open-clip` and
`mammut index build` (captions on) over generated photos, timed as a user runs them.

    .venv/bin/python benchmarks/openmammut_speed.py --layouts L-14 B-32 --images 16 [--threads 1]

Random weights give random captions; the cost of a caption depends on its length, so the caption rows here are
for captions of the full CAPTION_MAX_LEN tokens more often than a trained model writes them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from mammut_search.cli import main as mammut
from mammut_search.testing import write_open_clip_mammut

# the fork's model configs (LAION-AI/open_clip_mammut, src/open_clip/model_configs/mammut_ViT-*.json)
VISION = {"image_size": 224, "output_tokens": True, "pool_type": "avg_all", "final_ln_after_pool": True}
TEXT = {"context_length": 77, "vocab_size": 49408, "layers": 12, "output_tokens": True, "cross_attn_ratio": 2,
        "does_full_decoding": True}
LAYOUTS = {
    "L-14": {"embed_dim": 768, "vision_cfg": {**VISION, "layers": 24, "width": 1024, "patch_size": 14},
             "text_cfg": {**TEXT, "width": 768, "heads": 12}, "custom_text": True},
    "B-32": {"embed_dim": 512, "vision_cfg": {**VISION, "layers": 12, "width": 768, "patch_size": 32},
             "text_cfg": {**TEXT, "width": 512, "heads": 8, "has_mlp": False}, "custom_text": True},
}


def write_photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` 640x480 JPEGs of smooth random colour fields (decoding costs what a photo's does)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    code = mammut(args)
    if code:
        raise SystemExit(f"mammut {' '.join(args)} exited {code}")
    return time.perf_counter() - start


def run_layout(name: str, images: Path, count: int, work: Path) -> dict:
    weights, config = write_open_clip_mammut(work / f"{name}-hub", LAYOUTS[name])
    with safe_open(str(weights), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    checkpoint = work / f"{name}-checkpoint"
    convert_s = timed(["convert", "open-clip", str(weights), "--config", str(config), "--out", str(checkpoint)])
    row = {"layout": name, "params_M": params / 1e6, "convert_s": convert_s}
    for captions in (True, False):
        out = work / f"{name}-{captions}.index"
        seconds = timed(["index", "build", str(images), "--out", str(out), "--checkpoint", str(checkpoint),
                         "--device", "cpu", *([] if captions else ["--no-captions"])])
        row["images_per_s_captions" if captions else "images_per_s_no_captions"] = count / seconds
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as work:
        work = Path(work)
        write_photos(work / "photos", args.images)
        rows = [run_layout(name, work / "photos", args.images, work) for name in args.layouts]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load:.1f} at start; {args.images} images of 640x480")
    print("| layout | parameters | convert | index build, captions | index build, no captions |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['params_M']:.0f} M | {r['convert_s']:.0f} s | "
              f"{r['images_per_s_captions']:.2f} images/s | {r['images_per_s_no_captions']:.2f} images/s |")


if __name__ == "__main__":
    main()
