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
