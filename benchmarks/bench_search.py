"""Vector search speed and cost: exact (flat) against approximate indexes, at several collection sizes.

For each size and index kind: build time (training, adding and recall tuning included), index size, the
process memory it added, latency of one query and of a batch of 256, and recall@10 of fresh queries against
exact search. Data: synthetic clustered unit vectors standing in for image latents (see clustered_latents).

    python benchmarks/bench_search.py --sizes 10000 100000 --kinds flat ivf_flat
    python benchmarks/bench_search.py --sizes 1000000 --kinds flat ivf_flat     # a few minutes on 2 cores
    python benchmarks/bench_search.py --sizes 10000 100000 --threads 1           # one FAISS thread
    python benchmarks/bench_search.py --report                                  # markdown table of all runs

Each run writes one JSON per (size, kind, threads) under benchmarks/out/bench_search/.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammut_search.index.vectors.ann import build_vector_index, ground_truth, measure_recall  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "bench_search"
CLUSTERS, LATENT_RANK, NOISE = 100, 32, 0.3
SINGLE_QUERIES = 50  # timed one at a time
BATCH = 256
BATCH_REPEATS = 3
RECALL_QUERIES = 1000
TIME_BUDGET_S = 15.0  # per latency measurement


def clustered_latents(n: int, dim: int, seed: int, chunk: int = 100_000, out: np.ndarray | None = None) -> np.ndarray:
    """n unit vectors (n d) like image latents: a mixture of CLUSTERS overlapping Gaussian clusters in a
    LATENT_RANK-dimensional space, mapped linearly into `dim` dimensions, plus a little isotropic noise. Without
    the overlap (well separated clusters) IVF would find every neighbour in one list and flatter itself.
    `out`: an (n d) float32 array to fill, e.g. a memmap for more vectors than fit in memory (same values)."""
    fixed = np.random.default_rng(12345)
    mixing = fixed.standard_normal((LATENT_RANK, dim), dtype=np.float32) / np.sqrt(LATENT_RANK)
    centres = fixed.standard_normal((CLUSTERS, LATENT_RANK), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32) if out is None else out
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        z = centres[rng.integers(0, CLUSTERS, size)] + rng.standard_normal((size, LATENT_RANK), dtype=np.float32)
        x = z @ mixing + NOISE * rng.standard_normal((size, dim), dtype=np.float32) / np.sqrt(dim)
        out[start:start + size] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def time_searches(index, queries: np.ndarray) -> dict[str, float]:
    """Median and p95 latency of single queries, and median time of a 256-query batch, in ms (fewer repeats
    when one takes long, so that the 1M exact case stays within minutes)."""
    for q in queries[:3]:  # warm-up
        index.search(q[None], 10)
    single, started = [], time.perf_counter()
    for q in queries[:SINGLE_QUERIES]:
        start = time.perf_counter()
        index.search(q[None], 10)
        single.append((time.perf_counter() - start) * 1000)
        if len(single) >= 10 and time.perf_counter() - started > TIME_BUDGET_S:
            break
    batch, started = [], time.perf_counter()
    for repeat in range(BATCH_REPEATS):
        rows = queries[repeat * BATCH % len(queries):][:BATCH]
        start = time.perf_counter()
        index.search(rows, 10)
        batch.append((time.perf_counter() - start) * 1000)
        if time.perf_counter() - started > TIME_BUDGET_S:
            break
    return {"single_median_ms": float(np.median(single)), "single_p95_ms": float(np.percentile(single, 95)),
            "singles_timed": len(single), "batch256_median_ms": float(np.median(batch)), "batches_timed": len(batch)}


def bench(size: int, kind: str, dim: int, vectors: np.ndarray, queries: np.ndarray, truth) -> dict:
    """Build one index and measure it."""
    ids = np.arange(size, dtype=np.int64)
    gc.collect()
    rss_before, _ = memory_mb()
    start = time.perf_counter()
    index = build_vector_index(vectors, ids, kind=kind, progress=True)
    build_s = time.perf_counter() - start
    rss_after, peak = memory_mb()
    with tempfile.TemporaryDirectory() as folder:
        index.save(Path(folder) / "index.faiss")
        index_mb = (Path(folder) / "index.faiss").stat().st_size / 2**20
    result = {
        "size": size, "dim": dim, "kind": kind, "build_s": build_s, "index_mb": index_mb,
        "rss_added_mb": rss_after - rss_before, "peak_rss_mb": peak,
        "fresh_recall_at_10": measure_recall(index, truth), "load_average": os.getloadavg()[0],
        "description": index.description, **time_searches(index, queries),
    }
    del index
    gc.collect()
    return result


def machine() -> str:
    """CPU model, core count, FAISS version and threads, for the results table."""
    import faiss

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return (f"{model}, {os.cpu_count()} cores, FAISS {faiss.__version__}, numpy {np.__version__}, "
            f"Python {platform.python_version()}")


def report() -> str:
    """All saved runs as a markdown table."""
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    rows.sort(key=lambda r: (r.get("threads", 0), r["size"], r["kind"] != "flat", r["kind"]))
    lines = ["| threads | vectors | index | build | index size | 1 query (median / p95) | 256 queries | "
             "recall@10 (fresh queries) | params |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["description"].get("params", {}).items()) or "exact"
        lines.append(f"| {r.get('threads', '?')} | {r['size']:,} × {r['dim']} | {r['kind']} | {r['build_s']:.1f} s "
                     f"| {r['index_mb']:.0f} MB "
                     f"| {r['single_median_ms']:.2f} / {r['single_p95_ms']:.2f} ms | {r['batch256_median_ms']:.0f} ms "
                     f"({r['batch256_median_ms'] / BATCH:.2f} ms/query) | {r['fresh_recall_at_10']:.3f} | {params} |")
    machines = sorted({r.get("machine", "?") for r in rows})
    loads = [r["load_average"] for r in rows if "load_average" in r]
    load = f" Load average during the runs: {min(loads):.1f}–{max(loads):.1f}." if loads else ""
    return "\n".join(lines) + "\n\nMachine: " + "; ".join(machines) + "." + load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf_flat"])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all cores)")
    parser.add_argument("--report", action="store_true", help="print the table of saved runs and exit")
    args = parser.parse_args()
    if args.report:
        print(report())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    where = machine()
    queries = clustered_latents(max(RECALL_QUERIES, SINGLE_QUERIES + BATCH * BATCH_REPEATS), args.dim, seed=1)
    for size in args.sizes:
        vectors = clustered_latents(size, args.dim, seed=0)
        truth = ground_truth(vectors, np.arange(size, dtype=np.int64), queries=queries[:RECALL_QUERIES])
        for kind in args.kinds:
            result = bench(size, kind, args.dim, vectors, queries, truth)
            result["machine"], result["threads"] = where, threads
            (OUT / f"{size:09d}-{kind}-t{threads}.json").write_text(json.dumps(result, indent=2))
            print(json.dumps({k: v for k, v in result.items() if k != "description"}), flush=True)
        del vectors, truth
        gc.collect()


if __name__ == "__main__":
    main()
