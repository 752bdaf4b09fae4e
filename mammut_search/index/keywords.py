"""The keyword index: each indexed image's file name, folder names and generated caption, searchable as words.

`keywords.sqlite`, an SQLite FTS5 table (from Python's standard library) written beside the vectors in the same
generation and committed by the same manifest. Words are matched after Porter stemming ("birthdays" finds
"birthday"), file names split at any non-letter ("IMG_4031.jpg" holds "img" and "4031"), ranked by BM25.
Why FTS5 and not a BM25 package: benchmarks/RESULTS.md, "Keyword index".
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
KEYWORDS_FILE = "keywords.sqlite"
COLUMNS = ("name", "folders", "caption")
# words that say nothing about what is in a picture (and would match every caption)
STOP_WORDS = frozenset(
    "a an the of with and or in on at to for by from is are be it its this that these those his her their my our "
    "your some one two three over under up down into out off near next very s "
    "picture photo photograph image drawing icon emoji".split())
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class KeywordHit:
    """An item whose words hold some of the query's, best first."""

    id: int
    name_words: tuple[str, ...]
    caption_words: tuple[str, ...]


def query_words(text: str) -> list[str]:
    """The words of a query worth looking up: lower-case, stop words left out, each once."""
    return list(dict.fromkeys(w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS and w != "_"))


def item_fields(path: str, caption: str, roots: Sequence[str]) -> tuple[str, str, str]:
    """(file name without extension, folder names from the root's own name down, caption) of one item."""
    from mammut_search.index.manifest import readable

    path = readable(path)
    folder, name = os.path.split(path)
    root = max((r for r in map(readable, roots) if path.startswith(r.rstrip(os.sep) + os.sep)), key=len, default=None)
    base = os.path.dirname(root.rstrip(os.sep)) if root else os.path.dirname(folder)
    folders = os.path.relpath(folder, base) if base else folder
    return os.path.splitext(name)[0], " ".join(p for p in folders.split(os.sep) if p not in ("", ".", "..")), caption


def write_keywords(items: pd.DataFrame, roots: Sequence[str], path: str) -> None:
    """Write the keyword index of the ok `items` (whose files lie under `roots`) to a new file at `path`."""
    ok = items[items["status"] == "ok"]
    rows = ((int(i), *item_fields(p, c or "", roots)) for i, p, c in zip(ok["id"], ok["path"], ok["caption"]))
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=OFF")  # a new file, made crash-safe by its rename, not by a journal
        db.execute("PRAGMA synchronous=OFF")
        db.execute(f"CREATE VIRTUAL TABLE words USING fts5({', '.join(COLUMNS)}, tokenize='porter unicode61')")
        db.executemany("INSERT INTO words(rowid, name, folders, caption) VALUES (?, ?, ?, ?)", rows)
        db.execute("INSERT INTO words(words) VALUES ('optimize')")
        db.commit()
    finally:
        db.close()


class KeywordIndex:
    """An opened keyword index, read-only; any number of threads may search it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                   check_same_thread=False)
        self._lock = threading.Lock()
        self._damaged = False  # said once; then searched no more

    def search(self, text: str, limit: int) -> list[KeywordHit]:
        """The items holding any of the query's words, by BM25 rank, at most `limit`."""
        words = query_words(text)
        if not words or self._damaged:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        marks = ", ".join(f"highlight(words, {c}, '{_MARK_OPEN}', '{_MARK_CLOSE}')" for c in range(len(COLUMNS)))
        sql = f"SELECT rowid, {marks} FROM words WHERE words MATCH ? ORDER BY rank LIMIT ?"
        try:
            with self._lock:
                rows = self._db.execute(sql, (match, int(limit))).fetchall()
        except sqlite3.DatabaseError as e:  # a damaged file of the right size: the images' latents still answer
            self._damaged = True
            log.warning("%s: cannot search the keyword index (%s); searching the images' latents only; "
                        "rebuild the index to mend it", self.path, e)
            return []
        return [_hit(*row) for row in rows]

    def close(self) -> None:
        self._db.close()


def open_keywords(path: Path) -> KeywordIndex | None:
    """The keyword index at `path`, or None (logged) when it cannot be opened."""
    try:
        return KeywordIndex(path)
    except sqlite3.Error as e:
        log.warning("%s: cannot open the keyword index (%s); searching vectors only", path, e)
        return None


def _hit(item_id: int, name: str | None, folders: str | None, caption: str | None) -> KeywordHit:
    """A result row -> its hit: the marked words of the name and folders (each once), and of the caption."""
    name_words = _marked(name)
    return KeywordHit(int(item_id), name_words + tuple(w for w in _marked(folders) if w not in name_words),
                      _marked(caption))


def _marked(text: str | None) -> tuple[str, ...]:
    """The words highlight() marked in a column, lower-case, each once."""
    found = re.findall(f"{_MARK_OPEN}(.*?){_MARK_CLOSE}", text or "", flags=re.S)
    return tuple(dict.fromkeys(w.lower() for w in found))
