"""What a query is before it reaches the model: text cleaned and cut to what the model reads, the number of
results checked, and query arithmetic (rclip's syntax): terms joined by ` + ` and ` - `, each a text or the path
of an image, e.g. `horse + stripes` or `beach.jpg - people + sunset`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mammut_search.errors import UserError

DEFAULT_K = 10
MAX_K = 1000
MAX_QUERY_CHARS = 1000  # longer text is cut before it reaches the tokenizer
MAX_TERMS = 8
_OPERATOR = re.compile(r"\s+([+-])\s+")


@dataclass(frozen=True)
class QueryTerm:
    """One term of a query: a text or an image (a PIL image, a file path or its bytes), and its weight
    (negative: away from it); `name` says how the results name it (default: its text or the image's path)."""

    text: str | None = None
    image: Any = None
    weight: float = 1.0
    name: str | None = None


def parse_arithmetic(query: str, *, files: bool = True) -> list[QueryTerm] | None:
    """`a + b - c` -> its terms; None for a query without ` + ` or ` - ` (a plain text query). A term naming
    an existing file is an image (unless `files` is False), any other a text; quotes around a term are dropped.
    A term that names a folder or a missing image file (x.jpg) is a UserError rather than a search for its words."""
    parts = _OPERATOR.split(" " + query.strip() + " ") if isinstance(query, str) else []
    if len(parts) < 3:
        return None
    from mammut_search.images import has_image_extension
    signs, texts = ["+"] + parts[1::2], [p.strip().strip("\"'").strip() for p in parts[0::2]]
    if len(texts) > MAX_TERMS:
        raise UserError(f"a query may combine at most {MAX_TERMS} terms, this one has {len(texts)}")
    if not texts[0]:
        raise UserError(f"{query!r} starts with {parts[1]!r}: put a term before it, e.g. beach.jpg - people")
    terms = []
    for sign, text in zip(signs, texts):
        if not text:
            raise UserError(f"{query!r}: an empty term beside a {sign!r}; write terms like: horse + stripes")
        weight = 1.0 if sign == "+" else -1.0
        path = os.path.expanduser(text)
        if files and not os.path.isfile(path) and (os.path.isdir(path) or has_image_extension(path)):
            raise UserError(f"{text}: {'a folder' if os.path.isdir(path) else 'no such file'}; a term naming an "
                            "image must be an image file")
        terms.append(QueryTerm(image=path, weight=weight) if files and os.path.isfile(path)
                     else QueryTerm(text=text, weight=weight))
    return terms


def check_terms(terms: Any) -> list[QueryTerm]:
    """The terms of a combined query, or a UserError naming the first bad one: a list of at most MAX_TERMS
    QueryTerms, each a text or an image (not both), each weight a finite number, some weight not 0."""
    if not isinstance(terms, (list, tuple)) or not all(isinstance(t, QueryTerm) for t in terms):
        raise UserError("a combined query is a list of QueryTerm")
    if len(terms) > MAX_TERMS:
        raise UserError(f"a query may combine at most {MAX_TERMS} terms, this one has {len(terms)}")
    for number, term in enumerate(terms, start=1):
        where = term.name or f"term {number} of the query"
        if (term.text is None) == (term.image is None):
            raise UserError(f"{where} must be either a text or an image, not both or neither")
        weight = term.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)) or not np.isfinite(weight):
            raise UserError(f"{where} has the weight {weight!r}; a weight is a finite number")
    if not any(t.weight for t in terms):
        raise UserError("a combined query needs at least one term with a weight other than 0")
    return list(terms)


def prepare_text(model, query: Any) -> tuple[str, str, bool]:
    """A text query -> (text for the model, text as the model reads it, whether it was cut)."""
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
    tokenizer, max_len = model.tokenizer, model.config.max_text_len
    if tokenizer.token_count(text) > max_len - 2:  # <bos> and <eos> take two places
        truncated = True
        shown = tokenizer.decode(tokenizer.encode([text], max_len)[0].tolist())
    else:
        shown = text
    return text, shown, truncated


def check_k(k: Any) -> int:
    """The number of results asked for (a whole number, 10.0 too: sliders send floats), or a UserError."""
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise UserError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
    return int(k)


def describe(image: Any) -> str:
    """How an image query is named in its results: its path, or what it was."""
    from mammut_search.index.store import readable

    if isinstance(image, (str, os.PathLike)):
        return readable(os.fspath(image))
    return "(image bytes)" if isinstance(image, (bytes, bytearray)) else "(image)"


def describe_terms(terms: list[QueryTerm]) -> str:
    """`horse + stripes - photo.jpg` (weights other than ±1 shown as `0.5×`)."""
    parts = []
    for i, term in enumerate(terms):
        sign = ("- " if term.weight < 0 else "+ ") if i else ("-" if term.weight < 0 else "")
        scale = "" if abs(term.weight) == 1 else f"{abs(term.weight):g}×"
        shown = term.name or (term.text if term.text is not None else describe(term.image))
        parts.append(f"{sign}{scale}{shown}")
    return " ".join(parts)
