"""Model speed on this machine: caption decoding with vs without the key/value cache, and encode_image.

    python benchmarks/bench_model.py [--device cpu] [--repeats 3]

Measures the bundled checkpoint (or --checkpoint DIR); --random measures a larger random-weight architecture
(EfficientNet-Lite0 at 160 px, decoder width 384, 3 layers, 8192 tokens). Decoding is forced to the full 24 tokens.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from mammut_search.api import MammutModel, load_model
from mammut_search.config import MammutConfig
from mammut_search.decoding import generate
from mammut_search.model import MaMMUT
from mammut_search.testing import TINY_TEXTS
from mammut_search.tokenizer import train_bpe


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled one)")
    parser.add_argument("--random", action="store_true", help="a larger architecture with random weights")
    args = parser.parse_args()

    if args.random:
        tokenizer = train_bpe(TINY_TEXTS * 4, vocab_size=300, min_frequency=1)
        config = MammutConfig(vocab_size=8192, dim=384, depth=3, heads=6, num_img_queries=64, dim_latents=256)
        torch.manual_seed(0)
        model = MammutModel(MaMMUT(config), tokenizer, device=args.device)
    else:
        model = load_model(args.checkpoint, device=args.device)
    size = model.config.image_encoder.image_size
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"device {args.device}; decoder width {model.config.dim}, depth {model.config.depth}, "
          f"vocabulary {model.config.vocab_size}, images {size} px")

    for batch in (1, 16):
        pixels = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            _, image_tokens = model.net.pool_image(model.image_features(pixels))
        kw = dict(max_len=args.tokens + 1, min_len=args.tokens + 1)
        cached = best_of(lambda: generate(model.net, image_tokens, use_cache=True, **kw), args.repeats)
        uncached = best_of(lambda: generate(model.net, image_tokens, use_cache=False, **kw), args.repeats)
        print(f"decode {args.tokens} tokens, batch {batch:2d}: cached {cached * 1000:7.1f} ms, "
              f"uncached {uncached * 1000:7.1f} ms, speed-up {uncached / cached:4.1f}x")

    for batch in (1, 32):
        pixels = torch.randn(batch, 3, size, size)
        seconds = best_of(lambda: model.encode_image(pixels), args.repeats)
        print(f"encode_image batch {batch:2d}: {batch / seconds:6.1f} images/s")


if __name__ == "__main__":
    main()
