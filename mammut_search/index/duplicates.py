"""Near-duplicates: groups of images whose stored latents are nearly the same (bursts, edits, re-saved copies),
found by a FAISS range search over the index's own vectors, and byte-identical copies (the same sha256).
No image is decoded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammut_search.errors import UserError

DUPLICATE_SIMILARITY = 0.95  # how it was chosen: benchmarks/RESULTS.md, "Near-duplicates"
BLOCK = 4096  # query vectors per range search: bounds the memory of the answers
# beyond this many images the range search is approximate (an inverted file): how these were chosen,
# benchmarks/RESULTS.md, "Near-duplicates"
EXACT_UP_TO = 20_000
PROBES = 8
TRAINING_PER_LIST = 39  # FAISS's own minimum of training points per list


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are near-identical to each other; `copies` are the ids whose bytes equal another's."""

    ids: list[int]
    copies: list[int]


def check_threshold(threshold: Any) -> float:
    """A least similarity of near-duplicates, a finite number (above 1: byte copies only), or a UserError naming it."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not np.isfinite(threshold):
        raise UserError(f"a near-duplicate threshold is a cosine similarity, a number, got {threshold!r}")
    return float(threshold)


def similar_pairs(vectors: np.ndarray, threshold: float, *, progress: bool = False) -> np.ndarray:
    """Pairs (p 2) of row numbers i < j whose inner product is at least `threshold`, through FAISS range search:
    exact up to EXACT_UP_TO rows, through an inverted-file index beyond (a pair is kept when either image finds
    the other)."""
    from tqdm import tqdm

    index = range_index(vectors)
    pairs = [np.zeros((0, 2), np.int64)]
    for start in tqdm(range(0, len(vectors), BLOCK), desc="comparing images", unit="block", disable=not progress):
        lims, _, found = index.range_search(vectors[start:start + BLOCK], float(threshold))
        rows = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64))
        found = found.astype(np.int64)
        other = found != rows
        rows, found = rows[other], found[other]
        pairs.append(np.stack([np.minimum(rows, found), np.maximum(rows, found)], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def range_index(vectors: np.ndarray):
    """A FAISS inner-product index over `vectors` (n d): flat (exact) for up to EXACT_UP_TO rows; beyond, an
    inverted file of about 4 sqrt(n) lists, PROBES of them searched, trained on a sample (near-identical vectors
    fall in the same or neighbouring lists; the exact search is quadratic)."""
    import faiss

    n, dim = vectors.shape
    if n <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = min(int(4 * math.sqrt(n)), n // TRAINING_PER_LIST)
        index = faiss.index_factory(dim, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, lists * TRAINING_PER_LIST, replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = PROBES
    index.add(vectors)
    return index


def duplicate_groups(store, threshold: float = DUPLICATE_SIMILARITY, *,
                     progress: bool = False) -> list[DuplicateGroup]:
    """The groups of near-identical images of an opened index (IndexStore), largest first."""
    threshold = check_threshold(threshold)
    ok = store.ok_items.sort_values("id")
    ids = ok["id"].to_numpy(np.int64)
    if not len(ids):
        return []
    vectors = np.ascontiguousarray(store.vectors.reconstruct(ids), dtype=np.float32)
    parent = np.arange(len(ids))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of_content: dict[str, int] = {}
    copies = set()
    for row, sha in enumerate(ok["sha256"]):
        if sha and sha in first_of_content:
            parent[root(row)] = root(first_of_content[sha])
            copies.add(int(ids[row]))
        first_of_content.setdefault(sha, row)
    for i, j in similar_pairs(vectors, threshold, progress=progress).tolist():
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for row in range(len(ids)):
        groups.setdefault(root(row), []).append(int(ids[row]))
    found = [DuplicateGroup(g, [i for i in g if i in copies]) for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: (-len(g.ids), g.ids[0]))
