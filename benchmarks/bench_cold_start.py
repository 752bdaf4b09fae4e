"""Start-up and the first query: what a new user waits for, in fresh processes.

    python benchmarks/bench_cold_start.py --index DIR [--query "a red apple"] [--repeats 3]

Times (best of --repeats, each in a new process): `mammut --help`, `mammut index info DIR` and a bare
`python -c "import torch"` for scale; then `mammut search QUERY --index DIR` (re-ranked, the default) broken
down inside one fresh process into imports, model load, index open, the first query and the same query again
(warm), re-ranking from the decoder's image tokens the index stores; in wall seconds and in CPU seconds of the
process (one torch thread), the latter less disturbed by other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BREAKDOWN = r"""
import json, sys, time
clock = time.process_time if sys.argv[3] == "cpu" else time.perf_counter
t0 = clock()
import torch
torch.set_num_threads(1)
from mammut_search.search import Searcher
from mammut_search.inference import load_model
from mammut_search.index.store import IndexStore
from mammut_search.index.manifest import read_manifest, resolve_checkpoint
t1 = clock()
index, query = sys.argv[1], sys.argv[2]
model = load_model(resolve_checkpoint(read_manifest(index)), device="cpu")
t2 = clock()
searcher = Searcher(IndexStore.open(index, model=model), model)
searcher.store.vectors
t3 = clock()
searcher.search_text(query, 10, rerank=True)
t4 = clock()
searcher.search_text(query, 10, rerank=True)
t5 = clock()
print(json.dumps({"imports": t1 - t0, "model load": t2 - t1, "index open": t3 - t2, "first query": t4 - t3,
                  "warm query": t5 - t4}))
"""


def wall(argv: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return min(times)


def breakdown(index: str, query: str, repeats: int, clock: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", BREAKDOWN, index, query, clock],
                                      check=True, capture_output=True, text=True, env=env).stdout)
            for _ in range(repeats)]
    return {key: min(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--query", default="a red apple")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    py, cli = sys.executable, [sys.executable, "-m", "mammut_search.cli"]
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| command | seconds |\n|---|---|")
    for name, argv in [("python -c 'import torch'", [py, "-c", "import torch"]), ("mammut --help", cli + ["--help"]),
                       ("mammut index info", cli + ["index", "info", args.index]),
                       ("mammut search (re-ranked, whole process)", cli + ["search", args.query, "--index", args.index,
                                                                          "--device", "cpu"])]:
        print(f"| `{name}` | {wall(argv, args.repeats):.2f} |")
    for clock in ("wall", "cpu"):
        print(f"\n| inside `mammut search` ({clock} seconds, 1 thread) | seconds |")
        print("|---|---|")
        stored = breakdown(args.index, args.query, args.repeats, clock)
        for key in stored:
            print(f"| {key} | {stored[key]:.3f} |")
        print(f"first re-ranked query / warm one = {stored['first query'] / stored['warm query']:.2f}x ({clock})")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
