"""Hybrid search: the vector ranking and the keyword ranking (file names, folders, captions) of one text query
fused by reciprocal rank fusion (Cormack et al., SIGIR 2009): an image's score is the sum over the rankings that
hold it of 1 / (RRF_K + its rank there). An image found by both comes first; one found by either alone can still
reach the top, so a file named after the query's words is found even when its pixels do not show them."""

from __future__ import annotations

from typing import Sequence

RRF_K = 60  # the constant of the original paper; it damps the weight of the very first ranks
KEYWORD_CANDIDATES = 100  # keyword hits fused with the vector candidates
VECTOR_CANDIDATES = 50  # vector candidates fused with the keyword hits


def fuse(rankings: Sequence[Sequence[int]], k: int) -> list[tuple[int, float]]:
    """Rankings of ids, best first -> the best k (id, fused score), best first; ties keep first-seen order."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item_id in enumerate(ranking, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (RRF_K + rank)
    order = sorted(scores, key=lambda i: -round(scores[i], 12))  # stable: first-seen order among ties
    return [(i, scores[i]) for i in order[:k]]
