"""The Searcher: opens an index with the model that built it and answers text and image queries.

text  ─▶ latent ─▶ vector top candidates ─(optional re-rank, rerank.py)─┬▶ fused (ranking.py, hybrid.py)
      └▶ words ─▶ keyword index of file names, folders and captions ────┘  "nothing matches"? (relevance.py)
image ─▶ latent ─▶ vector top-k, and its caption. Terms combine (query.py); updates are followed (live_index.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammut_search import hybrid, query as q, ranking, relevance, rerank as rr
from mammut_search.image_access import indexed_image
from mammut_search.index.duplicates import DUPLICATE_SIMILARITY, check_threshold
from mammut_search.index.manifest import rebuild_command
from mammut_search.live_index import LiveIndex
from mammut_search.query import DEFAULT_K, QueryTerm
from mammut_search.query_encoder import QueryEncoder
from mammut_search.rerank import RERANK_BY_DEFAULT, RERANK_CANDIDATES, RERANK_WEIGHT
from mammut_search.results import SearchHit, SearchResults  # noqa: F401 (SearchHit: part of this module's API)

if TYPE_CHECKING:  # torch and PIL are imported where used: `mammut search`'s argument errors need neither
    import torch
    from PIL import Image

EMPTY = "the index holds no images"


class Searcher:
    """An index and its model; thread-safe: any number of threads may query one Searcher."""

    def __init__(self, store, model, *, rerank_default: bool = RERANK_BY_DEFAULT,
                 rerank_candidates: int = RERANK_CANDIDATES, rerank_weight: float = RERANK_WEIGHT,
                 no_match_cutoff: float | None = None):
        self.model = model
        self.live = LiveIndex(store, model)
        self.rerank_default = rerank_default
        self.rerank_candidates = rerank_candidates
        self.rerank_weight = rerank_weight
        self.encoder = QueryEncoder(model)
        self.no_match_cutoff = no_match_cutoff  # None: the index's own calibration (relevance.py)

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None,
             device: str | torch.device | None = None, **options) -> "Searcher":
        """Open an index with `checkpoint` (default: the one the index was built with; see
        mammut_search.index.manifest.resolve_checkpoint); an index built by another model is refused."""
        from mammut_search.inference import load_model
        from mammut_search.index.manifest import read_manifest, resolve_checkpoint
        from mammut_search.index.store import IndexStore

        manifest = read_manifest(Path(index_dir))  # the helpful "no such index" errors come first
        model = load_model(resolve_checkpoint(manifest, checkpoint), device=device)
        use_gpu = False if model.device.type == "cpu" else None
        return cls(IndexStore.open(index_dir, model=model, use_gpu=use_gpu), model, **options)

    @property
    def store(self):
        """The IndexStore of the generation now served."""
        return self.live.current.store

    @property
    def caption_beam_width(self) -> int:
        """How the index's captions were decoded: image queries are captioned alike."""
        return self.store.manifest.caption_beam_width

    @property
    def reference_ids(self) -> np.ndarray:
        """The indexed images whose likelihoods make the re-ranking baseline."""
        return self.live.current.reference_ids

    def follow_updates(self) -> bool:
        """Switch to a newer generation of the index if one was committed since; -> whether it switched."""
        return self.live.follow()

    def close(self) -> None:
        """Nothing to release: a Searcher is a context manager for callers' symmetry."""

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def search_text(self, query: str, k: int = DEFAULT_K, *, rerank: bool | None = None,
                    vectors_only: bool = False, files: bool = True) -> SearchResults:
        """Rank the indexed images by a text query, searching their latents and (unless `vectors_only`) their
        file names, folders and captions; `rerank` re-scores the top vector candidates by the likelihood of the
        query given each image. `horse + stripes - photo.jpg` combines terms (search_terms; image files only
        when `files`)."""
        terms = q.parse_arithmetic(query, files=files) if isinstance(query, str) else None
        if terms is not None:
            return self.search_terms(terms, k, vectors_only=vectors_only)
        gen, (text, shown, truncated), k = self.live.served(), q.prepare_text(self.model, query), q.check_k(k)
        rerank = self.rerank_default if rerank is None else bool(rerank)
        results = SearchResults([], query=shown, truncated=truncated)
        if truncated:
            results.notices.append(f"the query was too long and was cut to: {shown!r}")
        if not len(gen.ok_ids):
            return _with(results, EMPTY)
        latent = self.encoder.text(text)
        ids, sims = ranking.nearest(gen, latent, max(k, self.rerank_candidates if rerank else 0,
                                                       hybrid.VECTOR_CANDIDATES))
        results.match = relevance.match(sims)
        cutoff = relevance.cutoff(gen.store.manifest, self.no_match_cutoff)
        sim_of, scores, lift_of = dict(zip(ids.tolist(), sims.tolist())), sims, None
        if rerank and gen.store.tokens is None:
            _with(results, rr.NO_TOKENS.format(command=rebuild_command(gen.store.directory, gen.store.manifest)))
        elif rerank:
            ids, scores, lift_of = rr.rerank(self.model, gen, text, ids[:max(k, self.rerank_candidates)], sims,
                                             self.rerank_weight, self.encoder.lock)
            results.reranked = True
        words = self._fuse(results, gen, latent, ids, scores, sim_of, "" if vectors_only else text, k, lift_of)
        results.nothing_matches = cutoff is not None and results.match < cutoff and not words
        return _with(results, relevance.NOTICE) if results.nothing_matches else results

    def search_terms(self, terms: list[QueryTerm], k: int = DEFAULT_K, *, vectors_only: bool = False) -> SearchResults:
        """Rank the indexed images by a weighted sum of the latents of texts and images (each unit norm; a
        negative weight steers away); the texts of positive terms are searched as words too."""
        gen, k, terms = self.live.served(), q.check_k(k), q.check_terms(terms)
        latent = ranking.combine([self.encoder.text(t.text) if t.text is not None
                                  else self.encoder.image(t.image)[0] for t in terms],
                                 [t.weight for t in terms])
        results = SearchResults([], query=q.describe_terms(terms), kind="terms")
        if not len(gen.ok_ids):
            return _with(results, EMPTY)
        ids, sims = ranking.nearest(gen, latent, k)
        texts = "" if vectors_only else " ".join(q.prepare_text(self.model, t.text)[0] for t in terms
                                                 if t.text is not None and t.weight > 0)  # as cut for the model
        self._fuse(results, gen, latent, ids, sims, dict(zip(ids.tolist(), sims.tolist())), texts, k)
        return results

    def search_image(self, image: Image.Image | str | os.PathLike | bytes, k: int = DEFAULT_K, *,
                     with_caption: bool = False) -> SearchResults:
        """Rank the indexed images by similarity to an image (a PIL image, a file path or the file's bytes);
        with_caption also writes the query image's caption (from the same image tokens)."""
        gen, k = self.live.served(), q.check_k(k)
        latent, caption = self.encoder.image(image, caption_beam_width=self.caption_beam_width if with_caption else None)
        results = SearchResults([], query=q.describe(image), kind="image", query_caption=caption)
        results.hits = ranking.vector_hits(gen, latent, k) if len(gen.ok_ids) else []
        return results if len(gen.ok_ids) else _with(results, EMPTY)

    def similar(self, item_id: int, k: int = DEFAULT_K, *, min_similarity: float = -np.inf) -> SearchResults:
        """The images nearest to an indexed image (itself excluded), from its stored latent: no encoding; only
        those at least `min_similarity` close."""
        gen, k, item_id = self.live.served(), q.check_k(k), self.live.check_item(item_id)
        latent = gen.store.vectors.reconstruct(np.array([item_id], np.int64)).astype(np.float32)
        hits = ranking.vector_hits(gen, latent, k, leave_out=item_id, min_similarity=min_similarity)
        return SearchResults(hits, kind="item", query_caption=gen.store.item(item_id)["caption"])

    def duplicates(self, item_id: int, *, threshold: float = DUPLICATE_SIMILARITY) -> SearchResults:
        """The near-identical images of an indexed image (latents at least `threshold` similar, copies too)."""
        return self.similar(item_id, q.MAX_K, min_similarity=check_threshold(threshold))

    def caption(self, image: Image.Image | str | os.PathLike | bytes, *, beam_width: int | None = None) -> str:
        """The generated caption of one image (a PIL image, a file path or the file's bytes), decoded as the
        index's captions were unless `beam_width` says otherwise."""
        return self.encoder.caption(image, beam_width or self.caption_beam_width)

    def info(self, *, private: bool = False) -> dict[str, Any]:
        """What a user wants to know about the index, and `summary`, the (label, value) rows that `mammut index
        info` shows too (`private`: without this machine's paths, for a browser)."""
        self.live.follow()
        return {**self.live.info(private=private), "rerank_default": self.rerank_default}

    def item(self, item_id: int) -> dict[str, Any]:
        """The items row of an indexed image (id, path, size, caption, ...); UserError if not indexed."""
        return self.live.served().store.item(self.live.check_item(item_id))

    def image_path(self, item_id: int) -> str:
        """The file of an indexed image, the only kind of file a server may hand out; UserError otherwise."""
        return self.item(item_id)["path"]

    def load_item_image(self, item_id: int, *, max_side: int | None = None) -> Image.Image:
        """An indexed image through the safe loader, optionally shrunk to fit max_side (for thumbnails);
        UserError if its file no longer holds the bytes that were indexed."""
        picture = indexed_image(self.store, self.live.check_item(item_id), min_side=max_side)
        if max_side is not None:
            picture.thumbnail((max_side, max_side))
        return picture

    @staticmethod
    def _fuse(results: SearchResults, gen, latent: np.ndarray, ids: np.ndarray, scores: np.ndarray,
              sim_of: dict, text: str, k: int, lift_of: dict | None = None) -> dict:
        """The hits: the vector ranking fused with the keyword hits of `text` ("": vectors only). -> those."""
        words = ranking.keyword_hits(gen, text, k)
        results.hybrid = bool(text) and gen.store.keywords is not None
        results.hits = ranking.make_hits(gen, latent, ranking.ranked(ids, scores, words, k), sim_of,
                                         lift_of=lift_of, words=words)
        return words


def _with(results: SearchResults, notice: str) -> SearchResults:
    results.notices.append(notice)
    return results
