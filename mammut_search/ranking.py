"""The steps a Searcher ranks with, on one generation of the index: vector top-k, keyword hits, fusion, and the
hits as the user sees them (each with its similarity, likelihood lift and the words it matched)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mammut_search import hybrid
from mammut_search.index.keywords import KeywordHit
from mammut_search.results import SearchHit


def nearest(gen, latent: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Vector top-k of one latent -> (ids, similarities), missing slots dropped."""
    query = np.ascontiguousarray(latent, dtype=np.float32).reshape(1, -1)
    scores, ids = gen.store.vectors.search(query, min(k, len(gen.ok_ids)))  # thread-safe
    keep = ids[0] >= 0
    return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float64)


def keyword_hits(gen, text: str, k: int) -> dict[int, KeywordHit]:
    """The indexed images whose names, folders or captions hold the text's words, best first ({} for an index
    without a keyword index)."""
    keywords = gen.store.keywords
    if keywords is None or not text:
        return {}
    return {h.id: h for h in keywords.search(text, max(k, hybrid.KEYWORD_CANDIDATES)) if h.id in gen.ok_id_set}


def ranked(ids: np.ndarray, scores: np.ndarray, words: dict[int, KeywordHit], k: int) -> list[tuple[int, float]]:
    """The best k (id, score): the vector ranking alone, or fused with the keyword hits when there are any."""
    if words:
        return hybrid.fuse([ids.tolist(), list(words)], k)
    return list(zip(ids[:k].tolist(), np.asarray(scores)[:k].tolist()))


def make_hits(gen, latent: np.ndarray, ranking: list[tuple[int, float]], sim_of: dict[int, float], *,
              lift_of: dict[int, Any] | None = None, words: dict[int, KeywordHit] | None = None) -> list[SearchHit]:
    """(id, score) pairs, best first -> SearchHits with their similarity (from `sim_of`, the vector search's,
    else computed from the stored latent), likelihood lift and matched words."""
    missing = np.array([i for i, _ in ranking if i not in sim_of], np.int64)
    if len(missing):
        found = gen.store.vectors.reconstruct(missing) @ np.asarray(latent, np.float32).reshape(-1)
        sim_of = {**sim_of, **dict(zip(missing.tolist(), found.tolist()))}
    hits = []
    for rank, (item_id, score) in enumerate(ranking, start=1):
        row, lift, found = gen.store.item(item_id), (lift_of or {}).get(item_id), (words or {}).get(item_id)
        hits.append(SearchHit(rank, int(item_id), row["path"], round(float(score), 6), row["caption"],
                              round(float(sim_of[item_id]), 6), None if lift is None else round(float(lift), 6),
                              found.name_words if found else (), found.caption_words if found else ()))
    return hits


def combine(latents: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Σ weight · latent/|latent|, made unit norm again (1 l): query arithmetic on the latents. The weights are
    scaled by the largest first, which changes nothing but keeps huge ones from overflowing."""
    scale = max(abs(float(w)) for w in weights) or 1.0
    total = sum(w / scale * v.reshape(-1) / max(float(np.linalg.norm(v)), 1e-12) for v, w in zip(latents, weights))
    total = np.asarray(total, np.float32)
    return (total / max(float(np.linalg.norm(total)), 1e-12)).reshape(1, -1)


def vector_hits(gen, latent: np.ndarray, k: int, *, leave_out: int | None = None,
                min_similarity: float = -np.inf) -> list[SearchHit]:
    """The hits of a vector search alone (without `leave_out`, at least `min_similarity` similar)."""
    ids, sims = nearest(gen, latent, k + (leave_out is not None))
    keep = (ids != leave_out) & (sims >= min_similarity)
    pairs = list(zip(ids[keep][:k].tolist(), sims[keep][:k].tolist()))
    return make_hits(gen, latent, pairs, dict(pairs))
