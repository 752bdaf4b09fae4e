""""Nothing matches": whether a text query fits any indexed image better than queries unrelated to the
collection do, decided by a cutoff that belongs to the index.

The statistic (`match`) compares each of a query's top candidates with what ordinary words reach for that same
image: the query's similarity to the candidate minus the candidate's mean similarity to its nearest reference
words (words of the tokenizer's vocabulary); `match` is the best of these over the candidates. The cutoff is
calibrated on the index itself when it is built or updated: other vocabulary words, mostly unrelated to any one
collection, are run as queries, and the cutoff is a high quantile of their matches (benchmarks/RESULTS.md,
"Nothing matches", says how the quantile was chosen and how the notice does on held-out concept lists of two
collections). A model or a collection that shifts every similarity shifts the calibration queries' matches
with it.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

CANDIDATES = 50  # a query's top candidates compared with their usual words
NEIGHBOURS = 10  # reference words that make a candidate's usual similarity
REFERENCE_WORDS = 800
CALIBRATION_WORDS = 400  # queries unrelated to the collection, taken between the reference words
QUANTILE = 0.85
VERSION = 1
NOTICE = ("nothing in the index seems to match this query; the closest images are shown, but they are probably "
          "not what you want")
TEXT_BATCH = 200


def vocabulary_words(tokenizer) -> list[str]:
    """The tokenizer's whole words (lower-case letters, 4 or more), sorted."""
    return sorted(w for w in tokenizer.hf.get_vocab() if re.fullmatch(r"[a-z]{4,}", w))


def reference_words(tokenizer, count: int = REFERENCE_WORDS) -> list[str]:
    """`count` words spread evenly over the tokenizer's whole-word vocabulary, the same ones every time (every
    other word of a vocabulary too small for both these and the calibration words)."""
    words = vocabulary_words(tokenizer)
    if len(words) < count + CALIBRATION_WORDS:
        return words[0::2]
    return [words[i] for i in np.linspace(0, len(words) - 1, count).round().astype(np.int64)]


def calibration_words(tokenizer, count: int = CALIBRATION_WORDS) -> list[str]:
    """`count` vocabulary words that are not reference words, spread evenly, the same ones every time."""
    taken = set(reference_words(tokenizer))
    words = [w for w in vocabulary_words(tokenizer) if w not in taken]
    if len(words) <= count:
        return words
    return [words[i] for i in np.linspace(0, len(words) - 1, count).round().astype(np.int64)]


def encode_texts(model, texts: list[str]) -> np.ndarray:
    """Text latents (t l) in batches."""
    batches = [model.encode_text(texts[i:i + TEXT_BATCH]).numpy() for i in range(0, len(texts), TEXT_BATCH)]
    return np.concatenate(batches) if batches else np.zeros((0, model.latent_dim), np.float32)


def match(vectors, references: np.ndarray, ids: np.ndarray, similarities: np.ndarray) -> float:
    """max over candidates `ids` of (their similarity to the query - their mean similarity to their NEIGHBOURS
    nearest reference words (w l)); -inf without candidates."""
    if not len(ids):
        return float("-inf")
    latents = vectors.reconstruct(np.asarray(ids, np.int64)).astype(np.float32)
    neighbours = min(NEIGHBOURS, len(references))
    usual = (np.sort(latents @ references.T, axis=1)[:, -neighbours:].mean(axis=1) if neighbours
             else np.zeros(len(ids)))
    return round(float(np.max(np.asarray(similarities) - usual)), 6)


def calibrate(model, vectors) -> dict[str, Any]:
    """The manifest's `relevance` entry for an index whose VectorIndex is `vectors`: the QUANTILE of the
    matches that calibration words get on it; {} for an empty index or a vocabulary without such words."""
    queries = calibration_words(model.tokenizer)
    if not vectors.ntotal or not queries:
        return {}
    references = encode_texts(model, reference_words(model.tokenizer))
    latents = encode_texts(model, queries)
    scores, ids = vectors.search(np.ascontiguousarray(latents, np.float32), min(CANDIDATES, vectors.ntotal))
    matches = [match(vectors, references, row_ids[row_ids >= 0], row_scores[row_ids >= 0])
               for row_scores, row_ids in zip(scores, ids)]
    return {"version": VERSION, "cutoff": round(float(np.quantile(matches, QUANTILE)), 6),
            "quantile": QUANTILE, "queries": len(queries)}


class RelevanceCutoff:
    """The "nothing matches" decision of one Searcher: the index's calibrated cutoff (or a given one)."""

    def __init__(self, model, lock: threading.RLock, cutoff: float | None = None):
        self.model = model
        self.fixed = cutoff
        self._lock = lock
        self._references: np.ndarray | None = None

    def cutoff(self, manifest) -> float | None:
        """The cutoff in force: the given one, else the index's calibration; None when there is neither."""
        if self.fixed is not None:
            return self.fixed
        entry = manifest.relevance
        return entry.get("cutoff") if entry.get("version") == VERSION else None

    def match(self, vectors, ids: np.ndarray, similarities: np.ndarray) -> float:
        """The query's match (see the module's docstring) from its top candidates."""
        return match(vectors, self.references(), ids[:CANDIDATES], similarities[:CANDIDATES])

    def references(self) -> np.ndarray:
        """The reference words' latents (w l), encoded once."""
        with self._lock:
            if self._references is None:
                self._references = encode_texts(self.model, reference_words(self.model.tokenizer))
            return self._references
