"""Does re-ranking by likelihood help? Text->image recall@1/5/10 with and without it, over a range of weights,
its latency, and how well the "nothing matches" signal separates queries with and without a right image.

    python benchmarks/bench_rerank.py --corpus [--write]      # the corpus's val split, val_unseen as negatives
    python benchmarks/bench_rerank.py --index VAL.index --pairs val.csv [--negatives other.csv] [--write]

`--corpus` prepares everything from the built training corpus (data/cache/corpus/manifest.parquet): a folder
of links to the images of the `val` split, its index (built once, with the bundled model, under
data/cache/bench_rerank/), their names as captions, and the names of the `val_unseen` split as negatives.
Otherwise `--index` is an index of the validation images (mammut index build); `--pairs` their captions (CSV/TSV/JSONL
as for `mammut eval`, or a folder of images with NAME.txt captions). Each distinct caption is a query; an
indexed image carrying it is a right answer (matched by absolute path). `--negatives` holds captions of
concepts that are not in the index: for them the right answer is "nothing matches".
"--write" replaces the "Re-ranking" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mammut_search.captioned import read_captioned
from mammut_search.search import RERANK_CANDIDATES, RERANK_WEIGHT, Searcher

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Re-ranking"
WEIGHTS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, float("inf")]  # inf: likelihood alone
MARGINS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
KS = (1, 5, 10)
# queries no emoji, clip-art or icon answers: "nothing matches" should be said for them
UNRELATED = [
    "a spreadsheet of taxes", "quarterly financial report", "a photograph of my grandmother",
    "kubernetes cluster diagram", "the theory of relativity", "a blurry photo of a parking lot",
    "invoice number 4711", "a screenshot of a terminal", "a comic about regular expressions",
    "a scanned tax form", "password reset email", "the stock market in 1929",
]


def read_queries(source: str) -> dict[str, list[str]]:
    """Captions file or captioned folder -> {caption: [absolute image paths]}."""
    pairs = read_captioned(source).pairs()
    queries: dict[str, list[str]] = {}
    for image, caption in zip(pairs["image"], pairs["caption"]):
        if caption:
            queries.setdefault(caption, []).append(os.path.abspath(image))
    return queries


def candidates(searcher: Searcher, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The re-ranking pool of a query: (ids, similarities, likelihood lifts), in FAISS order, and seconds."""
    start = time.perf_counter()
    hits = searcher.search_text(text, searcher.rerank_candidates, rerank=True).hits
    seconds = time.perf_counter() - start
    hits = sorted(hits, key=lambda h: -h.similarity)
    lifts = np.array([h.likelihood if h.likelihood is not None else -np.inf for h in hits])
    return np.array([h.id for h in hits]), np.array([h.similarity for h in hits]), lifts, seconds


def recall(pools, targets: list[set[int]], weight: float) -> dict[int, float]:
    """Recall@k of the pools re-ordered by similarity + weight * lift (inf: lift alone)."""
    found = {k: 0 for k in KS}
    for (ids, sims, lifts), right in zip(pools, targets):
        score = lifts if weight == float("inf") else sims + weight * np.where(np.isfinite(lifts), lifts, -1e3)
        order = ids[np.argsort(-score, kind="stable")]
        for k in KS:
            found[k] += bool(right & set(order[:k].tolist()))
    return {k: found[k] / max(1, len(targets)) for k in KS}


