"""Exact k nearest neighbours by inner product: the one brute-force search. Flat indexes answer with it on the
CPU, and approximate indexes are tuned and measured against it.

It is a matrix product and a partial sort, in blocks of rows so that the scores in memory stay bounded (the
vectors may be a memmap larger than memory). On the 2-core reference machine FAISS's own flat search was
slower than this (benchmarks/RESULTS.md, "Exact search"): one query is a matrix-vector product that reads
the vectors once at memory speed, and a batch is one BLAS matrix product. One query has a lean path of its
own (`_one_query`): the product, then a top-k over the few rows a bound from block maxima lets through.
"""

from __future__ import annotations

import numpy as np

BLOCK_SCORES = 1 << 25  # scores held at once (128 MB of float32): a block has BLOCK_SCORES // queries rows
CHUNK = 256  # columns per chunk when looking for the best scores of a batch (see _top)
BLOCKS, MIN_BLOCK = 256, 1024  # one query's scores: about BLOCKS blocks of at least MIN_BLOCK (see _best_rows)
SORT_AT_MOST = 1024  # one query's candidates sorted whole; more are partitioned first


def exact_knn(vectors: np.ndarray, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None,
              exclude_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `vectors` (n d) by inner product with each query (q d) -> (scores (q k) float32,
    best first; rows (q k) int64). Slots beyond the candidates hold row -1 and score -inf.

    allowed: (n) bool, the rows that may be answers (default all); exclude_rows: (q) a row left out of each
    query's answers (its own vector, for leave-one-out), or -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    q, n = len(queries), len(vectors)
    if q == 1 and n <= BLOCK_SCORES:
        return _one_query(vectors, queries[0], k, allowed, -1 if exclude_rows is None else int(exclude_rows[0]))
    best_scores = np.full((q, 0), -np.inf, np.float32)
    best_rows = np.zeros((q, 0), np.int64)
    block = max(k, BLOCK_SCORES // max(q, 1))
    for start in range(0, n, block):
        part = vectors[start:start + block]
        if q == 1:  # (more vectors than one block) a matrix-vector product: BLAS reads the rows once
            scores = np.dot(part, queries[0])[None, :]
        else:
            scores = np.dot(queries, part.T)  # (q b)
        if allowed is not None:
            scores[:, ~allowed[start:start + len(part)]] = -np.inf
        if exclude_rows is not None:
            inside = (exclude_rows >= start) & (exclude_rows < start + len(part))
            scores[np.flatnonzero(inside), exclude_rows[inside] - start] = -np.inf
        rows = _top(scores, k)
        scores = np.take_along_axis(scores, rows, axis=1)
        if start == 0:
            best_scores, best_rows = scores, rows + start
        else:
            both_scores = np.concatenate([best_scores, scores], axis=1)
            both_rows = np.concatenate([best_rows, rows + start], axis=1)
            keep = _top(both_scores, k)
            best_scores = np.take_along_axis(both_scores, keep, axis=1)
            best_rows = np.take_along_axis(both_rows, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best_scores = np.take_along_axis(best_scores, order, axis=1).astype(np.float32, copy=False)
    best_rows = np.take_along_axis(best_rows, order, axis=1)
    best_rows[np.isneginf(best_scores)] = -1
    if best_scores.shape[1] < k:  # fewer vectors than k
        missing = k - best_scores.shape[1]
        best_scores = np.pad(best_scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        best_rows = np.pad(best_rows, ((0, 0), (0, missing)), constant_values=-1)
    return best_scores, best_rows


def _one_query(vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None,
               exclude_row: int) -> tuple[np.ndarray, np.ndarray]:
    """exact_knn for one query (d) whose n scores fit in one block; ties go to the lower row."""
    scores = np.dot(vectors, query)  # (n) a matrix-vector product: BLAS reads each vector once
    if allowed is not None:
        np.copyto(scores, -np.inf, where=~allowed)
    if exclude_row >= 0:
        scores[exclude_row] = -np.inf
    rows = _best_rows(scores, k)
    if len(rows) == k:
        return scores[rows][None, :], rows[None, :]
    best_scores = np.full((1, k), -np.inf, np.float32)
    best_rows = np.full((1, k), -1, np.int64)
    best_scores[0, :len(rows)] = scores[rows]
    best_rows[0, :len(rows)] = rows
    return best_scores, best_rows


def _best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k best finite scores (n) of one query, best first, ties to the lower row; fewer when fewer
    are finite.

    The scores are cut into blocks of consecutive rows; the k-th largest block maximum t is a lower bound of
    the k-th best score (k blocks hold a score >= t each), so only the rows >= t (on random vectors about
    k) are sorted. A few numpy calls, as each one costs microseconds when the caches are cold (a search
    follows the text encoder); faster than an argpartition of all of them (benchmarks/RESULTS.md, "Exact search").
    """
    n = len(scores)
    width = max(1, min(max(MIN_BLOCK, n // BLOCKS), n // (4 * k)))  # at least 4k blocks: t is tight
    whole = n // width
    threshold = -np.inf
    if whole >= k:
        maxima = scores[:whole * width].reshape(whole, width).max(axis=1)  # a view: no copy
        threshold = np.partition(maxima, whole - k)[whole - k]
    rows = np.flatnonzero(scores >= threshold if threshold > -np.inf else scores > threshold)  # ascending
    candidates = scores[rows]
    if len(rows) > SORT_AT_MOST:  # many passed (ties, few finite scores): keep those >= the k-th best
        kth = np.partition(candidates, len(rows) - k)[len(rows) - k]
        keep = candidates >= kth
        rows, candidates = rows[keep], candidates[keep]
    return rows[np.argsort(-candidates, kind="stable")[:k]]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k largest scores of each row (unordered); all columns when there are at most k.

    Partitioning every score is most of a batch's time, so the scores are cut into chunks of CHUNK columns
    first: the k true best of a row lie in the k chunks with the highest maxima (each of those maxima is at
    least the k-th best score, so a chunk outside them cannot hold a better one), and only those k·CHUNK
    scores are partitioned. The maxima are one pass at memory speed.
    """
    q, n = scores.shape
    if n <= k:
        return np.broadcast_to(np.arange(n), scores.shape).copy()
    chunks = -(-n // CHUNK)
    if chunks <= 4 * k:
        return np.argpartition(scores, n - k, axis=1)[:, -k:]
    whole = n // CHUNK
    maxima = np.empty((q, chunks), scores.dtype)
    maxima[:, :whole] = scores[:, :whole * CHUNK].reshape(q, whole, CHUNK).max(axis=2)  # a view: no copy
    if chunks > whole:
        maxima[:, whole] = scores[:, whole * CHUNK:].max(axis=1)
    best_chunks = np.argpartition(maxima, chunks - k, axis=1)[:, -k:]  # (q k)
    columns = (best_chunks[:, :, None] * CHUNK + np.arange(CHUNK)).reshape(q, k * CHUNK)
    beyond = columns >= n  # the last chunk may be short
    columns[beyond] = n - 1
    candidates = np.take_along_axis(scores, columns, axis=1)
    candidates[beyond] = -np.inf
    chosen = np.argpartition(candidates, k * CHUNK - k, axis=1)[:, -k:]
    return np.take_along_axis(columns, chosen, axis=1)
