"""What a query answers: ranked hits, and what the user should be told about them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class SearchHit:
    """One ranked image: `score` orders the hits (the similarity, the re-ranked score, or the fused rank
    score of a hybrid search); the other fields say why it was found."""

    rank: int  # 1-based
    id: int
    path: str  # exact path as indexed (may hold surrogate escapes for non-UTF-8 names)
    score: float
    caption: str
    similarity: float  # cosine similarity of the query and image latents
    likelihood: float | None = None  # log p(query | image) per token above the index baseline; None if not scored
    name_words: tuple[str, ...] = ()  # words of the query found in its file or folder names
    caption_words: tuple[str, ...] = ()  # words of the query found in its caption

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the path rendered readable)."""
        from mammut_search.index.store import readable

        data = asdict(self)
        return {**data, "path": readable(self.path), "name_words": list(self.name_words),
                "caption_words": list(self.caption_words)}

    def why(self) -> str:
        """Why it was found, in a few words: "name: birthday; caption: cake; similarity 0.412"."""
        parts = [f"name: {' '.join(self.name_words)}"] if self.name_words else []
        parts += [f"caption: {' '.join(self.caption_words)}"] if self.caption_words else []
        parts.append(f"similarity {self.similarity:.3f}")
        return "; ".join(parts)


@dataclass
class SearchResults:
    """The hits of one query and what the user should be told about it."""

    hits: list[SearchHit]
    query: str = ""  # the text actually searched (after truncation), or the image query's file
    kind: str = "text"  # "text", "image" or "item"
    reranked: bool = False
    truncated: bool = False  # the query was longer than the model reads
    hybrid: bool = False  # the file names, folders and captions were searched too
    nothing_matches: bool = False  # no candidate fits the query better than this index's cutoff
    match: float | None = None  # the best similarity of any image to the query (see mammut_search.relevance)
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
