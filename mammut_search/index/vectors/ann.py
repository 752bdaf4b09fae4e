"""Which FAISS index a collection gets, how it is trained, and which search parameters it is served with.

- Up to `exact_threshold` vectors: exact search (flat inner product). Nothing to tune, recall is 1.
- Above it: IVF-Flat (vectors kept exactly, removable, fast to train); when the raw float32 vectors would not
  fit `memory_budget_bytes`, IVF-SQ8 (one byte per dimension, recall close to IVF-Flat), and when even that
  does not fit, refined IVF-PQ (ivf_pq_refine: coarse PQ codes find k_factor·k candidates, which are re-ranked
  with finer 8-, 6- or 4-bit scalar-quantized codes; both kinds of codes sized to fit the budget together),
  or, when not even 4-bit codes fit, plain IVF-PQ (a few bytes per vector). The recall of the compressed
  kinds may stay below the target, which is then recorded as not met.
- Collections larger than memory: `vectors` may be a read-only `np.memmap` (e.g. `np.load(path, mmap_mode="r")`);
  it is only ever read in blocks (checks, exact search, adding), and only the training sample and the
  held-out queries are copied into memory.
- IVF quantizers (and PQ codebooks) are trained on a sample; nprobe is then raised until recall@10
  against exact search reaches `target_recall` on held-out queries (for ivf_pq_refine, nprobe is tuned for
  each k_factor in REFINE_K_FACTORS and the cheapest pair that reaches the target is kept). The measured
  recall goes into the index description, and so into the manifest.

Held-out queries are data vectors left out of the training sample and added to the index only after tuning,
unless the caller gives real queries (e.g. text latents). Re-tuning an updated IVF index, which already holds
everything, searches data vectors leave-one-out (the query's own vector is not counted). A parameter is
accepted when the recall's lower confidence bound (mean − 2 standard errors over the queries) reaches the
target, so fresh queries meet it too. Recall is tie-aware: a result counts when its true score reaches the
k-th exact score, so duplicate images cannot make a right answer wrong.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from mammut_search.index.vectors import VectorIndex, check_vectors, gpu_count, require_faiss
from mammut_search.index.vectors.exact import exact_knn
from mammut_search.index.vectors.kinds import KINDS, kind_named, refine_layout

log = logging.getLogger(__name__)

# Up to here exact search needs no training and answers within milliseconds on a CPU core; beyond it IVF is an
# order of magnitude faster at the target recall (benchmarks/RESULTS.md, "Vector search").
DEFAULT_EXACT_THRESHOLD = 100_000
# On a GPU, exact search reads the vectors at memory bandwidth, so it stays the choice up to far larger
# collections (an estimate from bandwidth, see benchmarks/RESULTS.md).
GPU_EXACT_THRESHOLD = 10_000_000
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_MEMORY_BUDGET = 16 * 2**30  # bytes of float32 vectors held in memory before they are stored compressed
RECALL_K = 10
TUNING_QUERIES = 1000
CONFIDENCE_ERRORS = 2.0  # a setting meets the target when its recall minus 2 standard errors reaches it
PLATEAU_SLACK = 0.005  # below an unreachable target, settle for this much less than the best recall
REBUILD_GROWTH = 2.0  # rebuild an approximate index once the collection has grown or shrunk this much
TRAIN_POINTS_PER_LIST = 64
ADD_CHUNK = 65536
REFINE_K_FACTORS = (2, 4, 8, 16, 32, 64)  # candidates re-ranked, as multiples of k
REFINE_COST = 8  # a re-ranked candidate costs about as much as scanning this many coarse codes


def default_exact_threshold(use_gpu: bool | None = None) -> int:
    """Vectors up to which exact search is chosen: more on a GPU (when FAISS has one and it is not refused)."""
    return GPU_EXACT_THRESHOLD if gpu_count() and use_gpu is not False else DEFAULT_EXACT_THRESHOLD


def build_vector_index(vectors: np.ndarray, ids: np.ndarray, *, kind: str = "auto",
                       exact_threshold: int | None = None, target_recall: float = DEFAULT_TARGET_RECALL,
                       memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET, queries: np.ndarray | None = None,
                       use_gpu: bool | None = None, seed: int = 0, progress: bool = False,
                       nlist: int | None = None) -> VectorIndex:
    """A VectorIndex of `vectors` (n d, unit norm) under `ids` (n int64): exact below `exact_threshold`
    (default: default_exact_threshold, which depends on the device), else approximate with search parameters
    tuned to `target_recall` (recall@10 against exact search). IVF k-means runs on the GPU when FAISS has one.

    kind: "auto", "flat", "ivf_flat", "ivf_sq8", "ivf_pq", or "ivf_pq_refine". queries: optional real
    queries (q d) to tune on (e.g. text latents; default: up to 1000 data vectors held out of training and
    tuning).
    nlist: IVF lists (default: ivf_list_count); fewer lists train and add faster (k-means and assignment
    cost grow with nlist) but scan more vectors per query at a given recall.
    """
    require_faiss()
    started = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    check_vectors(vectors, ids)
    if vectors.shape[1] < 1:
        raise ValueError("vectors need at least one dimension")
    _warn_if_not_unit(vectors)
    count, dim = vectors.shape
    exact_threshold = default_exact_threshold(use_gpu) if exact_threshold is None else exact_threshold
    if kind == "auto":
        kind = choose_kind(count, dim, exact_threshold=exact_threshold, memory_budget_bytes=memory_budget_bytes)
    if not kind_named(kind).exact and count < 2 * RECALL_K:
        kind = "flat"  # too few vectors to train or to measure anything; exact is also fastest here
    if kind_named(kind).exact:
        faiss_index, facts = KINDS[kind].make(dim, count)
        index = VectorIndex(faiss_index, facts, use_gpu=use_gpu)
        _add_in_chunks(index, vectors, ids, np.ones(len(ids), bool), progress)
    else:
        index = _build_approximate(kind, vectors, ids, queries=queries, target_recall=target_recall,
                                   memory_budget_bytes=memory_budget_bytes, use_gpu=use_gpu, seed=seed,
                                   progress=progress, nlist=nlist)
    index.describe(metric="inner_product", built_with=count, build_seconds=round(time.perf_counter() - started, 3))
    log.info("vector index: %s", index.description)
    return index


def _build_approximate(kind: str, vectors: np.ndarray, ids: np.ndarray, *, queries: np.ndarray | None,
                       target_recall: float, memory_budget_bytes: int, use_gpu: bool | None, seed: int,
                       progress: bool, nlist: int | None = None) -> VectorIndex:
    """Train, add and tune. Without given queries, some data vectors are held out: not trained on, and added
    only after the search parameters were tuned with them as queries against the rest."""
    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(ids), bool)
    if queries is None:
        held_out[_query_rows(len(ids), rng)] = True
    faiss_index, facts = _train(kind, vectors, _training_rows(kind, ~held_out, rng, nlist), seed=seed,
                                memory_budget_bytes=memory_budget_bytes, nlist=nlist,
                                on_gpu=bool(gpu_count()) and use_gpu is not False)
    index = VectorIndex(faiss_index, {"exact": False, **facts}, use_gpu=use_gpu)
    _add_in_chunks(index, vectors, ids, ~held_out, progress)
    truth = ground_truth(vectors, ids, queries=vectors[held_out] if queries is None else queries,
                         candidates=~held_out, progress=progress)
    tune_search_params(index, truth, target_recall=target_recall, progress=progress)
    if queries is None:
        index.add(vectors[held_out], ids[held_out])
        index.describe(recall_query_source="held-out data vectors")
    return index


def choose_kind(count: int, dim: int, *, exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
                memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET) -> str:
    """flat up to exact_threshold vectors; beyond, ivf_flat, or the compressed ivf_sq8 / ivf_pq_refine / ivf_pq
    when the raw float32 vectors (or their 8-bit form) exceed the memory budget."""
    if count <= exact_threshold:
        return "flat"
    if count * dim * 4 <= memory_budget_bytes:
        return "ivf_flat"
    if count * dim <= memory_budget_bytes:
        return "ivf_sq8"
    return "ivf_pq_refine" if refine_layout(count, dim, memory_budget_bytes) else "ivf_pq"


def update_vector_index(index: VectorIndex, *, add_vectors: np.ndarray | None = None,
                        add_ids: np.ndarray | None = None, remove_ids: np.ndarray | None = None,
                        exact_threshold: int | None = None,
                        target_recall: float = DEFAULT_TARGET_RECALL,
                        memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET, seed: int = 0,
                        progress: bool = False) -> VectorIndex:
    """Apply an incremental update (removals, then additions; untouched vectors stay bit-identical), then keep
    the index fit: rebuild it when its kind no longer suits the new size or an approximate index has grown or
    shrunk REBUILD_GROWTH-fold since it was built, else re-tune an IVF-Flat index's nprobe to `target_recall`.
    Compressed indexes (ivf_sq8, ivf_pq, ivf_pq_refine) are only updated: their stored vectors are not the
    originals.
    Returns the index (the same object, or a rebuilt one)."""
    if remove_ids is not None and len(remove_ids):
        index.remove(remove_ids)
    if add_vectors is not None and len(add_vectors):
        index.add(add_vectors, add_ids)
    count, kind = index.ntotal, index.kind
    use_gpu = index.description.get("on_gpu") or None
    exact_threshold = default_exact_threshold(use_gpu) if exact_threshold is None else exact_threshold
    wanted = choose_kind(count, index.dim, exact_threshold=exact_threshold, memory_budget_bytes=memory_budget_bytes)
    built_with = max(int(index.description.get("built_with", count)), 1)
    drifted = not (built_with / REBUILD_GROWTH <= count <= built_with * REBUILD_GROWTH)
    if KINDS[kind].compressed:  # its decoded vectors are not the originals: measuring on them would flatter it
        if drifted or wanted != kind:
            log.warning("the %s index now holds %d vectors (trained on a collection of %d): its compressed "
                        "vectors cannot retrain it; rebuild the index from the images for the best recall",
                        kind, count, built_with)
        return index
    if (kind == "flat") != (wanted == "flat") or (kind != "flat" and drifted):
        new_kind = wanted if kind == "flat" or wanted == "flat" else kind  # flat <-> approximate follows the size
        log.info("rebuilding the vector index as %s: %d vectors, was %s built for %d", new_kind, count, kind,
                 built_with)
        ids = index.ids()
        return build_vector_index(index.reconstruct(ids), ids, kind=new_kind, exact_threshold=exact_threshold,
                                  target_recall=target_recall, memory_budget_bytes=memory_budget_bytes,
                                  use_gpu=use_gpu, seed=seed, progress=progress)
    if KINDS[kind].tuned and KINDS[kind].trains and count >= 2 * RECALL_K:
        ids = index.ids()
        truth = ground_truth(index.reconstruct(ids), ids, query_rows=_query_rows(count, np.random.default_rng(seed)),
                             progress=progress)
        tune_search_params(index, truth, target_recall=target_recall, progress=progress)
    return index


# ----- recall -----

@dataclass
class GroundTruth:
    """Exact answers to the tuning queries: what an approximate search is measured against."""

    queries: np.ndarray  # (q d)
    own_ids: np.ndarray  # (q) the id each query was taken from (left out of its answers), or -1
    kth_scores: np.ndarray  # (q) exact score of the k-th neighbour
    vectors: np.ndarray  # (n d) the indexed vectors, to score approximate answers exactly
    sorted_ids: np.ndarray  # (n) ids sorted, with `order` mapping back to rows of `vectors`
    order: np.ndarray
    k: int


def ground_truth(vectors: np.ndarray, ids: np.ndarray, *, queries: np.ndarray | None = None,
                 query_rows: np.ndarray | None = None, candidates: np.ndarray | None = None, k: int = RECALL_K,
                 progress: bool = False) -> GroundTruth:
    """Exact top-k scores of real `queries`, or of the data vectors at `query_rows` with each one's own vector
    left out, among the rows of `vectors` where `candidates` (n bool) is true (default: all). No copy of
    `vectors` is made: it is scanned in blocks."""
    if (queries is None) == (query_rows is None):
        raise ValueError("give either queries or query_rows")
    if query_rows is not None:
        queries, own_ids = vectors[query_rows], ids[query_rows]
    else:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        own_ids = np.full(len(queries), -1, np.int64)
    if progress and len(vectors) * len(queries) > 1 << 30:
        log.info("exact search of %d queries over %d vectors", len(queries), len(vectors))
    scores, _ = exact_knn(vectors, queries, k, allowed=candidates,
                          exclude_rows=None if query_rows is None else np.asarray(query_rows, np.int64))
    order = np.argsort(ids, kind="stable")
    return GroundTruth(queries, own_ids, scores[:, k - 1], vectors, ids[order], order, k)


def measure_recall(index: VectorIndex, truth: GroundTruth, *, search_params: dict[str, int] | None = None) -> float:
    """Tie-aware recall@k of `index` on the ground truth's queries (1.0: every answer as good as exact)."""
    return float(recall_per_query(index, truth, search_params=search_params).mean())


