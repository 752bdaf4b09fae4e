"""The Searcher: opens an index with the model that built it and answers text and image queries.

text query ─▶ text latent ─▶ FAISS top candidates ─(optional)▶ re-rank by log p(query | image), decoder pass
image      ─▶ image tokens (once) ─┬▶ latent ─▶ FAISS top-k (image → image)
                                   └▶ caption
Re-ranking needs the decoder's image tokens of each candidate. An index stores them (a few KB an image,
written in the pass that made the latents), so re-ranking decodes no image and a cold query costs what a warm
one does; for an index without them the candidates' files are decoded again through the one image pipeline and
their tokens kept in an LRU cache, which makes repeated and related queries cheap.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from mammut_search.errors import UserError
from mammut_search.index.manifest import MANIFEST_FILE

if TYPE_CHECKING:  # torch and PIL are imported where used: `mammut search`'s argument errors need neither
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_K = 10
MAX_K = 1000
MAX_QUERY_CHARS = 1000  # longer text is cut before it reaches the tokenizer
# Off by default: for the bundled checkpoint, re-ranking the top 50 raised text->image R@1/R@5 on held-out emoji
# styles (0.243/0.443 -> 0.293/0.470) and objects (0.121/0.268 -> 0.141/0.304) but lowered it on photos
# (0.185/0.346 -> 0.160/0.296) (benchmarks/RESULTS.md, "Photo knowledge"); on by default only if it helps everywhere
RERANK_BY_DEFAULT = False
RERANK_CANDIDATES = 50  # FAISS candidates re-scored by the decoder
# combined score = latent similarity + RERANK_WEIGHT * (log p(query | image) - baseline), both per token;
# 0.1 was best or near-best at every k in the measurement above
RERANK_WEIGHT = 0.1
# "nothing matches": each of the query's top candidates is compared with what ordinary words reach for that same
# image (its mean similarity to its NO_MATCH_NEIGHBOURS nearest REFERENCE_WORDS, words of the tokenizer's
# vocabulary). An image that a query beats its usual words by less than NO_MATCH_MARGIN is probably not of the
# query's concept; when no candidate does better, the user is told. Calibrated for the bundled checkpoint on the
# demo index, on 30 concepts present and 30 absent, and tested on 30 more of each (benchmarks/RESULTS.md,
# "Nothing matches"); other checkpoints may need another margin.
NO_MATCH_MARGIN = 0.031
NO_MATCH_CANDIDATES = 50
NO_MATCH_NEIGHBOURS = 10
REFERENCE_WORDS = 800
REFERENCE_IMAGES = 16
FEATURE_CACHE_SIZE = 1024  # decoder tokens of 1024 images: 16 MB for the bundled model (16 x 256 floats each)
FEATURE_BATCH = 16
# query images decoded at once: a large upload may briefly take ~700 MB while it decodes (see images.py)
QUERY_DECODES = 2


@dataclass(frozen=True)
class SearchHit:
    """One ranked image: `score` orders the hits (the similarity, or the re-ranked score)."""

    rank: int  # 1-based
    id: int
    path: str  # exact path as indexed (may hold surrogate escapes for non-UTF-8 names)
    score: float
    caption: str
    similarity: float  # cosine similarity of the latents
    likelihood: float | None = None  # log p(query | image) per token above the index baseline; None if not scored

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the path rendered readable)."""
        from mammut_search.index.store import readable

        return {**asdict(self), "path": readable(self.path)}


