"""Exact (flat) search: our VectorIndex against a plain numpy baseline and FAISS's own flat search.

    PYTHONPATH=. python benchmarks/bench_exact.py [--sizes 100000 1000000] [--batches 1 256] [--repeats 7] [--alone]
        [--no-faiss]

Baseline: `latents @ q` (or `q @ latents.T` for a batch) + argpartition + sorting the top k, in numpy. Also
timed: the bare product (the floor: what any method must read), FAISS's flat search and ours. The methods are
timed in turns (round-robin), so a busy machine slows each alike, or with --alone each method's repeats back
to back; the best and the median of the repeats are printed as a Markdown table for benchmarks/RESULTS.md.
Each timed call starts with the caches filled with other data: otherwise a method that reads the array the
previous one read finds part of it still in the last-level cache (32 MB of the 100 MB at 100k here).
FAISS's OpenMP threads are made to sleep when idle (OMP_WAIT_POLICY=PASSIVE unless set), or they spin after
FAISS's turn and take the cores from the method timed next.
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when faiss loads its OpenMP runtime
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammut_search.index.vectors import VectorIndex  # noqa: E402
from mammut_search.index.vectors.kinds import KINDS  # noqa: E402

K = 10
EVICT_BYTES = 256 << 20  # read before each timed call; more than the last-level cache


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
    parser.add_argument("--alone", action="store_true", help="time each method's repeats back to back")
    parser.add_argument("--no-faiss", action="store_true", help="leave FAISS's flat search out (it is slow)")
    args = parser.parse_args()
    import faiss

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, FAISS {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
          f"numpy {np.__version__}, {'alone' if args.alone else 'in turns'}, {args.repeats} rounds, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| vectors | queries | bare product best / median (ms) | numpy baseline best / median (ms) "
          "| FAISS flat best / median (ms) | VectorIndex best / median (ms) | VectorIndex vs baseline (best / median) |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    other_data = np.ones(EVICT_BYTES // 4, np.float32)
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
                "product": lambda: latents @ queries[0] if batch == 1 else queries @ latents.T,
                "numpy": lambda: numpy_baseline(latents, queries, K),
                "faiss": lambda: faiss_index.search(queries, K),
                "ours": lambda: ours.search(queries, K),
            }
            if args.no_faiss:
                del methods["faiss"]
            assert np.array_equal(ours.search(queries, K)[1], numpy_baseline(latents, queries, K))
            times = {name: [] for name in methods}
            turns = [[name] * args.repeats for name in methods] if args.alone else [list(methods)] * args.repeats
            for turn in turns:
                for name in turn:
                    other_data.max()
                    started = time.perf_counter()
                    methods[name]()
                    times[name].append(1000 * (time.perf_counter() - started))
            best = {name: min(t) for name, t in times.items()}
            median = {name: statistics.median(t) for name, t in times.items()}
            cells = [f"{best[name]:.2f} / {median[name]:.2f}" if name in methods else "–" for name in
                     ("product", "numpy", "faiss", "ours")]
            print(f"| {n:,} | {batch} | {' | '.join(cells)} | {best['numpy'] / best['ours']:.2f}x / "
                  f"{median['numpy'] / median['ours']:.2f}x |", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