def recall_per_query(index: VectorIndex, truth: GroundTruth, *,
                     search_params: dict[str, int] | None = None) -> np.ndarray:
    """Each query's share (q) of its k answers that score as high as the exact k-th neighbour."""
    k = truth.k
    _, found = index.search(truth.queries, k + 1, search_params=search_params)
    found = _without(found, found, truth.own_ids[:, None], k)  # (q k)
    valid = found >= 0
    rows = truth.order[np.searchsorted(truth.sorted_ids, np.where(valid, found, truth.sorted_ids[0]))]
    true_scores = np.einsum("qd,qkd->qk", truth.queries, truth.vectors[rows])  # (q k)
    tolerance = 1e-5 * np.maximum(1.0, np.abs(truth.kth_scores))[:, None]  # float summation order differs
    hits = valid & (true_scores >= truth.kth_scores[:, None] - tolerance)
    return hits.sum(axis=1) / k


def tune_search_params(index: VectorIndex, truth: GroundTruth, *, target_recall: float = DEFAULT_TARGET_RECALL,
                       progress: bool = False) -> dict[str, Any]:
    """Set the index's nprobe to the smallest value whose recall@10 on `truth` reaches
    `target_recall` with confidence, and record the measurement in its description; returns what was recorded."""
    kind = KINDS[index.kind]
    if not kind.tuned:
        return {}
    if len(kind.tuned) > 1:  # nprobe and k_factor of a refined index
        return _tune_refined(index, truth, target_recall=target_recall, progress=progress)
    (name,) = kind.tuned
    low, high = kind.tuning_range(None, index.description)
    measured: dict[int, tuple[float, float]] = {}  # value -> (mean recall, its standard error)
    value = _tune_one(index, truth, name, low, high, measured, target_recall=target_recall, progress=progress)
    curve = {str(v): [round(m, 4), round(e, 4)] for v, (m, e) in sorted(measured.items())}
    return _record_tuning(index, truth, {name: value}, measured[value], curve, target_recall)


