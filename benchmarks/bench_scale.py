"""Vector search beyond memory: a compressed index (refined IVF-PQ, in a memory budget) over 1M and 10M vectors.

The vectors are generated chunk by chunk into a .npy file on disk and handed to `build_vector_index` as a
read-only memmap, the way a collection larger than RAM would be: 10M × 256 float32 is 10 GB, and the process
never holds it. The memory budget scales with the collection (BUDGET_PER_VECTOR bytes a vector, 2 GiB at 10M,
or --budget-per-vector), so `kind="auto"` picks the same compressed kind at both sizes: IVF-PQ re-ranked with
finer scalar-quantized codes (ivf_pq_refine) where both fit the budget, else IVF-PQ alone (--kind ivf_pq).
Recall@10 is measured on fresh queries against exact search, computed block by block over the memmap. Query timings hold /tmp/bench.lock, so that they do not overlap
other timings on a shared machine.

    nice -n 19 python benchmarks/bench_scale.py --sizes 10000000 --nlist 1024   # ~35 min on 2 cores
    nice -n 19 python benchmarks/bench_scale.py --sizes 1000000 --nlist 1024
    nice -n 19 python benchmarks/bench_scale.py --sizes 1000000 --nlist 1024 --budget-per-vector 300
    python benchmarks/bench_scale.py --report

One size per process: memory freed by a larger build would hide what a smaller one needs.

Each run writes one JSON per size under benchmarks/out/bench_scale/; the vectors go to --work (default
/tmp/bench_scale, about 1 GB per million vectors; deleted afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_search import BATCH, clustered_latents, machine, time_searches  # noqa: E402
from mammut_search.index.vectors.ann import build_vector_index, ground_truth, measure_recall  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "bench_scale"
BUDGET_PER_VECTOR = 2 * 2**30 / 10_000_000  # bytes: 2 GiB for 10M vectors
TUNING_QUERIES = 200  # fresh queries the build tunes nprobe on (exact search over all vectors for each)
RECALL_QUERIES = 200  # other fresh queries the finished index is measured on
TIMED_QUERIES = 50 + 3 * BATCH


def memory_mb() -> dict[str, float]:
    """This process's anonymous and file-backed resident memory and its peak resident memory, in MB. Pages of
    the memmap count as file-backed: the kernel can drop them at any time."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = {k: int(fields[k].split()[0]) for k in ("RssAnon", "RssFile", "VmHWM")}
    return {"anon_mb": kb["RssAnon"] / 1024, "file_mb": kb["RssFile"] / 1024, "peak_rss_mb": kb["VmHWM"] / 1024}