def prepare_corpus_split(manifest: Path, split: str, negative_split: str, work: Path,
                         checkpoint: str | None) -> tuple[Path, Path, Path]:
    """Links to a corpus split's images, their index, and pairs files -> (index, pairs csv, negatives csv)."""
    import pandas as pd

    from index_builder.build import BuildOptions, build_index
    from mammut_search.inference import load_model

    table = pd.read_parquet(manifest)
    images = work / split / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = table[table["split"] == split]
    links = []
    for relative in rows["path"]:
        link = images / Path(relative).name  # file names are concept codes, unique within one style
        if not link.exists():
            os.symlink(os.path.abspath(manifest.parent / relative), link)
        links.append(str(link.absolute()))
    pairs, negatives = work / f"{split}.csv", work / f"{negative_split}.csv"
    pd.DataFrame({"image": links, "caption": rows["name"].tolist()}).to_csv(pairs, index=False)
    others = table[table["split"] == negative_split]
    pd.DataFrame({"image": others["path"].tolist(), "caption": others["name"].tolist()}).to_csv(negatives, index=False)
    index = work / split / "index"
    if not (index / "manifest.json").exists():
        build_index([images], index, load_model(checkpoint), checkpoint_dir=checkpoint, options=BuildOptions())
    return index, pairs, negatives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="?", const="data/cache/corpus/manifest.parquet", metavar="MANIFEST",
                        help="use the corpus's val split (default manifest: %(const)s)")
    parser.add_argument("--index")
    parser.add_argument("--pairs", help="captions of the indexed images (file or folder)")
    parser.add_argument("--negatives", help="captions of concepts that are not in the index (file or folder)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--device")
    parser.add_argument("--limit", type=int, default=500, help="at most this many queries of each kind")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.corpus:
        work = Path(args.corpus).resolve().parent.parent / "bench_rerank"
        args.index, args.pairs, args.negatives = prepare_corpus_split(Path(args.corpus), "val", "val_unseen", work,
                                                                      args.checkpoint)
    elif not (args.index and args.pairs):
        parser.error("give --corpus, or --index and --pairs")

    searcher = Searcher.open(args.index, checkpoint=args.checkpoint, device=args.device, cache_size=1 << 16)
    ok = searcher.store.ok_items
    id_of = {os.path.abspath(p): int(i) for p, i in zip(ok["path"], ok["id"])}
    queries = {q: {id_of[p] for p in paths if p in id_of} for q, paths in read_queries(args.pairs).items()}
    queries = dict(list(((q, t) for q, t in queries.items() if t))[:args.limit])
    negatives = list(read_queries(args.negatives))[:args.limit] if args.negatives else []
    if not queries:
        raise SystemExit(f"no caption of {args.pairs} belongs to an image of {args.index}")

    texts, targets = list(queries), list(queries.values())
    searcher.search_text(texts[0], 10, rerank=True)  # warm-up
    pools, rerank_seconds = [], []
    for text in tqdm(texts, desc="queries", unit="q"):
        ids, sims, lifts, seconds = candidates(searcher, text)
        pools.append((ids, sims, lifts))
        rerank_seconds.append(seconds)
    plain_seconds = []
    for text in texts[:100]:
        start = time.perf_counter()
        searcher.search_text(text, 10, rerank=False)
        plain_seconds.append(time.perf_counter() - start)
    negative_best = [candidates(searcher, t)[2].max() for t in tqdm(negatives, desc="negatives", unit="q")]
    unrelated_best = [candidates(searcher, t)[2].max() for t in UNRELATED]
    positive_best = [lifts.max() for (_, _, lifts) in pools]

    command = ("--corpus" if args.corpus else f"--index {args.index} --pairs {args.pairs}"
               + (f" --negatives {args.negatives}" if args.negatives else ""))
    lines = [SECTION, f"`python benchmarks/bench_rerank.py {command} --write`",
             f"Model {searcher.model.checkpoint_sha256[:12]} on {searcher.model.device}; {len(ok)} indexed images, "
             f"{len(texts)} caption queries; re-ranking pool: top {searcher.rerank_candidates} by similarity. "
             f"Score = similarity + weight × (log p(query | image) − its median over reference images), per token.",
             "", "| weight | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
    for weight in WEIGHTS:
        r = recall(pools, targets, weight)
        name = "no re-ranking" if weight == 0 else "likelihood alone" if weight == float("inf") else f"{weight:g}"
        marker = " (default)" if weight == RERANK_WEIGHT else ""
        lines.append(f"| {name}{marker} | {r[1]:.3f} | {r[5]:.3f} | {r[10]:.3f} |")
    lines += ["", f"Latency per query (k=10): without re-ranking p50 {np.median(plain_seconds) * 1000:.0f} ms; "
              f"with re-ranking of {RERANK_CANDIDATES} (image tokens cached after first use) p50 "
              f"{np.median(rerank_seconds) * 1000:.0f} ms, p95 {np.percentile(rerank_seconds, 95) * 1000:.0f} ms."]
    lines += ["", "\"Nothing matches\" (best lift below the margin): share of queries flagged. Queries without a right "
              "image: captions of concepts left out of the index (`--negatives`; often close kin of indexed ones), "
              f"and {len(UNRELATED)} unrelated queries (documents, photographs).", "",
              "| margin | queries with a right image | without (other concepts) | unrelated |", "|---|---|---|---|"]
    for margin in MARGINS:
        marker = ""
        flagged_negatives = f"{np.mean(np.array(negative_best) < margin):.3f}" if negatives else "–"
        lines.append(f"| {margin:g}{marker} | {np.mean(np.array(positive_best) < margin):.3f} | "
                     f"{flagged_negatives} | {np.mean(np.array(unrelated_best) < margin):.3f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        from bench_search_latency import write_section

        write_section(section, SECTION)


if __name__ == "__main__":
    main()