def _tune_one(index: VectorIndex, truth: GroundTruth, name: str, low: int, high: int,
              measured: dict[int, tuple[float, float]], *, fixed: dict[str, int] | None = None,
              target_recall: float, progress: bool, stop_at_plateau: bool = False) -> int:
    """The smallest value of search parameter `name` in [low, high] (with the `fixed` others) whose recall
    reaches `target_recall` with confidence, or, when none does, the cheapest one near the best recall.
    `measured` collects value -> (mean recall, standard error). stop_at_plateau: stop raising the value once
    doubling it no longer raises the recall by more than its standard error."""

    def bound(value: int) -> float:
        """Lower confidence bound of the recall at `value`."""
        if value not in measured:
            per_query = recall_per_query(index, truth, search_params={**(fixed or {}), name: value})
            measured[value] = (float(per_query.mean()), float(per_query.std() / math.sqrt(len(per_query))))
        mean, error = measured[value]
        return mean - CONFIDENCE_ERRORS * error

    def flat(previous: int, value: int) -> bool:
        return stop_at_plateau and measured[value][0] - measured[previous][0] <= measured[value][1]

    with tqdm(desc=f"tuning {name}", unit="try", disable=not progress) as bar:
        tried = [low]  # doubling until the target is met (or the search is exhaustive) brackets the answer
        while tried[-1] < high and bound(tried[-1]) < target_recall:
            tried.append(min(tried[-1] * 2, high))
            bar.update()
            if bound(tried[-1]) < target_recall and flat(tried[-2], tried[-1]):
                break
        # a compressed index may never reach the target: then take the cheapest value near its best recall
        best = bound(tried[-1])
        goal = target_recall if best >= target_recall else best - PLATEAU_SLACK
        value = next(v for v in tried if bound(v) >= goal)
        below = tried[tried.index(value) - 1] if value != low else value
        while below + 1 < value:  # bisection: the smallest value that reaches the goal
            middle = (below + value) // 2
            if bound(middle) >= goal:
                value = middle
            else:
                below = middle
            bar.update()
    return value


