"""The one exact k-NN: the true top k by inner product, in blocks and chunks, with masks and leave-one-out."""

import numpy as np
import pytest

from mammut_search.index.vectors import exact
from mammut_search.index.vectors.exact import exact_knn


def brute_force(vectors, queries, k, allowed=None, exclude_rows=None):
    scores = queries @ vectors.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    if exclude_rows is not None:
        for q, row in enumerate(exclude_rows):
            if row >= 0:
                scores[q, row] = -np.inf
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


@pytest.mark.parametrize("queries", [1, 7])
@pytest.mark.parametrize("block_scores", [1 << 25, 3000])  # one block, or many
def test_exact_knn_is_the_true_top_k(monkeypatch, queries, block_scores):
    monkeypatch.setattr(exact, "BLOCK_SCORES", block_scores)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20_011, 16)).astype(np.float32)  # many chunks, the last one short
    q = rng.standard_normal((queries, 16)).astype(np.float32)
    allowed = rng.random(len(vectors)) > 0.3
    exclude = rng.integers(0, len(vectors), queries)
    exclude[0] = -1
    for kwargs in ({}, {"allowed": allowed, "exclude_rows": exclude}):
        scores, rows = exact_knn(vectors, q, 10, **kwargs)
        want_scores, want_rows = brute_force(vectors, q, 10, **kwargs)
        assert np.array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_fewer_candidates_than_k_fill_with_minus_one():
    vectors = np.eye(3, dtype=np.float32)
    scores, rows = exact_knn(vectors, vectors[:1], 5, allowed=np.array([True, False, True]))
    assert rows.tolist() == [[0, 2, -1, -1, -1]]
    assert scores[0, 0] == 1 and np.isneginf(scores[0, 2:]).all()


@pytest.mark.parametrize("n, k", [(7, 10), (900, 10), (30_011, 10), (30_011, 700)])
@pytest.mark.parametrize("layout", ["shuffled", "sorted"])
def test_one_query_is_the_true_top_k_with_ties_to_the_lower_row(n, k, layout):
    """One query's own path (candidates above a bound from block maxima) against a stable brute-force sort, on
    small integer vectors: every score is exact in float32 and many are tied, at and across the k-th place."""
    rng = np.random.default_rng(n + k)
    vectors = rng.integers(-2, 3, (n, 8)).astype(np.float32)
    query = rng.integers(-2, 3, (1, 8)).astype(np.float32)
    if layout == "sorted":  # the best rows side by side at the end, as in a collection of near-duplicates
        vectors = vectors[np.argsort(vectors @ query[0], kind="stable")]
    allowed = rng.random(n) > 0.3
    few = np.zeros(n, bool)
    few[rng.integers(0, n, 3)] = True  # fewer allowed rows than k
    exclude = np.array([int(np.argmax(vectors @ query[0]))])
    for kwargs in ({}, {"allowed": allowed, "exclude_rows": exclude}, {"allowed": few}):
        scores, rows = exact_knn(vectors, query, k, **kwargs)
        want_scores, want_rows = brute_force(vectors, query, k, **kwargs)
        missing = k - want_rows.shape[1]  # fewer vectors than k
        want_scores = np.pad(want_scores, ((0, 0), (0, missing)), constant_values=-np.inf)
        want_rows = np.pad(want_rows, ((0, 0), (0, missing)))
        want_rows[np.isneginf(want_scores)] = -1
        assert np.array_equal(rows, want_rows) and np.array_equal(scores, want_scores)
