"""Retrieval and caption metrics as pure functions: recall@k both ways, BLEU-4 and CIDEr-D.

Conventions (they follow CLIP_benchmark and coco-caption):
- The rank of the right item is 1 + the number of gallery items scored strictly higher than the
  best-scoring right item (optimistic on ties: an exact tie with a wrong item does not push the
  right item down). A query is a hit at k when its rank <= k.
- A query may have several right items (several images with the identical caption text, several
  captions of one image); the best-scoring one counts.
- text->image recall@k: share of captions whose image is among the top k images.
- image->text recall@k: share of images with at least one of their captions among the top k captions.
- BLEU-4: corpus-level, clipped n-gram counts summed over the corpus, uniform weights, brevity penalty
  against the reference length closest to each candidate (shorter on ties), no smoothing.
- CIDEr-D: as in the coco-caption paper and code: tf-idf n-gram vectors (n = 1..4) with document
  frequencies over the reference sets of the evaluated set, clipped candidate counts, a Gaussian length
  penalty (sigma 6), averaged over references and n, times 10; the corpus score is the mean over images.
- Text is lower-cased and split into words with punctuation removed (a simple stand-in for the PTB
  tokenizer used by coco-caption), so "A cat." and "a cat" are the same caption.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch

Targets = Sequence[Iterable[int]]

# At most this many query x gallery scores are held at once (256 MB of float32).
MAX_SCORES = 2 ** 26
CIDER_SIGMA = 6.0


# ----- retrieval -----

def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def retrieval_ranks(query_latents, gallery_latents, targets: Targets, *, chunk: int | None = None) -> np.ndarray:
    """1-based rank of the best right gallery item for each query, scoring by dot product (q) int64.

    query_latents (q d), gallery_latents (g d): tensors or arrays (unit norm gives cosine similarity);
    targets[i]: indices into the gallery that are right for query i (at least one).
    """
    queries, gallery = _as_tensor(query_latents).float(), _as_tensor(gallery_latents).float()
    gallery = gallery.to(queries.device)
    if len(targets) != queries.shape[0]:
        raise ValueError(f"got {len(targets)} target sets for {queries.shape[0]} queries")
    ranks = np.empty(queries.shape[0], dtype=np.int64)
    chunk = chunk or max(1, MAX_SCORES // max(1, gallery.shape[0]))
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start:start + chunk] @ gallery.T  # (c g)
        ranks[start:start + len(scores)] = ranks_from_scores(scores, targets[start:start + chunk])
    return ranks


def ranks_from_scores(scores, targets: Targets) -> np.ndarray:
    """1-based optimistic rank of the best right item in each row of a score matrix (q g) -> (q) int64."""
    scores = _as_tensor(scores).float()
    is_target = torch.zeros(scores.shape, dtype=torch.bool)
    for row, items in enumerate(targets):
        items = list(items)
        if not items:
            raise ValueError(f"query {row} has no right item; every query needs at least one")
        is_target[row, items] = True
    is_target = is_target.to(scores.device)
    best = scores.masked_fill(~is_target, float("-inf")).amax(dim=1, keepdim=True)  # (q 1)
    return ((scores > best).sum(dim=1) + 1).cpu().numpy().astype(np.int64)


def recall_from_ranks(ranks, ks: Iterable[int]) -> dict[str, float]:
    """Share of queries whose rank is <= k, for each k: {"R@1": ..., "R@5": ...}."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return {f"R@{k}": float("nan") for k in ks}
    return {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}