def _tune_refined(index: VectorIndex, truth: GroundTruth, *, target_recall: float,
                  progress: bool) -> dict[str, Any]:
    """nprobe tuned for each k_factor (smallest first); keeps the cheapest pair that reaches the target (cost:
    coarse codes scanned plus REFINE_COST per re-ranked candidate), or the pair with the best recall."""
    nlist = int(index.description["nlist"])
    results: list[tuple[dict[str, int], tuple[float, float]]] = []  # (params, (mean recall, standard error))

    def cost(result: tuple[dict[str, int], tuple[float, float]]) -> float:
        """Rough work of one search: coarse codes scanned, plus REFINE_COST per re-ranked candidate."""
        return result[0]["nprobe"] * index.ntotal / nlist + REFINE_COST * result[0]["k_factor"] * RECALL_K

    curve: dict[str, list[float]] = {}
    for k_factor in REFINE_K_FACTORS:
        measured: dict[int, tuple[float, float]] = {}
        nprobe = _tune_one(index, truth, "nprobe", 1, nlist, measured, fixed={"k_factor": k_factor},
                           target_recall=target_recall, progress=progress, stop_at_plateau=True)
        curve.update({f"nprobe={v},k_factor={k_factor}": [round(m, 4), round(e, 4)]
                      for v, (m, e) in sorted(measured.items())})
        results.append(({"nprobe": nprobe, "k_factor": k_factor}, measured[nprobe]))
        met = [r for r in results if _meets(r[1], target_recall)]
        if met and not _meets(results[-1][1], target_recall):
            break  # a larger k_factor that no longer reaches the target will not be cheaper
        if len(met) >= 2 and cost(met[-1]) > cost(met[-2]):
            break  # more candidates no longer save enough probes
    met = [r for r in results if _meets(r[1], target_recall)]
    if not met:  # the target is out of reach: the cheapest pair near the best recall
        best = max(_bound(recall) for _, recall in results)
        met = [r for r in results if _bound(r[1]) >= best - PLATEAU_SLACK]
    params, recall = min(met, key=cost)
    return _record_tuning(index, truth, params, recall, curve, target_recall)


