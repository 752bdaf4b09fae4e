"""Exact (flat) search: our VectorIndex against a plain numpy baseline and FAISS's own flat search.

    PYTHONPATH=. python benchmarks/bench_exact.py [--sizes 100000 1000000] [--batches 1 256] [--repeats 7]

Baseline: `latents @ q` (or `q @ latents.T` for a batch) + argpartition + sorting the top k, in numpy.
The methods are timed in turns (round-robin), so a busy machine slows each alike; the best and the median
of the repeats are printed as a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammut_search.index.vectors import VectorIndex  # noqa: E402
from mammut_search.index.vectors.kinds import KINDS  # noqa: E402

K = 10


def numpy_baseline(latents: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids (rows) of the top k by inner product, the way one would write it in numpy."""
    scores = latents @ queries[0] if len(queries) == 1 else queries @ latents.T
    scores = scores.reshape(len(queries), -1)
    top = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import faiss

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, FAISS {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads), numpy {np.__version__}, load {os.getloadavg()[0]:.1f}")
    print("| vectors | queries | numpy baseline best / median (ms) | FAISS flat best / median (ms) "
          "| VectorIndex best / median (ms) | VectorIndex vs baseline (best) |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        latents = rng.standard_normal((n, args.dim), dtype=np.float32)
        latents /= np.linalg.norm(latents, axis=1, keepdims=True)
        ids = np.arange(n, dtype=np.int64)
        faiss_index, facts = KINDS["flat"].make(args.dim, n)
        faiss_index.add_with_ids(latents, ids)
        ours = VectorIndex(faiss_index, facts, use_gpu=False)
        for batch in args.batches:
            queries = rng.standard_normal((batch, args.dim), dtype=np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            methods = {
                "numpy": lambda: numpy_baseline(latents, queries, K),
                "faiss": lambda: faiss_index.search(queries, K),
                "ours": lambda: ours.search(queries, K),
            }
            assert np.array_equal(ours.search(queries, K)[1], numpy_baseline(latents, queries, K))
            times = {name: [] for name in methods}
            for _ in range(args.repeats):
                for name, run in methods.items():
                    started = time.perf_counter()
                    run()
                    times[name].append(1000 * (time.perf_counter() - started))
            best = {name: min(t) for name, t in times.items()}
            cells = [f"{best[name]:.1f} / {statistics.median(times[name]):.1f}" for name in methods]
            print(f"| {n:,} | {batch} | {' | '.join(cells)} | {best['numpy'] / best['ours']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
