""""Nothing matches": whether a text query fits some indexed image better than queries unrelated to the
collection do, decided by a cutoff that belongs to the index.

The statistic (`match`) is the query's best similarity to any indexed image. The cutoff is calibrated on the
index itself when it is built or updated: words spread over the tokenizer's vocabulary, mostly unrelated to any
one collection, are run as queries, and the cutoff is the QUANTILE of their best similarities. A model or a
collection that shifts every similarity shifts the calibration words' with it. benchmarks/RESULTS.md, "Nothing
matches", says how the quantile was chosen (on the tuning lists of four collections, two of them for tuning
only), how the notice does on the held-out halves of the other two, and why the best similarity and not one of
the other statistics and likelihood ratios tried there.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

CALIBRATION_WORDS = 400  # queries unrelated to the collection
QUANTILE = 0.8
# 1: a margin over the candidates' usual words; its cutoffs mean nothing to this statistic. 2: calibrated with
# the query latents before MiniLM's own sentence embedding became their semantic part
VERSION = 3
NOTICE = ("nothing in the index seems to match this query; the closest images are shown, but they are probably "
          "not what you want")
TEXT_BATCH = 200


def vocabulary_words(tokenizer) -> list[str]:
    """The tokenizer's whole words (lower-case letters, 4 or more), sorted."""
    return tokenizer.whole_words()


def calibration_words(tokenizer, count: int = CALIBRATION_WORDS) -> list[str]:
    """`count` words spread evenly over the tokenizer's whole-word vocabulary, the same ones every time."""
    words = vocabulary_words(tokenizer)
    if len(words) <= count:
        return words
    return [words[i] for i in np.linspace(0, len(words) - 1, count).round().astype(np.int64)]


def encode_texts(model, texts: list[str]) -> np.ndarray:
    """Text latents (t l) in batches."""
    batches = [model.encode_text(texts[i:i + TEXT_BATCH]).numpy() for i in range(0, len(texts), TEXT_BATCH)]
    return np.concatenate(batches) if batches else np.zeros((0, model.latent_dim), np.float32)


# model -> (its weights' identity, the calibration words' latents): made once, e.g. by a build while it waits
# for its first decoded images, and used when the build calibrates its index at the end
_word_latents: "weakref.WeakKeyDictionary[Any, tuple[tuple, np.ndarray]]" = weakref.WeakKeyDictionary()


def calibration_latents(model) -> np.ndarray:
    """The latents (t l) of the calibration words under `model`, computed once per model and weights."""
    net = getattr(model, "net", None)
    identity = tuple((t.data_ptr(), t._version) for t in net.state_dict(keep_vars=True).values()) if net else ()
    known = _word_latents.get(model)
    if known is not None and known[0] == identity:
        return known[1]
    latents = np.ascontiguousarray(encode_texts(model, calibration_words(model.tokenizer)), np.float32)
    _word_latents[model] = (identity, latents)
    return latents


def match(similarities: np.ndarray) -> float:
    """A query's best similarity to an indexed image, from its candidates' similarities; -inf without any."""
    return round(float(np.max(similarities)), 6) if len(similarities) else float("-inf")


def calibrate(model, vectors) -> dict[str, Any]:
    """The manifest's `relevance` entry for an index whose VectorIndex is `vectors`: the QUANTILE of the
    matches that calibration words get on it; {} for an empty index or a vocabulary without such words."""
    if not vectors.ntotal:
        return {}
    latents = calibration_latents(model)  # one row per calibration word
    if not len(latents):
        return {}
    scores, ids = vectors.search(latents, 1)
    matches = [match(row_scores[row_ids >= 0]) for row_scores, row_ids in zip(scores, ids)]
    return {"version": VERSION, "cutoff": round(float(np.quantile(matches, QUANTILE)), 6),
            "quantile": QUANTILE, "queries": len(latents)}


def cutoff(manifest, fixed: float | None = None) -> float | None:
    """The cutoff in force: `fixed` if given, else the index's calibration; None when there is neither (an index
    calibrated for another statistic, or whose entry is not a finite number, counts as none until it is updated)."""
    if fixed is not None:
        return fixed
    entry = manifest.relevance
    value = entry.get("cutoff") if entry.get("version") == VERSION else None
    return float(value) if _is_similarity(value) else None  # a hand-edited or damaged entry counts as none


def _is_similarity(value: Any) -> bool:
    """Whether a manifest value is a usable cosine similarity: a finite number (true and false are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