def _bound(recall: tuple[float, float]) -> float:
    """Lower confidence bound of a (mean recall, standard error) measurement."""
    mean, error = recall
    return mean - CONFIDENCE_ERRORS * error


def _meets(recall: tuple[float, float], target_recall: float) -> bool:
    return _bound(recall) >= target_recall


def _record_tuning(index: VectorIndex, truth: GroundTruth, params: dict[str, int], recall: tuple[float, float],
                   curve: dict[str, list[float]], target_recall: float) -> dict[str, Any]:
    """Set the chosen search parameters and record the measurement in the index's description."""
    achieved, error = recall
    met = _meets(recall, target_recall)
    if not met:
        best = max(mean for mean, _ in curve.values())
        log.warning("%s index reaches recall@%d %.3f at most (%.3f at %s), below the target %.2f", index.kind,
                    RECALL_K, best, achieved, ", ".join(f"{k}={v}" for k, v in params.items()), target_recall)
    facts = {"params": params, "recall_at_10": round(achieved, 4), "recall_stderr": round(error, 4),
             "recall_target": target_recall, "recall_target_met": met, "recall_queries": len(truth.queries),
             "recall_query_source": "data, leave-one-out" if (truth.own_ids >= 0).any() else "given",
             "recall_measured_at": index.ntotal, "recall_curve": curve}
    index.describe(**facts)
    return facts


