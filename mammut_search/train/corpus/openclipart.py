"""OpenClipart metadata: the title and keywords in each SVG's RDF block, cleaned of file-name and collection noise."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

WORK = re.compile(r"<cc:Work\b.*?</cc:Work>", re.S)
TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
CREATOR = re.compile(r"<dc:creator>.*?<dc:title>(.*?)</dc:title>", re.S)
SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
ITEM = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)

# Titles that name a collection or a tool rather than the picture: the file name says more.
NOISY_TITLE = re.compile(
    r"collection|theme|icons?\b|clip ?art|svg|symbol_signs|map symbols|untitled|drawing\d*$|^layer|"
    r"^image$|^new document|\.(svg|png)$|^\W*$|^[\w-]+_[\w-]+$",
    re.I,
)
GENERIC_KEYWORDS = {
    "hash", "icon", "icons", "theme", "unsorted", "special", "clipart", "clip art", "svg", "signs_and_symbols",
    "image", "picture", "drawing", "media", "public domain", "openclipart", "externalsource", "mimeicon",
}
GENERIC_FOLDERS = {"unsorted", "special", "icons", "svg"}


@dataclass
class ClipartInfo:
    """What one clip-art file is of."""

    title: str
    keywords: list[str]


def _text(raw: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", raw)).split())


def _words_of(name: str) -> list[str]:
    return [w for w in re.split(r"[\s_\-+.]+", name) if w]


def clean_title(title: str, stem: str, creator: str) -> str:
    """A readable title: the RDF title unless it is noise, else the file name without author and numbers."""
    title = re.sub(r"(?<=[A-Za-z])\d+$", "", _text(title))  # "arrow04" -> "arrow"
    if title and not NOISY_TITLE.search(title):
        # Titles are Title Cased ("Bored Dog"); captions read better in lower case. Acronyms stay.
        return " ".join(w.lower() if w[:1].isupper() and w[1:].islower() else w for w in title.split())
    creator_words = [w.lower() for w in _words_of(creator)]
    kept = []
    for w in _words_of(stem):
        lw = w.lower()
        if lw.isdigit() or re.fullmatch(r"\d+[a-z]?|[a-z]?\d+", lw):
            continue
        # File names end in a truncated author name ("bored_dog_lumen_desig_01"): drop those words.
        if any(cw.startswith(lw) for cw in creator_words if len(lw) >= 2):
            continue
        kept.append(re.sub(r"(?<=[a-z])\d+$", "", lw))
    return " ".join(kept)


def clean_keywords(raw: list[str], title: str, folders: list[str], creator: str = "") -> list[str]:
    """Keywords without blanks, hashes, numbers, generic tags, and the title itself; folders added last."""
    out: list[str] = []
    for k in raw + [f for f in folders if f not in GENERIC_FOLDERS and not f.endswith("-theme")]:
        k = _text(k).replace("_", " ").strip().lower()
        noise = k in GENERIC_KEYWORDS or "theme" in k or re.fullmatch(r"0x[0-9a-f]+|\d+", k)
        if not k or noise or k in (title.lower(), creator.lower()):
            continue
        if k not in out:
            out.append(k)
    return out


def parse_clipart(path: Path, root: Path) -> ClipartInfo | None:
    """Title and keywords of one OpenClipart SVG, or None when nothing usable names it."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(65536)
    work = WORK.search(head)
    if work is None:
        with open(path, encoding="utf-8", errors="replace") as f:
            work = WORK.search(f.read())
    block = work.group(0) if work else ""
    title_m = TITLE.search(block)
    creator_m = CREATOR.search(block)
    subject_m = SUBJECT.search(block)
    creator = _text(creator_m.group(1)) if creator_m else ""
    title = clean_title(title_m.group(1) if title_m else "", path.stem, creator)
    raw_keywords = ITEM.findall(subject_m.group(1)) if subject_m else []
    folders = list(path.relative_to(root).parent.parts)[::-1]  # most specific first: "dogs", "mammals", "animals"
    keywords = clean_keywords(raw_keywords, title, folders, creator)
    if not title:
        if not keywords:
            return None
        title = keywords.pop(0)
    return ClipartInfo(title=title, keywords=keywords)