@dataclass
class SearchResults:
    """The hits of one query and what the user should be told about it."""

    hits: list[SearchHit]
    query: str = ""  # the text actually searched (after truncation), or the image query's file
    kind: str = "text"  # "text", "image" or "item"
    reranked: bool = False
    truncated: bool = False  # the query was longer than the model reads
    nothing_matches: bool = False  # no candidate fits the query better than ordinary words fit it
    match: float | None = None  # how far the best candidate beats its usual words (see NO_MATCH_MARGIN)
    query_caption: str | None = None  # the generated caption of an image query
    notices: list[str] = field(default_factory=list)  # one-line messages for the user

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> SearchHit:
        return self.hits[i]

    @property
    def ids(self) -> list[int]:
        return [h.id for h in self.hits]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the whole answer."""
        data = {k: v for k, v in asdict(self).items() if k != "hits"}
        return {**data, "hits": [h.to_dict() for h in self.hits]}


class FeatureCache:
    """A thread-safe LRU of decoder image tokens (q d) by item id."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: int) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: int, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Searcher:
    """An index and its model; thread-safe: any number of threads may query one Searcher."""

    def __init__(self, store, model, *, rerank_default: bool = RERANK_BY_DEFAULT,
                 rerank_candidates: int = RERANK_CANDIDATES, rerank_weight: float = RERANK_WEIGHT,
                 no_match_margin: float = NO_MATCH_MARGIN, reference_images: int = REFERENCE_IMAGES,
                 cache_size: int = FEATURE_CACHE_SIZE, stored_tokens: bool = True):
        # re-rank from the decoder tokens the index stores, when it has them
        self.stored_tokens = stored_tokens
        self._generation = _Generation.of(store, reference_images, stored_tokens)
        self._reference_images = reference_images
        self._manifest_stamp = _stamp(store.directory)
        self._reopen_lock = threading.Lock()
        self.model = model
        self.rerank_default = rerank_default
        self.rerank_candidates = rerank_candidates
        self.rerank_weight = rerank_weight
        self.no_match_margin = no_match_margin
        self._features = FeatureCache(cache_size)
        self._references: np.ndarray | None = None  # reference words' latents, for "nothing matches"
        # one model call at a time: bounded memory, no oversubscribed CPU threads, and a GPU used in turn
        self._model_lock = threading.RLock()
        self._loader = ThreadPoolExecutor(max_workers=4, thread_name_prefix="searcher-load")
        self._decode_slots = threading.BoundedSemaphore(QUERY_DECODES)

    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None,
             device: str | torch.device | None = None, **options) -> "Searcher":
        """Open an index with `checkpoint` (default: the one the index was built with; see
        mammut_search.index.manifest.resolve_checkpoint); an index built by another model is refused."""
        from mammut_search.inference import load_model
        from mammut_search.index.manifest import read_manifest, resolve_checkpoint
        from mammut_search.index.store import IndexStore

        index_dir = Path(index_dir)
        manifest = read_manifest(index_dir)  # the helpful "no such index" errors come first
        model = load_model(resolve_checkpoint(manifest, checkpoint), device=device)
        use_gpu = False if model.device.type == "cpu" else None
        store = IndexStore.open(index_dir, model=model, use_gpu=use_gpu)
        return cls(store, model, **options)

    # ----- the index generation served -----

    @property
    def caption_beam_width(self) -> int:
        """How the index's captions were decoded: image queries are captioned alike, so one image reads the
        same everywhere."""
        return self.store.manifest.caption_beam_width

    @property
    def store(self):
        """The IndexStore of the generation now served."""
        return self._generation.store

    @property
    def _ok_ids(self) -> np.ndarray:
        return self._generation.ok_ids

    @property
    def _ok_id_set(self) -> set[int]:
        return self._generation.ok_id_set

    @property
    def reference_ids(self) -> np.ndarray:
        """The indexed images whose likelihoods make the re-ranking baseline."""
        return self._generation.reference_ids

    def follow_updates(self) -> bool:
        """Switch to a newer generation of the index if `mammut index update` committed one since (checked by
        the manifest's stat: cheap enough for every query). Ids of unchanged images stay, so cached image
        tokens stay valid. A new generation that cannot be opened is logged and the current one kept serving.
        Returns whether it switched."""
        stamp = _stamp(self.store.directory)
        if stamp == self._manifest_stamp:
            return False
        from mammut_search.index.store import IndexStore

        with self._reopen_lock:
            if stamp == self._manifest_stamp:
                return False
            current = self.store
            try:
                store = IndexStore.open(current.directory, model=self.model, use_gpu=current.use_gpu)
            except (UserError, OSError) as e:  # mid-commit, or damaged: the next query tries again
                log.warning("%s: still serving generation %d (%s)", current.directory, current.manifest.generation, e)
                return False
            if store.manifest.generation == current.manifest.generation:
                self._manifest_stamp = stamp
                return False
            store.vectors  # loaded before the switch: the next queries must not wait for it or fail on it
            self._generation = _Generation.of(store, self._reference_images, self.stored_tokens)
            self._manifest_stamp = stamp
            log.info("%s: now serving generation %d (%d images)", store.directory, store.manifest.generation,
                     len(self._ok_ids))
            return True

    def clear_cache(self) -> None:
        """Forget the cached tokens of candidates re-ranked by decoding their files (to measure, or to free memory)."""
        self._features = FeatureCache(self._features.capacity)

    def close(self) -> None:
        """Stop the image-loading threads."""
        self._loader.shutdown(wait=False)

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- queries -----

    def search_text(self, query: str, k: int = DEFAULT_K, *, rerank: bool | None = None) -> SearchResults:
        """Rank the indexed images by a text query; `rerank` re-scores the top candidates by the likelihood of
        the query given each image (default: the Searcher's `rerank_default`)."""
        self.follow_updates()
        text, shown, truncated = self._prepare_query(query)
        k = _check_k(k)
        rerank = self.rerank_default if rerank is None else bool(rerank)
        results = SearchResults([], query=shown, kind="text", reranked=rerank, truncated=truncated)
        if truncated:
            results.notices.append(f"the query was too long and was cut to: {shown!r}")
        if not len(self._ok_ids):
            results.reranked = False
            results.notices.append("the index holds no images")
            return results
        with self._model_lock:
            latent = self.model.encode_text([text]).numpy()
        pool = max(k, self.rerank_candidates) if rerank else k
        ids, similarities = self._nearest(latent, max(pool, NO_MATCH_CANDIDATES))
        results.match = self.match_margin(ids[:NO_MATCH_CANDIDATES], similarities[:NO_MATCH_CANDIDATES])
        results.nothing_matches = results.match < self.no_match_margin
        ids, similarities = ids[:pool], similarities[:pool]
        if not rerank:
            results.hits = self._hits(ids[:k], similarities[:k], similarities[:k])
            return self._with_no_match_notice(results)
        lifts = self._likelihood_lifts(text, ids)
        scorable = lifts[~np.isnan(lifts)]
        floor = scorable.min() if len(scorable) else 0.0  # unreadable candidates: as unlikely as the worst
        combined = similarities + self.rerank_weight * np.where(np.isnan(lifts), floor, lifts)
        order = sorted(range(len(ids)), key=lambda i: (-round(float(combined[i]), 6), i))[:k]
        results.hits = self._hits(ids[order], combined[order], similarities[order], lifts[order])
        return self._with_no_match_notice(results)

    def match_margin(self, ids: np.ndarray, similarities: np.ndarray) -> float:
        """max over candidates of (similarity to the query - the candidate's mean similarity to its
        NO_MATCH_NEIGHBOURS nearest reference words): how much better than ordinary words the query fits its
        best-fitting candidate."""
        if not len(ids):
            return float("-inf")
        references = self._reference_latents()
        latents = self.store.vectors.reconstruct(np.asarray(ids, np.int64)).astype(np.float32)
        neighbours = min(NO_MATCH_NEIGHBOURS, len(references))
        usual = (np.sort(latents @ references.T, axis=1)[:, -neighbours:].mean(axis=1) if neighbours
                 else np.zeros(len(ids)))
        return round(float(np.max(np.asarray(similarities) - usual)), 6)

    def _reference_latents(self) -> np.ndarray:
        """Text latents (w l) of REFERENCE_WORDS words of the tokenizer's vocabulary, encoded once."""
        with self._model_lock:
            if self._references is None:
                words = reference_words(self.model.tokenizer, REFERENCE_WORDS)
                batches = [self.model.encode_text(words[i:i + 200]).numpy() for i in range(0, len(words), 200)]
                self._references = (np.concatenate(batches) if batches
                                    else np.zeros((0, self.model.latent_dim), np.float32))
            return self._references

    @staticmethod
    def _with_no_match_notice(results: SearchResults) -> SearchResults:
        if results.nothing_matches:
            results.notices.append("nothing in the index seems to match this query; the closest images are "
                                   "shown, but they are probably not what you want")
        return results

    def search_image(self, image: Image.Image | str | os.PathLike | bytes, k: int = DEFAULT_K, *,
                     with_caption: bool = False) -> SearchResults:
        """Rank the indexed images by similarity to an image (a PIL image, a file path or the file's bytes);
        with_caption also writes the query image's caption (from the same image tokens)."""
        self.follow_updates()
        k = _check_k(k)
        pixels = self.model.preprocess([self._load_query_image(image)])
        with self._model_lock:
            features = self.model.image_features(pixels)
            latent = self.model.latents_from_features(features).numpy()
            caption = (self.model.captions_from_features(features, beam_width=self.caption_beam_width)[0]
                       if with_caption else None)
        results = SearchResults([], query=_describe(image), kind="image", query_caption=caption)
        if not len(self._ok_ids):
            results.notices.append("the index holds no images")
            return results
        ids, similarities = self._nearest(latent, k)
        results.hits = self._hits(ids, similarities, similarities)
        return results

    def similar(self, item_id: int, k: int = DEFAULT_K) -> SearchResults:
        """The images nearest to an indexed image (itself excluded), from its stored latent: no encoding."""
        self.follow_updates()
        k = _check_k(k)
        item_id = self._check_item(item_id)
        latent = self.store.vectors.reconstruct(np.array([item_id], np.int64)).astype(np.float32)
        ids, similarities = self._nearest(latent, k + 1)
        keep = ids != item_id
        ids, similarities = ids[keep][:k], similarities[keep][:k]
        results = SearchResults(self._hits(ids, similarities, similarities), kind="item",
                                query_caption=self.store.item(item_id)["caption"])
        return results

    def caption(self, image: Image.Image | str | os.PathLike | bytes, *, beam_width: int | None = None) -> str:
        """The generated caption of one image (a PIL image, a file path or the file's bytes), decoded as the
        index's captions were unless `beam_width` says otherwise."""
        pixels = self.model.preprocess([self._load_query_image(image)])
        with self._model_lock:
            return self.model.caption(pixels, beam_width=beam_width or self.caption_beam_width)[0]

    # ----- what the index holds -----

    def info(self, *, private: bool = False) -> dict[str, Any]:
        """What a user wants to know about the index: size, skipped files, model, dates, where it runs; and
        `summary`, the (label, value) rows that `mammut index info` shows too (`private`: without this
        machine's paths, for a browser)."""
        from mammut_search.index.manifest import summary_rows
        from mammut_search.index.vectors import search_device

        self.follow_updates()
        store, m = self.store, self.store.manifest
        return {
            "index": str(store.directory.resolve()),
            "images": m.count,
            "skipped": m.skipped,
            "roots": list(m.roots),
            "checkpoint_sha256": m.checkpoint_sha256,
            "checkpoint_dir": m.checkpoint_dir,
            "generation": m.generation,
            "created": m.created,
            "updated": m.updated,
            "device": str(self.model.device),
            "rerank_default": self.rerank_default,
            "summary": summary_rows(store.directory, m, search=search_device(store.use_gpu),
                                    model_device=str(self.model.device), private=private),
        }

    def item(self, item_id: int) -> dict[str, Any]:
        """The items row of an indexed image (id, path, size, caption, ...); UserError if not indexed."""
        self.follow_updates()
        return self.store.item(self._check_item(item_id))

    def image_path(self, item_id: int) -> str:
        """The file of an indexed image, the only kind of file a server may hand out; UserError otherwise."""
        self.follow_updates()
        return self.store.path_of(self._check_item(item_id))

    def load_item_image(self, item_id: int, *, max_side: int | None = None) -> Image.Image:
        """An indexed image through the safe loader, optionally shrunk to fit max_side (for thumbnails);
        UserError if its file no longer holds the bytes that were indexed."""
        picture = self._indexed_image(self._check_item(item_id), min_side=max_side)
        if max_side is not None:
            picture.thumbnail((max_side, max_side))
        return picture

    # ----- internals -----

    def _prepare_query(self, query: str) -> tuple[str, str, bool]:
        """-> (text for the model, text as the model reads it, whether it was cut)."""
        if not isinstance(query, str):
            raise UserError(f"the query must be text, not {type(query).__name__}")
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes from a terminal (surrogate escapes) or lone surrogates
            raise UserError("the query holds bytes that are not valid UTF-8 text (is the terminal set to "
                            "another encoding?); type it again") from None
        text = " ".join(query.split())  # newlines and runs of spaces mean nothing to the model
        if not text:
            raise UserError("empty query: type a few words describing the images you want")
        truncated = len(text) > MAX_QUERY_CHARS
        text = text[:MAX_QUERY_CHARS]
        tokenizer, max_len = self.model.tokenizer, self.model.config.max_text_len
        if tokenizer.token_count(text) > max_len - 2:  # <bos> and <eos> take two places
            truncated = True
            shown = tokenizer.decode(tokenizer.encode([text], max_len)[0].tolist())
        else:
            shown = text
        return text, shown, truncated

    def _nearest(self, latent: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS top-k of one latent -> (ids, similarities), missing slots dropped."""
        vectors = self.store.vectors
        k = min(k, len(self._ok_ids))
        query = np.ascontiguousarray(latent, dtype=np.float32).reshape(1, -1)
        scores, ids = vectors.search(query, k)  # thread-safe; a GPU copy is searched under its own lock
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float64)

    def _hits(self, ids: np.ndarray, scores: np.ndarray, similarities: np.ndarray,
              lifts: np.ndarray | None = None) -> list[SearchHit]:
        hits = []
        for rank, (item_id, score, similarity) in enumerate(zip(ids.tolist(), scores, similarities), start=1):
            row = self.store.item(item_id)
            lift = None if lifts is None or np.isnan(lifts[rank - 1]) else round(float(lifts[rank - 1]), 6)
            hits.append(SearchHit(rank, int(item_id), row["path"], round(float(score), 6), row["caption"],
                                  round(float(similarity), 6), lift))
        return hits

    def _likelihood_lifts(self, text: str, ids: np.ndarray) -> np.ndarray:
        """Per candidate: log p(text | image) per token minus its median over reference images of the index,
        i.e. how much better than an arbitrary image the candidate explains the query; NaN if unreadable."""
        import torch

        wanted = [int(i) for i in ids] + [int(i) for i in self.reference_ids]
        tokens = self._tokens_of(wanted)
        usable = [i for i, t in enumerate(tokens) if t is not None]
        scores = np.full(len(wanted), np.nan)
        if usable:
            with self._model_lock:
                batch = torch.stack([tokens[i] for i in usable])
                scores[usable] = self.model.score_text_from_tokens(batch, [text] * len(usable)).double().numpy()
        reference = scores[len(ids):]
        reference = reference[~np.isnan(reference)]
        baseline = float(np.median(reference)) if len(reference) else float(np.nanmedian(scores[:len(ids)]))
        return scores[:len(ids)] - baseline

    def _tokens_of(self, ids: list[int]) -> list[torch.Tensor | None]:
        """Decoder image tokens (q d) of indexed images: read from the index when it stores them (no image is
        decoded), else from the cache or computed in batches from the files; None for a file that cannot be
        read any more. (A row's tokens do not depend on its batch-mates beyond float rounding, ~1e-13, far
        below the 1e-6 that scores are rounded to.)"""
        import torch

        stored = self._generation.tokens
        if stored is not None:
            try:
                return list(torch.from_numpy(stored.rows(ids)))
            except KeyError:  # the index switched generation under this query: decode these few files
                pass
        found = {i: self._features.get(i) for i in dict.fromkeys(ids)}
        missing = [i for i, f in found.items() if f is None]
        pending = [self._loader.submit(self._pixels_of, i) for i in missing]  # decoding overlaps the model
        for start in range(0, len(missing), FEATURE_BATCH):
            chunk = zip(missing[start:start + FEATURE_BATCH], pending[start:start + FEATURE_BATCH])
            loaded = [(i, p) for i, p in ((i, f.result()) for i, f in chunk) if p is not None]
            if not loaded:
                continue
            with self._model_lock:
                features = self.model.image_features(torch.stack([p for _, p in loaded]))
                tokens = self.model.decoder_tokens(features).float().cpu()
            for (item_id, _), row in zip(loaded, tokens):
                row = row.clone()  # not a view: a cached row must not keep the whole batch alive
                self._features.put(item_id, row)
                found[item_id] = row
        return [found[i] for i in ids]

    def _indexed_image(self, item_id: int, *, min_side: int | None = None) -> Image.Image:
        """An indexed image, decoded only while its file still holds the bytes that were indexed: the same size
        and mtime, or else the same sha256. A file since replaced (say by a link to another, private image) is
        refused with a UserError, never shown."""
        import hashlib

        from mammut_search.images import open_image_bytes, read_image_file
        from mammut_search.index.store import readable

        row = self.store.item(item_id)
        data, info = read_image_file(row["path"])  # the bytes checked are the bytes decoded
        if ((info.st_size, info.st_mtime) != (row["size"], row["mtime"])
                and hashlib.sha256(data).hexdigest() != row["sha256"]):
            raise UserError(f"{readable(row['path'])}: the file changed since it was indexed, so it is not "
                            "shown; run mammut index update")
        return open_image_bytes(data, name=readable(row["path"]), min_side=min_side)

    def _pixels_of(self, item_id: int) -> torch.Tensor | None:
        from mammut_search.inference import decode_side

        path = self.store.path_of(item_id)
        try:
            side = decode_side(self.model.config.image_encoder)
            return self.model.preprocess([self._indexed_image(item_id, min_side=side)])[0]
        except UserError as e:  # unreadable, or changed since it was indexed
            log.warning("re-ranking skips %s", e)
        except OSError as e:
            log.warning("re-ranking skips %s: %s", path, e.strerror or e)
        return None

    def _load_query_image(self, image: Image.Image | str | os.PathLike | bytes) -> Image.Image:
        """An image query through the safe loader, decoded no larger than the model needs, QUERY_DECODES at
        a time (so that simultaneous large uploads cannot add up)."""
        from PIL import Image

        from mammut_search.images import load_image, open_image_bytes
        from mammut_search.inference import decode_side

        if isinstance(image, Image.Image):
            return image
        side = decode_side(self.model.config.image_encoder)
        if isinstance(image, (bytes, bytearray)):
            with self._decode_slots:
                return open_image_bytes(bytes(image), min_side=side)
        if isinstance(image, (str, os.PathLike)):
            with self._decode_slots:
                return load_image(image, min_side=side)
        raise UserError(f"an image query must be a PIL image, a file path or bytes, not {type(image).__name__}")

    def _check_item(self, item_id: Any) -> int:
        try:
            value = int(item_id)
        except (TypeError, ValueError):
            raise UserError(f"{item_id!r}: not an image id") from None
        if value not in self._ok_id_set:
            raise UserError(f"{item_id}: no indexed image has this id")
        return value


@dataclass(frozen=True)
class _Generation:
    """One committed generation of the index and what the Searcher derives from it, swapped as a whole."""

    store: Any  # IndexStore
    ok_ids: np.ndarray
    ok_id_set: set[int]
    reference_ids: np.ndarray
    tokens: Any  # StoredTokens (a memory map, opened with the generation) or None: re-rank by decoding files

    @classmethod
    def of(cls, store, reference_images: int, stored_tokens: bool = True) -> "_Generation":
        ok_ids = store.ok_items["id"].to_numpy(np.int64)
        return cls(store, ok_ids, set(ok_ids.tolist()), _spread(np.sort(ok_ids), reference_images),
                   store.tokens if stored_tokens else None)


def _stamp(directory: Path) -> tuple[int, int, int] | None:
    """What changes when manifest.json is replaced: (inode, size, mtime in ns); None when it is missing."""
    try:
        info = os.stat(Path(directory) / MANIFEST_FILE)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise UserError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
    return int(k)


def _describe(image: Any) -> str:
    """How an image query is named in its results: its path, or what it was."""
    from mammut_search.index.store import readable

    if isinstance(image, (str, os.PathLike)):
        return readable(os.fspath(image))
    return "(image bytes)" if isinstance(image, (bytes, bytearray)) else "(image)"


def reference_words(tokenizer, count: int) -> list[str]:
    """`count` words spread evenly over the tokenizer's whole-word vocabulary, the same ones every time."""
    words = tokenizer.whole_words()
    if len(words) <= count:
        return words
    return [words[i] for i in np.linspace(0, len(words) - 1, count).round().astype(np.int64)]


def _spread(ids: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` ids spread evenly over the sorted ids (the same ones every time the index is opened)."""
    if len(ids) <= count:
        return ids
    return ids[np.linspace(0, len(ids) - 1, count).round().astype(np.int64)]