# ----- building -----

def _train(kind: str, vectors: np.ndarray, rows: np.ndarray, *, seed: int, memory_budget_bytes: int,
           nlist: int | None = None, on_gpu: bool = False) -> tuple[Any, dict[str, Any]]:
    """An empty, trained FAISS index of `kind` and the facts about it worth recording."""
    chosen = kind_named(kind)
    count, dim = vectors.shape
    nlist = min(nlist, len(rows)) if nlist else ivf_list_count(count, len(rows))
    index, facts = chosen.make(dim, count, nlist=nlist, memory_budget_bytes=memory_budget_bytes, seed=seed)
    if not chosen.trains:
        return index, facts
    sample = np.ascontiguousarray(vectors[rows])
    log.info("training %s (nlist=%d) on %d of %d vectors%s", kind, nlist, len(sample), count,
             " on the GPU" if on_gpu else "")
    index = chosen.train(index, sample, on_gpu=on_gpu)
    facts.update(trained_on=len(sample), trained_on_gpu=on_gpu)
    return index, facts


def ivf_list_count(count: int, train_points: int | None = None) -> int:
    """Inverted lists for `count` vectors: a power of two near 4·sqrt(n), with ≥ 39 training points per list."""
    target = 4 * math.sqrt(count)
    nlist = 2 ** max(0, round(math.log2(max(target, 1))))
    most = max(1, min(count if train_points is None else train_points, count) // 39, 1)
    while nlist > min(most, 65536):
        nlist //= 2
    return int(nlist)


def _add_in_chunks(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray,
                   progress: bool) -> None:
    """Add the vectors where `rows` (n bool) is true, a block at a time (no copy of them all)."""
    with tqdm(total=int(rows.sum()), desc="adding vectors", unit="vec", disable=not progress) as bar:
        for start in range(0, len(ids), ADD_CHUNK):
            chosen = rows[start:start + ADD_CHUNK]
            index.add(vectors[start:start + ADD_CHUNK][chosen], ids[start:start + ADD_CHUNK][chosen])
            bar.update(int(chosen.sum()))


def _query_rows(count: int, rng: np.random.Generator) -> np.ndarray:
    """Rows held out as tuning queries: up to TUNING_QUERIES, at most a tenth of the data."""
    size = max(1, min(TUNING_QUERIES, count // 10))
    return np.sort(rng.choice(count, size=size, replace=False))


def _training_rows(kind: str, allowed: np.ndarray, rng: np.random.Generator,
                   nlist: int | None = None) -> np.ndarray:
    """Rows the quantizer is trained on: a sample of the `allowed` rows (the held-out queries are not)."""
    if not KINDS[kind].trains:
        return np.zeros(0, np.int64)
    pool = np.flatnonzero(allowed)
    wanted = TRAIN_POINTS_PER_LIST * (nlist or ivf_list_count(len(allowed)))
    wanted = max(wanted, KINDS[kind].min_training_points)
    return np.sort(rng.choice(pool, size=min(wanted, len(pool)), replace=False))


def _without(values: np.ndarray, keys: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k `values` whose `keys` differ from the row's `excluded` key (left-packed)."""
    keep = keys != excluded  # (q m)
    keep &= np.cumsum(keep, axis=1) <= k
    fill = -1 if values.dtype.kind == "i" else -np.inf
    out = np.full((len(values), k), fill, values.dtype)
    rows, positions = np.nonzero(keep)
    out[rows, np.cumsum(keep, axis=1)[keep] - 1] = values[rows, positions]
    return out


def _warn_if_not_unit(vectors: np.ndarray) -> None:
    sample = vectors[:: max(1, len(vectors) // 1000)]
    if len(sample) and np.abs(np.linalg.norm(sample, axis=1) - 1).max() > 1e-3:
        log.warning("vectors are not unit-norm: inner-product search will not rank by cosine similarity")
