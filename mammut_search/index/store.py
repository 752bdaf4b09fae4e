"""The index directory: index.faiss (vectors), items.parquet (one row per file), manifest.json (the commit point).

Writing a new generation is crash-safe: the data files are first written, fsynced, under pending names
(`items.parquet.gen7`), then manifest.json is atomically replaced (the commit), then the pending files are
renamed onto their final names. A reader that finds a pending file of the committed generation uses it, so the
last committed index stays loadable whatever moment a writer is killed at.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mammut_search.atomic import atomic_write, fsync_directory, remove_leftovers
from mammut_search.errors import IndexStoreError
from mammut_search.files import sha256_regular as file_sha256
from mammut_search.index.manifest import (SCHEMA_VERSION, Manifest, check_model, previous_manifest, read_manifest,
                                          readable, rebuild_command, write_manifest)
from mammut_search.index.keywords import KEYWORDS_FILE, KeywordIndex, open_keywords, write_keywords
from mammut_search.index.tokens import TOKENS_FILE, StoredTokens, open_tokens

INDEX_FILE, ITEMS_FILE = "index.faiss", "items.parquet"
DATA_FILES = (INDEX_FILE, ITEMS_FILE)
OPTIONAL_FILES = (TOKENS_FILE, KEYWORDS_FILE)  # missing in older indexes; described in the manifest when written
OK = "ok"

# The items table as the API exposes it; `path` is a str that may hold surrogate escapes (non-UTF-8 names).
ITEM_COLUMNS = ["id", "path", "size", "mtime", "sha256", "width", "height", "caption", "status"]
COLUMN_DTYPES = {"id": "int64", "path": object, "size": "int64", "mtime": "float64", "sha256": object,
                 "width": "int64", "height": "int64", "caption": object, "status": object}
# On disk, the exact path bytes are kept in `path_bytes` and `path` holds a readable UTF-8 rendering.
ITEMS_SCHEMA = pa.schema([
    ("id", pa.int64()), ("path", pa.string()), ("path_bytes", pa.binary()), ("size", pa.int64()),
    ("mtime", pa.float64()), ("sha256", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
    ("caption", pa.string()), ("status", pa.string()),
])

log = logging.getLogger(__name__)


def items_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts with ITEM_COLUMNS) -> an items DataFrame with stable column types."""
    # object dtype for strings: pandas' arrow-backed strings cannot hold the surrogate escapes of
    # non-UTF-8 file names
    return pd.DataFrame({
        column: pd.Series([r[column] for r in rows], dtype=COLUMN_DTYPES[column]) for column in ITEM_COLUMNS
    })


