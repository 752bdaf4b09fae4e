"""Query latency of the Searcher (text encoding + FAISS search + re-ranking) at 10k and 100k images, and the
throughput of 8 concurrent clients.

    python benchmarks/bench_search_latency.py [--sizes 10000 100000] [--checkpoint DIR] [--write]

The model is the bundled checkpoint when it exists, else the default architecture with random weights
(speed does not depend on what the weights learned). The FAISS side holds synthetic unit latents, built by
the index builder's own index choice; their items point, in turn, at a pool of real image files so that
re-ranking decodes and encodes real images. Queries run in worker threads, as the UI runs them.
"--write" replaces the "Search latency" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from mammut_search.bundled import bundled_checkpoint_dir
from mammut_search.inference import MammutModel, load_model
from mammut_search.search import RERANK_CANDIDATES, Searcher
from mammut_search.index.store import IndexStore, items_frame

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Search latency"
QUERIES = [
    "a red apple", "an octopus", "a cat face", "a black dog", "a smiling face with sunglasses", "the blue sea",
    "a green tree", "a yellow star", "an orange", "a house with a garden", "a white cloud", "a purple heart",
    "a rocket", "a bicycle", "a slice of pizza", "a snowman", "a musical note", "a red car", "a crying face",
    "a cup of coffee", "a flag", "a book", "a clock showing three", "a banana", "a sun behind clouds",
    "a fish", "a horse", "a camera", "a key", "a light bulb", "a birthday cake", "a mountain with snow",
]


def default_model(device: str | None) -> tuple[MammutModel, str]:
    """The bundled checkpoint, or the default architecture with random weights."""
    if (bundled_checkpoint_dir() / "model.safetensors").exists():
        model = load_model(None, device=device)
        return model, f"the bundled checkpoint ({model.checkpoint_sha256[:12]})"
    from mammut_search.model.config import MammutConfig
    from mammut_search.model.mammut import MaMMUT
    from mammut_search.testing import TINY_TEXTS
    from mammut_search.model.tokenizer import train_bpe

    tokenizer = train_bpe(TINY_TEXTS * 4, vocab_size=300, min_frequency=1)
    config = MammutConfig(vocab_size=8192, dim=384, depth=3, heads=6, num_img_queries=64, dim_latents=256,
                          ff_mult=4, image_grid_latent=False, semantic_dim=0, fusion_weight=0.0,
                          image_encoder={"grid": 0, "classifier_token": False},
                          pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    torch.manual_seed(0)
    return (MammutModel(MaMMUT(config), tokenizer, device=device),
            "default architecture, random weights (EfficientNet-Lite0 at 160 px, decoder 384 wide, 3 layers, "
            "8192-token vocabulary)")


def image_pool(folder: Path, count: int) -> list[str]:
    """`count` 128 px drawings to stand for the collection's files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (128, 128), tuple(int(c) for c in rng.integers(150, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.integers(0, 96, 2)
            draw.ellipse([int(x), int(y), int(x) + 32, int(y) + 32], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        path = folder / f"pool{i:04d}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def synthetic_index(directory: Path, size: int, dim: int, pool: list[str], sha: str) -> IndexStore:
    """An index of `size` random unit latents whose items point at the pool's files in turn."""
    from mammut_search.index.vectors.ann import build_vector_index

    rng = np.random.default_rng(size)
    latents = rng.standard_normal((size, dim), dtype=np.float32)
    latents /= np.linalg.norm(latents, axis=1, keepdims=True)
    ids = np.arange(size, dtype=np.int64)
    items = items_frame([dict(id=int(i), path=pool[i % len(pool)], size=1, mtime=0.0, sha256=f"{i:064x}",
                              width=128, height=128, caption="", status="ok") for i in ids])
    vectors = build_vector_index(latents, ids)
    manifest = {"checkpoint_sha256": sha, "latent_dim": dim, "metric": "inner_product", "roots": [str(Path(pool[0]).parent)]}
    IndexStore.commit(directory, items, vectors, manifest)
    return IndexStore.open(directory)


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure_latencies(searcher: Searcher, queries: int, cold: int, on_thread) -> dict[str, list[float]]:
    """Latency samples (s) of each stage and of whole queries, measured one query at a time."""
    model, vectors = searcher.model, searcher.store.vectors
    texts = (QUERIES * (queries // len(QUERIES) + 1))[:queries]
    latent = model.encode_text(["a red apple"]).numpy()
    samples: dict[str, list[float]] = {}

    def each(name: str, fn: Callable[[str], object], items: list[str]) -> None:
        fn(items[0])  # warm-up
        out = []
        for text in items:
            start = time.perf_counter()
            fn(text)
            out.append(time.perf_counter() - start)
        samples[name] = out

    def run() -> None:
        each("text encoding", lambda t: model.encode_text([t]), texts)
        each(f"FAISS top-{RERANK_CANDIDATES}", lambda t: vectors.search(latent, RERANK_CANDIDATES), texts)
        each("query, vectors only (k=10)", lambda t: searcher.search_text(t, 10, vectors_only=True), texts)
        each("query, vectors and keywords (k=10)", lambda t: searcher.search_text(t, 10, rerank=False), texts)
        each(f"query, re-ranking {RERANK_CANDIDATES} from stored tokens",
             lambda t: searcher.search_text(t, 10, rerank=True), texts[:cold])

    on_thread(run)
    return samples


def measure_throughput(searcher: Searcher, clients: int, seconds: float, rerank: bool) -> tuple[float, float, float]:
    """`clients` threads querying for `seconds` -> (queries per second, p50 s, p95 s)."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        i = c
        while time.perf_counter() < stop:
            start = time.perf_counter()
            searcher.search_text(QUERIES[i % len(QUERIES)], 10, rerank=rerank)
            with lock:
                latencies.append(time.perf_counter() - start)
            i += clients

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, percentile(latencies, 50), percentile(latencies, 95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=32, help="queries per latency measurement")
    parser.add_argument("--cold", type=int, default=8, help="queries measured with an empty token cache")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each throughput run")
    parser.add_argument("--pool", type=int, default=256, help="distinct image files behind the synthetic items")
    parser.add_argument("--device", default=None)
    parser.add_argument("--write", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()

    model, model_text = default_model(args.device)
    load = os.getloadavg()[0]
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, device {model.device}, "
               f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} at start")
    print(f"machine: {machine}\nmodel: {model_text}")
    rows, throughput = [], []
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as worker:
        on_thread = lambda fn: worker.submit(fn).result()  # noqa: E731
        pool = image_pool(Path(tmp) / "pool", args.pool)
        for size in args.sizes:
            started = time.perf_counter()
            store = synthetic_index(Path(tmp) / f"n{size}", size, model.latent_dim, pool, model.checkpoint_sha256)
            print(f"{size} images: index {store.vectors.kind} built in {time.perf_counter() - started:.1f} s")
            searcher = Searcher(store, model)
            for name, values in measure_latencies(searcher, args.queries, args.cold, on_thread).items():
                rows.append((size, name, percentile(values, 50), percentile(values, 95), len(values)))
                print(f"  {name:45s} p50 {rows[-1][2] * 1000:8.1f} ms  p95 {rows[-1][3] * 1000:8.1f} ms")
            for rerank in (False, True):
                qps, p50, p95 = measure_throughput(searcher, args.clients, args.seconds, rerank)
                throughput.append((size, rerank, qps, p50, p95))
                print(f"  {args.clients} clients, re-ranking {'on ' if rerank else 'off'}: {qps:6.1f} queries/s, "
                      f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
            searcher.close()
    if args.write:
        write_section(render(machine, model_text, rows, throughput, args))
        print(f"wrote the {SECTION!r} section of {RESULTS}")


def render(machine: str, model_text: str, rows, throughput, args) -> str:
    lines = [
        SECTION,
        f"`python benchmarks/bench_search_latency.py --write` — {machine}.",
        f"Model: {model_text}. Synthetic unit latents in the index the builder chooses at each size; items point "
        f"at {args.pool} real 128 px image files in turn, so re-ranking decodes and encodes real images. "
        f"Each query asks for k=10; re-ranking scores the top {RERANK_CANDIDATES} FAISS candidates plus the "
        f"reference images of the likelihood baseline. Single queries run one at a time in a worker thread.",
        "",
        "| images | stage | p50 | p95 | queries |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {size:,} | {name} | {p50 * 1000:.1f} ms | {p95 * 1000:.1f} ms | {n} |" for size, name, p50, p95, n in rows]
    lines += ["", f"Throughput, {args.clients} concurrent clients for {args.seconds:.0f} s each (the token cache starts "
              "empty; as every item is a distinct id, re-ranked queries rarely find their candidates cached: the "
              "worst case):", "",
              "| images | re-ranking | queries/s | p50 | p95 |", "|---|---|---|---|---|"]
    lines += [f"| {size:,} | {'on' if rerank else 'off'} | {qps:.1f} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms |"
              for size, rerank, qps, p50, p95 in throughput]
    lines += ["", "A cold re-ranked query runs the image encoder on every candidate whose tokens are not cached (the "
              f"{RERANK_CANDIDATES} candidates and the reference images), which is most of its cost; with the tokens "
              "cached, the decoder's likelihood pass over those pairs remains. The model runs one call at a time "
              "(a lock), so concurrent re-ranked queries queue behind each other's image encoding. A load "
              "average above the core count means other jobs shared the CPU during the run."]
    return "\n".join(lines) + "\n"


def write_section(section: str, title: str = SECTION) -> None:
    """Replace (or append) the section `title` of RESULTS.md, leaving the others as they are."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(title + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