def recall_at_k(text_latents, image_latents, text_to_image: Targets, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Text->image recall@k: share of texts with a right image among the top k images."""
    return recall_from_ranks(retrieval_ranks(text_latents, image_latents, text_to_image), ks)


def image_to_text_recall(image_latents, text_latents, image_to_text: Targets,
                         ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Image->text recall@k: share of images with at least one of their texts among the top k texts."""
    return recall_from_ranks(retrieval_ranks(image_latents, text_latents, image_to_text), ks)


def recall_curve(ranks, max_k: int) -> np.ndarray:
    """Recall@k for k = 1..max_k (max_k) from 1-based ranks."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return np.full(max_k, np.nan)
    counts = np.bincount(np.clip(ranks, 1, max_k + 1), minlength=max_k + 2)[1:max_k + 1]
    return np.cumsum(counts) / ranks.size


def pair_targets(image_keys: Sequence, captions: Sequence[str]) -> tuple[list, list[str], list[set[int]], list[set[int]]]:
    """Pairs (image i, caption i) -> unique images, unique texts, text->image and image->text index sets.

    Identical caption texts become one text whose right images are all the images carrying it.
    """
    images = list(dict.fromkeys(image_keys))
    texts = list(dict.fromkeys(captions))
    image_index = {key: i for i, key in enumerate(images)}
    text_index = {text: i for i, text in enumerate(texts)}
    text_to_image: list[set[int]] = [set() for _ in texts]
    image_to_text: list[set[int]] = [set() for _ in images]
    for key, text in zip(image_keys, captions):
        text_to_image[text_index[text]].add(image_index[key])
        image_to_text[image_index[key]].add(text_index[text])
    return images, texts, text_to_image, image_to_text


# ----- caption quality -----

def tokenize(text: str) -> list[str]:
    """Lower-case words with punctuation removed."""
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _all_ngrams(words: Sequence[str], max_n: int = 4) -> Counter:
    counts = Counter()
    for n in range(1, max_n + 1):
        counts.update(_ngrams(words, n))
    return counts


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 of candidates[i] against references[i] (one or more strings each), in [0, 1]."""
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates for {len(references)} reference sets")
    matched, total = np.zeros(4), np.zeros(4)
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references):
        words = tokenize(candidate)
        ref_words = [tokenize(r) for r in refs]
        candidate_length += len(words)
        # closest reference length; the shorter one on ties
        reference_length += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for n in range(1, 5):
            counts = _ngrams(words, n)
            most_in_a_ref = Counter()
            for r in ref_words:
                most_in_a_ref |= _ngrams(r, n)  # element-wise max: clip by the most any one reference has
            matched[n - 1] += sum(min(c, most_in_a_ref[g]) for g, c in counts.items())
            total[n - 1] += sum(counts.values())
    if candidate_length == 0 or np.any(matched == 0):
        return 0.0
    log_precision = np.mean(np.log(matched / total))
    brevity = min(0.0, 1.0 - reference_length / candidate_length)
    return float(math.exp(log_precision + brevity))


def _tfidf(counts: Counter, document_frequency: Counter, log_documents: float) -> tuple[list[dict], np.ndarray]:
    """n-gram counts -> per-n tf-idf vectors and their norms."""
    vectors: list[dict] = [{} for _ in range(4)]
    for gram, tf in counts.items():
        # an n-gram absent from every reference set gets document frequency 1 (idf = log of documents)
        vectors[len(gram) - 1][gram] = tf * (log_documents - math.log(max(1.0, document_frequency[gram])))
    norms = np.array([math.sqrt(sum(v * v for v in vec.values())) for vec in vectors])
    return vectors, norms


def cider_d_per_item(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """CIDEr-D of each candidate against its references, document frequencies over all reference sets (i)."""
    if len(candidates) != len(references):
        raise ValueError(f"got {len(candidates)} candidates for {len(references)} reference sets")
    ref_words = [[tokenize(r) for r in refs] for refs in references]
    ref_counts = [[_all_ngrams(w) for w in refs] for refs in ref_words]
    document_frequency = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts))  # an n-gram counts once per reference set
    log_documents = math.log(max(1, len(references)))
    scores = np.zeros(len(candidates))
    for i, candidate in enumerate(candidates):
        words = tokenize(candidate)
        vec, norm = _tfidf(_all_ngrams(words), document_frequency, log_documents)
        total = np.zeros(4)
        for ref, counts in zip(ref_words[i], ref_counts[i]):
            ref_vec, ref_norm = _tfidf(counts, document_frequency, log_documents)
            penalty = math.exp(-((len(words) - len(ref)) ** 2) / (2 * CIDER_SIGMA ** 2))
            for n in range(4):
                overlap = sum(min(v, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, v in vec[n].items())
                if norm[n] and ref_norm[n]:
                    overlap /= norm[n] * ref_norm[n]
                total[n] += overlap * penalty
        scores[i] = 10.0 * total.mean() / max(1, len(ref_words[i]))
    return scores


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D: the mean over candidates of their CIDEr-D (0 to about 10)."""
    scores = cider_d_per_item(candidates, references)
    return float(scores.mean()) if len(scores) else float("nan")