class IndexStore:
    """An opened index directory: `manifest`, `items` (DataFrame), `vectors` (VectorIndex, loaded on first use).

    The data files are checked against the manifest when they are read: their sizes, and their sha256 when
    the manifest records one (each file is hashed once per open), so a damaged file is refused, not served.
    """

    def __init__(self, directory: str | Path, manifest: Manifest, items: pd.DataFrame, *,
                 vectors=None, use_gpu: bool | None = None):
        self.directory = Path(directory)
        self.manifest = manifest
        self.items = items
        self._vectors = vectors
        self.use_gpu = use_gpu  # where vectors are searched: None, GPU when FAISS has one
        self._row_of_id: dict[int, int] | None = None
        self._vectors_lock = threading.Lock()
        self._tokens: StoredTokens | None | bool = False  # False: not looked for yet
        self._keywords: KeywordIndex | None | bool = False

    @classmethod
    def open(cls, index_dir: str | Path, *, model=None, use_gpu: bool | None = None) -> "IndexStore":
        """Open an index directory, refusing one of another schema version, a damaged one, or (when `model` is
        given) one built by another model."""
        directory = Path(index_dir)
        manifest = read_manifest(directory)
        if model is not None:
            check_model(directory, manifest, model)
        return cls(directory, manifest, read_items(directory, manifest), use_gpu=use_gpu)

    @property
    def vectors(self):
        """The VectorIndex (FAISS) of the ok items, keyed by item id; loaded (and verified) on first use."""
        with self._vectors_lock:
            if self._vectors is None:
                from mammut_search.index.vectors import VectorIndex

                path = verified_path(self.directory, INDEX_FILE, self.manifest)
                try:
                    self._vectors = VectorIndex.load(path, use_gpu=self.use_gpu)
                except Exception as e:  # FAISS raises RuntimeError for a damaged file
                    raise IndexStoreError(f"{path}: cannot read the vector index ({e}); rebuild with "
                                          f"{rebuild_command(self.directory, self.manifest)}") from None
            return self._vectors

    @property
    def tokens(self) -> StoredTokens | None:
        """The decoder's image tokens of the ok items (memory-mapped), or None when the index has none.

        Only the file's size is checked against the manifest: hashing 8 KB an image on every open would cost a
        cold query more than re-ranking saves, and a damaged tokens file can only change the order of results."""
        if self._tokens is False:  # concurrent first calls each open the same file: assigned once, whole
            tokens = None
            if self.manifest.rerank_tokens:
                path = committed_path(self.directory, TOKENS_FILE, self.manifest)
                if path.exists() and path.stat().st_size == self.manifest.files.get(TOKENS_FILE):
                    tokens = open_tokens(path, self.manifest.rerank_tokens, self.ok_items["id"].to_numpy(np.int64))
            self._tokens = tokens
        return self._tokens

    @property
    def keywords(self) -> KeywordIndex | None:
        """The keyword index of the ok items' names, folders and captions, or None when the index has none.
        Only its size is checked against the manifest (as for the tokens): a damaged one can only change the
        order of results, and search never serves an id that is not indexed."""
        if self._keywords is False:
            keywords = None
            path = committed_path(self.directory, KEYWORDS_FILE, self.manifest)
            if KEYWORDS_FILE in self.manifest.files and path.exists() \
                    and path.stat().st_size == self.manifest.files[KEYWORDS_FILE]:
                keywords = open_keywords(path)
            elif KEYWORDS_FILE in self.manifest.files:
                log.warning("%s: missing or changed; searching the images' latents only; rebuild the index to "
                            "mend it", path)
            self._keywords = keywords
        return self._keywords

    @property
    def ok_items(self) -> pd.DataFrame:
        """The rows that were indexed (status "ok"), i.e. the ones that have a vector."""
        return self.items[self.items["status"] == OK]

    def item(self, item_id: int) -> dict[str, Any]:
        """The items row of `item_id` as a dict; KeyError for an unknown id."""
        if self._row_of_id is None:
            self._row_of_id = {int(i): row for row, i in enumerate(self.items["id"].tolist())}
        row = self._row_of_id[int(item_id)]
        return {k: _plain(v) for k, v in self.items.iloc[row].to_dict().items()}

    def path_of(self, item_id: int) -> str:
        """The file path of `item_id` (a str that may hold surrogate escapes; pass it to open() as is)."""
        return self.item(item_id)["path"]

    def has_path(self, path: str) -> bool:
        """Whether `path` is a file listed in this index (the only files that may be served)."""
        return bool((self.items["path"] == path).any())

    def size_bytes(self) -> int:
        """Bytes the index directory's files take."""
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    @staticmethod
    def commit(index_dir: str | Path, items: pd.DataFrame, vectors, manifest: Manifest, *,
               tokens: Callable[[str], None] | None = None) -> "IndexStore":
        """Write a new generation of the index (items, vectors, then the manifest as the commit point)."""
        return commit_index(index_dir, items, vectors, manifest, tokens=tokens)


# ----- reading -----

def read_items(directory: Path, manifest: Manifest) -> pd.DataFrame:
    """items.parquet -> the items DataFrame, with exact (surrogate-escaped) paths restored."""
    path = verified_path(directory, ITEMS_FILE, manifest)
    try:
        table = pq.read_table(path)
        columns = {name: table.column(name).to_pylist() for name in ITEM_COLUMNS if name != "path"}
        columns["path"] = [os.fsdecode(b) for b in table.column("path_bytes").to_pylist()]
    except (OSError, KeyError, pa.ArrowException) as e:
        raise IndexStoreError(f"{path}: unreadable items table ({e}); rebuild with "
                              f"{rebuild_command(directory, manifest)}") from None
    return pd.DataFrame({name: pd.Series(columns[name], dtype=COLUMN_DTYPES[name]) for name in ITEM_COLUMNS})


def committed_path(directory: Path, name: str, manifest: Manifest) -> Path:
    """Where the committed generation of data file `name` is now (pending name if not yet renamed)."""
    pending = directory / pending_name(name, manifest.generation)
    return pending if pending.exists() else directory / name


