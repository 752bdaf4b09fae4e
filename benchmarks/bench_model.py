"""Model speed on this machine: caption decoding with vs without the key/value cache, and encode_image.

    python benchmarks/bench_model.py [--device cpu] [--repeats 5] [--threads N]

Measures the bundled checkpoint (or --checkpoint DIR); --random measures a larger random-weight architecture
(EfficientNet-Lite0 at 160 px, decoder width 384, 3 layers, 8192 tokens).

Decoding is timed from the pooled image tokens (the image encoder runs once, outside the timing) and forced to
exactly --tokens new tokens (<eos> is not allowed earlier). Both paths run the same `generate` loop, with the same
guards, and project only the last position to the vocabulary; they differ only in the cache: with it, each step
runs the decoder on the one new token against cached keys/values; without it, each step reruns the whole prefix.
For reference, a third figure is the uncached decoder projecting every position to the vocabulary (the usual
full forward pass of a decoder without a cache, of which only the last position is used).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator

import torch

from mammut_search.inference import MammutModel, load_model
from mammut_search.model.config import MammutConfig
from mammut_search.model.decoding import generate
from mammut_search.model.mammut import MaMMUT
from mammut_search.testing import TINY_TEXTS
from mammut_search.model.tokenizer import train_bpe


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def logits_at_every_position(net: MaMMUT) -> Iterator[None]:
    """Make the decoder project every position to the vocabulary, ignoring `last_only`."""
    decode = net.decode
    net.decode = lambda *args, last_only=False, **kwargs: decode(*args, **kwargs)
    try:
        yield
    finally:
        del net.decode


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled one)")
    parser.add_argument("--random", action="store_true", help="a larger architecture with random weights")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.random:
        tokenizer = train_bpe(TINY_TEXTS * 4, vocab_size=300, min_frequency=1)
        config = MammutConfig(vocab_size=8192, dim=384, depth=3, heads=6, num_img_queries=64, dim_latents=256,
                              ff_mult=4, image_grid_latent=False, semantic_dim=0, fusion_weight=0.0,
                              image_encoder={"grid": 0, "classifier_token": False})  # the model these were measured on
        torch.manual_seed(0)
        model = MammutModel(MaMMUT(config), tokenizer, device=args.device)
    else:
        model = load_model(args.checkpoint, device=args.device)
    net, size = model.net, model.config.image_encoder.image_size
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}; load average {load_average()}")
    print(f"model: decoder width {model.config.dim}, depth {model.config.depth}, vocabulary {model.config.vocab_size}, "
          f"{model.config.num_img_queries} image queries, images {size} px; best of {args.repeats}")

    for batch in (1, 16):
        pixels = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            _, image_tokens = net.pool_image(model.image_features(pixels))
        kw = dict(max_len=args.tokens + 1, min_len=args.tokens + 1)
        ids = generate(net, image_tokens, use_cache=True, **kw)
        assert ids.shape[1] == args.tokens + 2  # <bos>, the tokens, the closing <eos>
        assert torch.equal(ids, generate(net, image_tokens, use_cache=False, **kw)), "cached != uncached captions"
        cached = best_of(lambda: generate(net, image_tokens, use_cache=True, **kw), args.repeats)
        uncached = best_of(lambda: generate(net, image_tokens, use_cache=False, **kw), args.repeats)
        with logits_at_every_position(net):
            every = best_of(lambda: generate(net, image_tokens, use_cache=False, **kw), args.repeats)
        print(f"decode {args.tokens} tokens, batch {batch:2d}: cached {cached * 1000:7.1f} ms, "
              f"uncached {uncached * 1000:7.1f} ms, speed-up {uncached / cached:4.1f}x; "
              f"uncached with logits at every position {every * 1000:7.1f} ms ({every / cached:4.1f}x)")

    for batch in (1, 32):
        pixels = torch.randn(batch, 3, size, size)
        seconds = best_of(lambda: model.encode_image(pixels), args.repeats)
        print(f"encode_image batch {batch:2d}: {batch / seconds:6.1f} images/s")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
