"""Caption decoding efficiency: achieved GFLOP/s of a cached decoding step beside a plain matmul of the same shapes.

    python benchmarks/bench_decoding.py [--device cpu] [--threads 1] [--tokens 24] [--rounds 7]

A decoding step of the bundled checkpoint multiplies one new token per sequence by every decoder weight and by
the output embedding; its useful work is counted as 2 x batch x (sum of those weight sizes) FLOPs per step
(attention over <= 25 cached positions and 16 image tokens adds < 2 % and is left out). The plain matmul runs
exactly those products, (batch x in) @ (in x out) for each weight, back to back with nothing else: the speed of
the same arithmetic without any decoding overhead. The share is plain time / decoding time. Both are timed in
alternation, best of --rounds, so that a busy machine affects both alike.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.nn import functional as F

from mammut_search.inference import load_model
from mammut_search.model.decoding import generate


def best(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def step_weights(net) -> list[torch.Tensor]:
    """Every weight a decoding step multiplies its new token by, as (out in)."""
    weights = []
    for block, cross in zip(net.self_attn_layers, net.cross_attn_layers):
        weights += [block.fused_attn_ff_proj.weight, block.attn_out.weight, block.ff_out[1].weight]
        if hasattr(cross, "to_q"):
            weights += [cross.to_q.weight, cross.to_out.weight]
            if cross.ff is not None:
                weights += [cross.ff[0].weight, cross.ff[2].weight]
    return [w.detach() for w in weights + [net.token_emb.weight]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(device=args.device)
    net, size = model.net, model.config.image_encoder.image_size
    weights = step_weights(net)
    flops_per_row = sum(2 * w.shape[0] * w.shape[1] for w in weights)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"load average {os.getloadavg()[0]:.2f}; {flops_per_row / 1e6:.2f} MFLOP per sequence and step")
    print("| batch | decoding step | GFLOP/s | plain matmul | GFLOP/s | share |")
    print("|---|---|---|---|---|---|")
    for batch in (1, 16):
        with torch.no_grad():
            tokens = model.decoder_tokens(model.image_features(torch.randn(batch, 3, size, size, device=args.device)))
        inputs = {w.shape[1]: torch.randn(batch, w.shape[1], device=args.device) for w in weights}

        def decode():
            generate(net, tokens, max_len=args.tokens + 1, min_len=args.tokens + 1)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        def plain():
            for _ in range(args.tokens):
                for w in weights:
                    F.linear(inputs[w.shape[1]], w)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        decode_s = plain_s = float("inf")
        for _ in range(3):  # alternate, keep the best of each
            decode_s = min(decode_s, best(decode, args.rounds))
            plain_s = min(plain_s, best(plain, args.rounds))
        flops = flops_per_row * batch * args.tokens
        print(f"| {batch} | {decode_s / args.tokens * 1e3:.2f} ms | {flops / decode_s / 1e9:.1f} | "
              f"{plain_s / args.tokens * 1e3:.2f} ms | {flops / plain_s / 1e9:.1f} | {plain_s / decode_s:.0%} |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