def verified_path(directory: Path, name: str, manifest: Manifest) -> Path:
    """committed_path, after checking the file's size and (when recorded) sha256 against the manifest."""
    path = committed_path(directory, name, manifest)
    rebuild = rebuild_command(directory, manifest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IndexStoreError(f"{path}: missing; rebuild with {rebuild}") from None
    expected = manifest.files.get(name)
    if expected is not None and size != expected:
        raise IndexStoreError(f"{path}: {size} bytes, the manifest says {expected} (changed or damaged); "
                              f"rebuild with {rebuild}")
    checksum = manifest.checksums.get(name)
    if checksum and file_sha256(path) != checksum:
        raise IndexStoreError(f"{path}: damaged (its sha256 differs from the one in the manifest); "
                              f"rebuild with {rebuild}")
    return path


# ----- writing -----

def pending_name(name: str, generation: int) -> str:
    """File name of a data file written for `generation` but not yet renamed onto `name`."""
    return f"{name}.gen{generation}"


def commit_index(index_dir: str | Path, items: pd.DataFrame, vectors, manifest: Manifest, *,
                 tokens: Callable[[str], None] | None = None) -> IndexStore:
    """Write items and vectors as a new generation of `index_dir`, then commit it by replacing manifest.json.

    `manifest` holds the builder's fields (model, roots, last run, created when kept...); this function sets
    schema_version, generation, count, items, skipped, faiss_version, index, files, checksums and the dates.
    `tokens` writes the re-ranking tokens file (mammut_search.index.tokens) that `manifest.rerank_tokens`
    describes; without it the generation has none.
    """
    from mammut_search.index.vectors import faiss_version

    directory = Path(index_dir)
    directory.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    previous = previous_manifest(directory)
    finish_pending_renames(directory, previous)
    generation = (previous.generation if previous is not None else 0) + 1
    items = items[ITEM_COLUMNS].reset_index(drop=True)
    if items["id"].duplicated().any():
        raise ValueError("items have duplicate ids")

    vectors.save(directory / pending_name(INDEX_FILE, generation))
    atomic_write(directory / pending_name(ITEMS_FILE, generation), lambda tmp: _write_items_parquet(items, tmp))
    atomic_write(directory / pending_name(KEYWORDS_FILE, generation),
                 lambda tmp: write_keywords(items, manifest.roots, tmp))
    names = DATA_FILES + (KEYWORDS_FILE,)
    if tokens is not None and manifest.rerank_tokens:
        atomic_write(directory / pending_name(TOKENS_FILE, generation), tokens)
        names += (TOKENS_FILE,)
    else:
        manifest = replace(manifest, rerank_tokens={})
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    written = {name: directory / pending_name(name, generation) for name in names}
    manifest = replace(
        manifest,
        schema_version=SCHEMA_VERSION,
        generation=generation,
        count=int(vectors.ntotal),
        items=len(items),
        skipped=int((items["status"] != OK).sum()),
        faiss_version=faiss_version(),
        index=vectors.description,
        files={name: path.stat().st_size for name, path in written.items()},
        checksums={name: file_sha256(path) for name, path in written.items()},
        created=manifest.created or now,  # an update passes the original date; a rebuild does not
        updated=now,
    )
    write_manifest(directory, manifest)  # the commit point
    finish_pending_renames(directory, manifest)
    return IndexStore(directory, manifest, items, vectors=vectors)


def finish_pending_renames(directory: Path, manifest: Manifest | None) -> None:
    """Rename the committed generation's pending files into place and delete pending files never committed
    (and an optional file that the committed generation does not have)."""
    committed = manifest.generation if manifest is not None else None
    for path in directory.glob("*.gen*"):
        name, _, generation = path.name.rpartition(".gen")
        if name not in DATA_FILES + OPTIONAL_FILES or not generation.isdigit():
            continue
        if int(generation) == committed:
            os.replace(path, directory / name)
        else:
            path.unlink()
    for name in OPTIONAL_FILES:
        if manifest is not None and name not in manifest.files:
            (directory / name).unlink(missing_ok=True)
    fsync_directory(directory)


def _write_items_parquet(items: pd.DataFrame, path: str) -> None:
    paths = items["path"].tolist()
    columns = {name: items[name].tolist() for name in ITEMS_SCHEMA.names if name in items.columns}
    columns["path"] = [readable(p) for p in paths]
    columns["path_bytes"] = [os.fsencode(p) for p in paths]
    columns["caption"] = [readable(c) for c in columns["caption"]]
    columns["status"] = [readable(s) for s in columns["status"]]
    pq.write_table(pa.table(columns, schema=ITEMS_SCHEMA), path)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for dicts handed to callers and for JSON)."""
    return value.item() if hasattr(value, "item") else value
