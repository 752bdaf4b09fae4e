"""The keyword index at scale: build time, size and query latency of SQLite FTS5 (what the index uses) and of
the bm25s package (an in-memory BM25 on sparse matrices, measured for comparison when it is installed), and what
calibrating the relevance cutoff costs, on synthetic items.

    python benchmarks/bench_keywords.py --items 100000

Items: file names like `IMG_0412` or three vocabulary words joined by '-', two folder levels (a year and a
place), captions of 4-9 vocabulary words (the bundled tokenizer's whole words). Queries: 2-3 vocabulary words,
asking for the KEYWORD_CANDIDATES best with the words each matched, as a search does.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammut_search.hybrid import KEYWORD_CANDIDATES  # noqa: E402
from mammut_search.index.keywords import KeywordIndex, item_fields, write_keywords  # noqa: E402

QUERIES = 300


def synthetic_items(n: int, words: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """n ok items with folder names, file names and captions drawn from `words`."""
    pick = lambda k: " ".join(rng.choice(words, k))  # noqa: E731
    places = rng.choice(words, 200)
    paths, captions = [], []
    for i in range(n):
        name = f"IMG_{i:05d}" if i % 2 else "-".join(rng.choice(words, 3))
        paths.append(f"/photos/{2000 + i % 25}-{places[i % 200]}/{name}.jpg")
        captions.append("a picture of " + pick(int(rng.integers(4, 10))))
    return pd.DataFrame({"id": np.arange(n), "path": paths, "caption": captions, "status": "ok"})


def latency(search, queries: list[str]) -> tuple[float, float]:
    """(p50, p95) in ms of one query at a time."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def bench_fts5(items: pd.DataFrame, queries: list[str], folder: str) -> None:
    path = os.path.join(folder, "keywords.sqlite")
    start = time.perf_counter()
    write_keywords(items, ["/photos"], path)
    built = time.perf_counter() - start
    index = KeywordIndex(Path(path))
    latency(lambda q: index.search(q, KEYWORD_CANDIDATES), queries[:20])  # warm the page cache
    p50, p95 = latency(lambda q: index.search(q, KEYWORD_CANDIDATES), queries)
    print(f"| SQLite FTS5 (porter, unicode61) | {built:.1f} s | {os.path.getsize(path) / 2**20:.1f} MiB on disk "
          f"| {p50:.2f} ms | {p95:.2f} ms |")


def bench_bm25s(items: pd.DataFrame, queries: list[str]) -> None:
    try:
        import bm25s
    except ImportError:
        print("| bm25s | (not installed) | | | |")
        return
    fields = [" ".join(item_fields(p, c, ["/photos"])) for p, c in zip(items["path"], items["caption"])]
    start = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(fields, stopwords="en", show_progress=False), show_progress=False)
    built = time.perf_counter() - start

    def search(q: str):
        return retriever.retrieve(bm25s.tokenize([q], stopwords="en", show_progress=False),
                                  k=KEYWORD_CANDIDATES, show_progress=False)

    p50, p95 = latency(search, queries)
    print(f"| bm25s {bm25s.__version__} (no stemming, no matched words) | {built:.1f} s | in memory "
          f"| {p50:.2f} ms | {p95:.2f} ms |")


def bench_calibration(n: int) -> None:
    """Calibrating the relevance cutoff at n items (random unit vectors standing in for image latents)."""
    from mammut_search.index.vectors.ann import build_vector_index
    from mammut_search.inference import load_model
    from mammut_search.relevance import calibrate

    model = load_model(device="cpu")
    vectors = np.random.default_rng(1).normal(size=(n, model.latent_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_vector_index(vectors, np.arange(n, dtype=np.int64))
    start = time.perf_counter()
    entry = calibrate(model, index)
    print(f"relevance calibration at {n} items ({index.kind} vectors): {time.perf_counter() - start:.1f} s "
          f"({entry['queries']} calibration queries)")


def main() -> None:
    from mammut_search.inference import load_model
    from mammut_search.relevance import vocabulary_words

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    words = vocabulary_words(load_model(device="cpu").tokenizer)
    rng = np.random.default_rng(0)
    items = synthetic_items(args.items, words, rng)
    queries = [" ".join(rng.choice(words, int(rng.integers(2, 4)))) for _ in range(QUERIES)]
    print(f"{args.items} items, {QUERIES} queries, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs\n")
    print("| keyword index | build | size | query p50 | query p95 |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        bench_fts5(items, queries, folder)
    bench_bm25s(items, queries)
    print()
    bench_calibration(args.items)


if __name__ == "__main__":
    main()
