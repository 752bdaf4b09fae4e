"""Validation during and after training: recall@k both ways on each validation set (bare names and sentence
queries), the score the best checkpoint is chosen on, caption quality, and the two untrained baselines built
from the same frozen encoder features.

Queries are the concepts' names (one text per concept); the gallery is every image of the split; an image
is right for a query when it shows that concept. Scoring follows `mammut_search.eval.metrics`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mammut_search.eval import metrics
from mammut_search.eval.domains import caption_hits
from mammut_search.model.decoding import generate
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.retrieval import image_retrieval_vectors, query_retrieval_vectors, query_sentences
from mammut_search.model.tokenizer import Tokenizer
from mammut_search.train.data import sentence_query

KS = (1, 5, 10)


@dataclass
class EvalSplit:
    """One validation split: its manifest rows and their encoder inputs (clean view)."""

    name: str
    frame: pd.DataFrame  # rows with readable images only
    inputs: torch.Tensor  # (i ...) float16 features or pixels
    # names are concept names ("octopus"), also asked as "A picture of an octopus."; not where a set's "name"
    # is just its first caption (a recipe that learns to write captions, not names)
    sentence_queries: bool = True

    @property
    def concepts(self) -> list[str]:
        return list(dict.fromkeys(self.frame["concept_id"]))

    def names(self) -> list[str]:
        """One query text per concept (its name), in `concepts` order."""
        first = self.frame.drop_duplicates("concept_id").set_index("concept_id")["name"]
        return [str(first[c]) for c in self.concepts]

    def targets(self) -> tuple[list[set[int]], list[set[int]]]:
        """(concept -> its images, image -> its concept), as index sets."""
        index = {c: k for k, c in enumerate(self.concepts)}
        text_to_image: list[set[int]] = [set() for _ in index]
        image_to_text: list[set[int]] = []
        for i, c in enumerate(self.frame["concept_id"]):
            text_to_image[index[c]].add(i)
            image_to_text.append({index[c]})
        return text_to_image, image_to_text


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int, device) -> torch.Tensor:
    return torch.cat([fn(x[s:s + batch].to(device).float()).float().cpu() for s in range(0, len(x), batch)])


@torch.no_grad()
def image_latents(net: MaMMUT, inputs: torch.Tensor, *, features: bool, device, batch: int = 256) -> torch.Tensor:
    """Cached encoder inputs (i ...) -> unit-norm retrieval vectors of the images (i r)."""
    encode = ((lambda x: image_retrieval_vectors(net, x)) if features
              else (lambda x: image_retrieval_vectors(net, net.image_features(x))))
    return _batched(encode, inputs, batch, device)


@torch.no_grad()
def text_latents(net: MaMMUT, tokenizer: Tokenizer, texts: list[str], device, batch: int = 512) -> torch.Tensor:
    """texts -> unit-norm retrieval vectors of the texts as queries (t r)."""
    out = []
    for s in range(0, len(texts), batch):
        ids = tokenizer.encode(texts[s:s + batch], net.config.max_text_len).to(device)
        sentences = query_sentences(net, texts[s:s + batch])
        out.append(query_retrieval_vectors(net, ids, sentences).float().cpu())
    return torch.cat(out)


def retrieval_scores(split: EvalSplit, images: torch.Tensor, text_fn: Callable[[list[str]], torch.Tensor]) -> dict:
    """Recall@k text->image (names and sentences) and image->text (names) for one split."""
    text_to_image, image_to_text = split.targets()
    names = split.names()
    name_latents = text_fn(names)
    out = {}
    for k, v in metrics.recall_at_k(name_latents, images, text_to_image, KS).items():
        out[f"t2i_{k}"] = v
    if split.sentence_queries:
        sentences = text_fn([sentence_query(n) for n in names])
        out.update({f"t2i_sentence_{k}": v for k, v in metrics.recall_at_k(sentences, images, text_to_image, KS).items()})
    for k, v in metrics.image_to_text_recall(images, name_latents, image_to_text, KS).items():
        out[f"i2t_{k}"] = v
    out["queries"], out["images"] = len(names), len(images)
    return out


def evaluate_retrieval(net: MaMMUT, tokenizer: Tokenizer, splits: list[EvalSplit], *, features: bool, device) -> dict:
    """{split name: recall figures} for the model."""
    was_training = net.training
    net.eval()
    try:
        return {
            s.name: retrieval_scores(s, image_latents(net, s.inputs, features=features, device=device),
                                     lambda texts: text_latents(net, tokenizer, texts, device))
            for s in splits
        }
    finally:
        net.train(was_training)


DOMAIN_SCORE = ("best validation score: the mean over domains (styles kept out of training, each style a set; "
                "each other validation split its own) of each domain's mean over its sets of (t2i R@1 + t2i R@5) / 2")
CONVENTIONS = ("queries: each concept's name (and 'A picture of a NAME.' for sentence figures); gallery: every image "
               "of the split; i2t ranks the split's names; ranks as in mammut_search.eval.metrics")


def domain_of(split: str) -> str:
    """A validation set's domain: "style:NAME" sets are one domain (styles), every other split its own."""
    return "styles" if split.startswith("style:") else split