@contextlib.contextmanager
def timing_lock(path: str = "/tmp/bench.lock"):
    """Hold an exclusive lock while timing, so that concurrent benchmarks do not disturb each other."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def vectors_on_disk(size: int, dim: int, work: Path) -> np.ndarray:
    """The benchmark's `size` clustered latents as a read-only memmap, generated once into `work`."""
    path = work / f"latents-{size}x{dim}.npy"
    if not path.exists():
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(size, dim))
        clustered_latents(size, dim, seed=0, out=out)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def bench(size: int, dim: int, nlist: int | None, work: Path, kind: str = "auto",
          budget_per_vector: float = BUDGET_PER_VECTOR) -> dict:
    """Build the index of `size` vectors from disk and measure it."""
    start = time.perf_counter()
    vectors = vectors_on_disk(size, dim, work)
    generate_s = time.perf_counter() - start
    ids = np.arange(size, dtype=np.int64)
    tuning = clustered_latents(TUNING_QUERIES, dim, seed=2)
    fresh = clustered_latents(max(RECALL_QUERIES, TIMED_QUERIES), dim, seed=1)
    gc.collect()
    before = memory_mb()
    start = time.perf_counter()
    budget = int(budget_per_vector * size)
    index = build_vector_index(vectors, ids, kind=kind, memory_budget_bytes=budget, queries=tuning, nlist=nlist,
                               progress=True)
    build_s = time.perf_counter() - start
    after = memory_mb()
    with tempfile.TemporaryDirectory(dir=work) as folder:
        index.save(Path(folder) / "index.faiss")
        index_mb = (Path(folder) / "index.faiss").stat().st_size / 2**20
    start = time.perf_counter()
    truth = ground_truth(vectors, ids, queries=fresh[:RECALL_QUERIES], progress=True)
    exact_s_per_query = (time.perf_counter() - start) / RECALL_QUERIES
    recall = measure_recall(index, truth)
    load = os.getloadavg()
    with timing_lock():
        timings = time_searches(index, fresh)
    return {
        "size": size, "dim": dim, "kind": index.kind, "nlist": index.description.get("nlist"),
        "pq_bytes_per_vector": index.description.get("pq_bytes_per_vector"),
        "refine": index.description.get("refine"), "memory_budget_bytes": budget, "generate_s": generate_s, "build_s": build_s,
        "index_mb": index_mb, "anon_added_mb": after["anon_mb"] - before["anon_mb"],
        "peak_anon_mb": after["anon_mb"], "peak_rss_mb": after["peak_rss_mb"], "file_backed_mb": after["file_mb"],
        "fresh_recall_at_10": recall, "exact_numpy_s_per_query": exact_s_per_query,
        "queries_per_s_batch1": 1000 / timings["single_median_ms"],
        "queries_per_s_batch256": BATCH * 1000 / timings["batch256_median_ms"],
        "load_average_build_end": load, "load_average_timing_end": os.getloadavg(),
        "description": index.description, **timings,
    }


def report() -> str:
    """All saved runs as a markdown table."""
    rows = sorted((json.loads(p.read_text()) for p in OUT.glob("*.json")), key=lambda r: r["size"])
    lines = ["| vectors | index | memory budget | build | index size | process memory (anon, after build) "
             "| q/s batch 1 | q/s batch 256 | recall@10 | params |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["description"].get("params", {}).items())
        codes = " + ".join(c for c in (r["pq_bytes_per_vector"] and f"PQ{r['pq_bytes_per_vector']}",
                                       r.get("refine"), r["kind"] == "ivf_sq8" and "SQ8") if c)
        lines.append(
            f"| {r['size']:,} × {r['dim']} | {r['kind']} (nlist={r['nlist']}, {codes}) "
            f"| {r['memory_budget_bytes'] / 2**20:,.0f} MiB | {r['build_s']:.0f} s | {r['index_mb']:.0f} MB "
            f"| {r['peak_anon_mb']:,.0f} MB | {r['queries_per_s_batch1']:,.0f} | {r['queries_per_s_batch256']:,.0f} "
            f"| {r['fresh_recall_at_10']:.3f} | {params} |")
    loads = [x for r in rows for x in (r["load_average_build_end"][0], r["load_average_timing_end"][0])]
    load = f" Load average (1 min) at the end of build and timing: {min(loads):.1f}–{max(loads):.1f}." if loads else ""
    return "\n".join(lines) + "\n\nMachine: " + "; ".join(sorted({r["machine"] for r in rows})) + "." + load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the builder's choice)")
    parser.add_argument("--kind", default="auto", help="index kind (default: the builder's choice for the budget)")
    parser.add_argument("--budget-per-vector", type=float, default=BUDGET_PER_VECTOR,
                        help="memory budget in bytes per vector (default: 2 GiB per 10M vectors)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_scale")
    parser.add_argument("--keep", action="store_true", help="keep the generated vectors in --work")
    parser.add_argument("--report", action="store_true", help="print the table of saved runs and exit")
    args = parser.parse_args()
    if args.report:
        print(report())
        return
    import faiss

    OUT.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    where = machine()
    for size in args.sizes:
        result = bench(size, args.dim, args.nlist, args.work, args.kind, args.budget_per_vector)
        result["machine"], result["threads"] = where, faiss.omp_get_max_threads()
        refine = f"-{result['refine'].lower()}" if result["refine"] else ""
        (OUT / f"{size:011d}-{result['kind']}{refine}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "description"}), flush=True)
        gc.collect()
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
