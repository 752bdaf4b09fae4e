"""Re-ranking by likelihood: the top candidates of a text query re-scored by log p(query | image), read through
the captioning pass from the decoder image tokens the index stores (no image is decoded).

combined score = latent similarity + weight * (log p(query | image) - baseline), both per token; the baseline
is the median over a few reference images of the index, so the lift says how much better than an arbitrary
image a candidate explains the query. The defaults and what they gain are in benchmarks/RESULTS.md
("Photo knowledge", "Re-ranking").
"""

from __future__ import annotations

import threading

import numpy as np

RERANK_BY_DEFAULT = False  # it helps on emoji styles and objects but not on photos (benchmarks/RESULTS.md)
RERANK_CANDIDATES = 50  # vector candidates re-scored by the decoder
RERANK_WEIGHT = 0.1
NO_TOKENS = ("this index stores no decoder image tokens, so it cannot be re-ranked; rebuild it with {command} "
             "(results are by similarity)")


def likelihood_lifts(model, tokens, text: str, ids: np.ndarray, reference_ids: np.ndarray,
                     lock: threading.RLock) -> np.ndarray:
    """Per candidate id: log p(text | image) per token minus its median over the reference images."""
    import torch

    wanted = np.concatenate([np.asarray(ids, np.int64), np.asarray(reference_ids, np.int64)])
    batch = torch.from_numpy(tokens.rows(wanted))
    with lock:  # one model call at a time
        scores = model.score_text_from_tokens(batch, [text] * len(wanted)).double().numpy()
    baseline = float(np.median(scores[len(ids):])) if len(reference_ids) else float(np.median(scores))
    return scores[:len(ids)] - baseline


def rerank(model, gen, text: str, ids: np.ndarray, similarities: np.ndarray, weight: float,
           lock: threading.RLock) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """Candidates `ids` (best first, from the generation `gen` whose tokens are stored) and their similarities
    -> (ids by combined score, combined scores, lift by id)."""
    lifts = likelihood_lifts(model, gen.store.tokens, text, ids, gen.reference_ids, lock)
    combined = similarities[:len(ids)] + weight * lifts
    order = sorted(range(len(combined)), key=lambda i: (-round(float(combined[i]), 6), i))
    return ids[order], combined[order], dict(zip(ids.tolist(), lifts.tolist()))