def domain_score(results: dict) -> float:
    """One number to pick the best checkpoint on, never one domain: see DOMAIN_SCORE."""
    domains: dict[str, list[float]] = {}
    for split, r in results.items():
        domains.setdefault(domain_of(split), []).append((r["t2i_R@1"] + r["t2i_R@5"]) / 2)
    return float(np.mean([np.mean(v) for v in domains.values()]))


# ----- captions -----

@torch.no_grad()
def evaluate_captions(net: MaMMUT, tokenizer: Tokenizer, split: EvalSplit, training_names: set[str], *,
                      features: bool, device, batch: int = 128) -> dict:
    """Greedy captions of a split's images: exact-name rate, training-name copy rate, the share that name the
    object (a content word shared with a reference), BLEU-4, CIDEr-D."""
    net.eval()
    captions: list[str] = []
    for s in range(0, len(split.inputs), batch):
        x = split.inputs[s:s + batch].to(device).float()
        feats = x if features else net.image_features(x)
        _, tokens = net.pool_image(feats)
        ids = generate(net, tokens, beam_width=1, max_len=24)
        captions.extend(tokenizer.decode(row) for row in ids.tolist())
    norm = lambda t: " ".join(metrics.tokenize(t))  # noqa: E731
    names = [norm(n) for n in split.frame["name"]]
    generated = [norm(c) for c in captions]
    training = {norm(n) for n in training_names}
    references = [list(dict.fromkeys([n, *c])) for n, c in zip(split.frame["name"], split.frame["captions"])]
    return {
        "exact_name": float(np.mean([g == n for g, n in zip(generated, names)])),
        "name_in_caption": float(np.mean([f" {n} " in f" {g} " for g, n in zip(generated, names)])),
        "copied_training_name": float(np.mean([g in training for g in generated])),
        "names_object": float(caption_hits(captions, references).mean()),
        "BLEU-4": metrics.bleu4(captions, references),
        "CIDEr-D": metrics.cider_d(captions, references),
        "examples": [{"name": n, "caption": c} for n, c in list(zip(split.frame["name"], captions))[:12]],
    }


# ----- untrained baselines from the frozen features -----

def pooled(features: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Encoder features (i j c) -> centred, unit-norm mean-pooled vectors (i c)."""
    x = features.float().mean(dim=1)
    return F.normalize(x - mean if mean is not None else x, dim=-1)


def baselines(train_frame: pd.DataFrame, train_features: torch.Tensor, splits: list[EvalSplit]) -> dict:
    """The two untrained baselines on each split (features centred on the training mean):
    - concept prototype: a concept = the mean feature of its training images (seen concepts only);
    - word means: a word = the mean feature of training images whose captions use it; a text = the mean of
      its known words (a random direction when it has none).
    """
    raw = train_features.mean(dim=1, dtype=torch.float32)  # (i c), without a float32 copy of every token
    centre = raw.mean(dim=0)
    train_vecs = F.normalize(raw - centre, dim=-1)
    prototypes = {}
    for concept, rows in train_frame.reset_index(drop=True).groupby("concept_id").indices.items():
        prototypes[concept] = F.normalize(train_vecs[rows].mean(dim=0), dim=-1)
    word_rows: dict[str, list[int]] = {}
    for i, caps in enumerate(train_frame["captions"]):
        for word in {w for c in caps for w in metrics.tokenize(c)}:
            word_rows.setdefault(word, []).append(i)
    word_vecs = {w: train_vecs[r].mean(dim=0) for w, r in word_rows.items()}

    def words_text(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), train_vecs.shape[1])
        for t, text in enumerate(texts):
            known = [word_vecs[w] for w in metrics.tokenize(text) if w in word_vecs]
            if known:
                out[t] = torch.stack(known).mean(dim=0)
            else:  # nothing known: a random direction ranks at chance (a zero vector would tie with every
                # image, and ties count as hits)
                generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
                out[t] = torch.randn(train_vecs.shape[1], generator=generator)
        return F.normalize(out, dim=-1)

    results = {}
    for split in splits:
        images = pooled(split.inputs, centre)
        entry = {"word_means": retrieval_scores(split, images, words_text)}
        concepts = split.concepts
        if all(c in prototypes for c in concepts):
            by_name = dict(zip(split.names(), concepts))
            entry["concept_prototype"] = retrieval_scores(
                split, images, lambda texts: torch.stack([prototypes[by_name.get(t, concepts[0])] for t in texts])
                if all(t in by_name for t in texts) else _sentence_prototypes(texts, by_name, prototypes))
        results[split.name] = entry
    return results


def _sentence_prototypes(texts: list[str], by_name: dict, prototypes: dict) -> torch.Tensor:
    """Sentence queries map to the prototype of the concept they were written from."""
    by_sentence = {sentence_query(name): concept for name, concept in by_name.items()}
    return torch.stack([prototypes[by_sentence[t]] for t in texts])
