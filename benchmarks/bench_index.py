"""Index build throughput: end-to-end `build_index` images/s against the model's own forward images/s.

The end-to-end figure includes scanning, hashing, decoding in worker processes, the encoder (and, with
captions, the decoder), checkpointed shards and the commit; the forward figure runs the same model on the
same images already decoded and preprocessed. Their ratio says how well decoding hides behind the model.

    python benchmarks/bench_index.py                      # default-architecture model, random weights
    python benchmarks/bench_index.py --checkpoint mammut_search/bundled/checkpoint --images 512
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from index_builder.build import BuildOptions, build_index, default_workers  # noqa: E402
from mammut_search.images import load_image  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "bench_index"
KINDS = {"icons": ((64, 64), "PNG"), "photos": ((1024, 768), "JPEG")}  # emoji-like PNGs, camera-like JPEGs


def default_architecture_model(device: str | None):
    """The shipping architecture with random weights, as in bench_model.py: EfficientNet-Lite0 at 160 px, a
    3-layer 384-wide decoder, 8192-token vocabulary (a random model writes all 24 caption tokens: worst case)."""
    from mammut_search import MammutConfig, MammutModel
    from mammut_search.model.mammut import MaMMUT
    from mammut_search.testing import TINY_TEXTS
    from mammut_search.model.tokenizer import train_bpe

    tokenizer = train_bpe(TINY_TEXTS * 4, vocab_size=300, min_frequency=1)
    config = MammutConfig(vocab_size=8192, dim=384, depth=3, heads=6, num_img_queries=64, dim_latents=256,
                          ff_mult=4, image_grid_latent=False, semantic_dim=0, fusion_weight=0.0,
                          image_encoder={"grid": 0, "classifier_token": False})  # the model these were measured on
    torch.manual_seed(0)
    return MammutModel(MaMMUT(config), tokenizer, device=device)


def make_images(kind: str, count: int) -> Path:
    """`count` distinct smooth random images (so JPEG/PNG sizes are realistic) under benchmarks/out."""
    (width, height), fmt = KINDS[kind]
    folder = OUT / f"images-{kind}-{count}"
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        image.save(folder / f"{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}", fmt, quality=90)
    return folder


def forward_rate(model, folder: Path, batch_size: int, captions: bool) -> float:
    """Images/s of the model alone on already preprocessed pixels."""
    pixels = model.preprocess([load_image(p) for p in sorted(folder.iterdir())])
    batches = list(pixels.split(batch_size))
    run_model(model, batches[0], captions)  # warm-up
    start = time.perf_counter()
    for batch in batches:
        run_model(model, batch, captions)
    return len(pixels) / (time.perf_counter() - start)


def run_model(model, pixels: torch.Tensor, captions: bool) -> None:
    features = model.image_features(pixels)
    model.latents_from_features(features)
    if captions:
        model.captions_from_features(features)


def build_rate(model, folder: Path, options: BuildOptions) -> float:
    """Images/s of a whole `build_index` run into a fresh directory."""
    out = OUT / "index"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    store = build_index([folder], out, model, options=options)
    seconds = time.perf_counter() - start
    assert store.manifest["last_run"]["encoded"] == store.manifest["count"]
    shutil.rmtree(out)
    return store.manifest["count"] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint directory (default: default architecture, random weights)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=256, help="images per set (default 256)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: the builder's)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each, best kept (default 2)")
    parser.add_argument("--captions", choices=["off", "on", "both"], default="both")
    args = parser.parse_args()

    if args.checkpoint:
        from mammut_search import load_model

        model = load_model(args.checkpoint, device=args.device)
    else:
        model = default_architecture_model(args.device)
    encoder = model.config.image_encoder
    if args.workers is None:
        args.workers = default_workers(model.device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {model.device}")
    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else "random weights"
    print(f"model: {encoder.kind} at {encoder.image_size} px, {weights}; "
          f"batch {args.batch_size}, {args.workers} decoding workers, {args.images} images per set, "
          f"best of {args.rounds}")
    print("| images | captions | forward img/s | build img/s | ratio | load avg before → after |")
    print("|---|---|---|---|---|---|")
    for kind in args.kinds:
        folder = make_images(kind, args.images)
        for captions in {"off": (False,), "on": (True,), "both": (False, True)}[args.captions]:
            load_before = os.getloadavg()[0]
            options = BuildOptions(batch_size=args.batch_size, workers=args.workers,
                                   captions=captions, shard_size=1024, progress=False)
            forward, build = 0.0, 0.0
            for _ in range(args.rounds):  # alternate and keep the best, so a busy moment hurts neither side
                forward = max(forward, forward_rate(model, folder, args.batch_size, captions))
                build = max(build, build_rate(model, folder, options))
            size = "x".join(map(str, KINDS[kind][0]))
            print(f"| {kind} ({size} {KINDS[kind][1]}) | {'on' if captions else 'off'} | {forward:.1f} | "
                  f"{build:.1f} | {build / forward:.2f} | {load_before:.1f} → {os.getloadavg()[0]:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
