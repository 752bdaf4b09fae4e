"""The index directory: index.faiss (vectors), items.parquet (one row per file), manifest.json (the commit point).

Writing a new generation is crash-safe: the data files are first written, fsynced, under pending names
(`items.parquet.gen7`), then manifest.json is atomically replaced (the commit), then the pending files are
renamed onto their final names. A reader that finds a pending file of the committed generation uses it, so the
last committed index stays loadable whatever moment a writer is killed at.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mammut_search.atomic import atomic_write, fsync_directory
from mammut_search.errors import IndexStoreError

SCHEMA_VERSION = 1
INDEX_FILE, ITEMS_FILE, MANIFEST_FILE = "index.faiss", "items.parquet", "manifest.json"
DATA_FILES = (INDEX_FILE, ITEMS_FILE)
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


def readable(text: str) -> str:
    """A str that encodes as UTF-8: undecodable bytes of a file name (surrogate escapes) shown as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def empty_items() -> pd.DataFrame:
    """An items table with no rows and the right column types."""
    return items_frame([])


def items_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts with ITEM_COLUMNS) -> an items DataFrame with stable column types."""
    # object dtype for strings: pandas' arrow-backed strings cannot hold the surrogate escapes of
    # non-UTF-8 file names
    return pd.DataFrame({
        column: pd.Series([r[column] for r in rows], dtype=COLUMN_DTYPES[column]) for column in ITEM_COLUMNS
    })


class IndexStore:
    """An opened index directory: `manifest`, `items` (DataFrame), `vectors` (VectorIndex, loaded on first use)."""

    def __init__(self, directory: str | Path, manifest: dict[str, Any], items: pd.DataFrame, *,
                 vectors=None, use_gpu: bool | None = None):
        self.directory = Path(directory)
        self.manifest = manifest
        self.items = items
        self._vectors = vectors
        self._use_gpu = use_gpu
        self._row_of_id: dict[int, int] | None = None

    @classmethod
    def open(cls, index_dir: str | Path, *, checkpoint_sha256: str | None = None,
             use_gpu: bool | None = None) -> "IndexStore":
        """Open an index directory, refusing one of another schema version or (if given) another checkpoint."""
        directory = Path(index_dir)
        manifest = read_manifest(directory)
        if checkpoint_sha256 is not None and manifest["checkpoint_sha256"] != checkpoint_sha256:
            raise IndexStoreError(checkpoint_mismatch_message(directory, manifest, checkpoint_sha256))
        return cls(directory, manifest, read_items(directory, manifest), use_gpu=use_gpu)

    @property
    def vectors(self):
        """The VectorIndex (FAISS) of the ok items, keyed by item id; loaded on first use."""
        if self._vectors is None:
            from mammut_search.index.vectors import VectorIndex

            path = committed_path(self.directory, INDEX_FILE, self.manifest)
            try:
                self._vectors = VectorIndex.load(path, use_gpu=self._use_gpu)
            except IndexStoreError:
                raise
            except Exception as e:  # FAISS raises RuntimeError for a damaged file
                raise IndexStoreError(f"{path}: cannot read the vector index ({e}); rebuild with "
                                      f"{rebuild_command(self.directory, self.manifest)}") from None
        return self._vectors

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

    @staticmethod
    def commit(index_dir: str | Path, items: pd.DataFrame, vectors, manifest: dict[str, Any]) -> "IndexStore":
        """Write a new generation of the index (items, vectors, then the manifest as the commit point)."""
        return commit_index(index_dir, items, vectors, manifest)


# ----- reading -----

def read_manifest(directory: str | Path) -> dict[str, Any]:
    """manifest.json -> dict, refusing a missing directory, a missing or damaged manifest, or another schema."""
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexStoreError(f"{directory}: no such index directory; build one with "
                              f"mammut index build FOLDER... --out {directory}")
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        work = " (an interrupted build: run the same build command again to finish it)" \
            if (directory / ".work").is_dir() else ""
        raise IndexStoreError(f"{path}: missing, {directory} is not a complete index{work}") from None
    except (OSError, ValueError) as e:
        raise IndexStoreError(f"{path}: unreadable manifest ({e}); rebuild the index with mammut index build") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise IndexStoreError(f"{path}: index schema version {version}, this program reads version "
                              f"{SCHEMA_VERSION}; rebuild with {rebuild_command(directory, manifest)}")
    return manifest


def read_items(directory: Path, manifest: dict[str, Any]) -> pd.DataFrame:
    """items.parquet -> the items DataFrame, with exact (surrogate-escaped) paths restored."""
    path = committed_path(directory, ITEMS_FILE, manifest)
    try:
        table = pq.read_table(path)
        columns = {name: table.column(name).to_pylist() for name in ITEM_COLUMNS if name != "path"}
        columns["path"] = [os.fsdecode(b) for b in table.column("path_bytes").to_pylist()]
    except (OSError, KeyError, pa.ArrowException) as e:
        raise IndexStoreError(f"{path}: unreadable items table ({e}); rebuild with "
                              f"{rebuild_command(directory, manifest)}") from None
    return pd.DataFrame({name: pd.Series(columns[name], dtype=COLUMN_DTYPES[name]) for name in ITEM_COLUMNS})


def committed_path(directory: Path, name: str, manifest: dict[str, Any]) -> Path:
    """Where the committed generation of data file `name` is now (pending name if not yet renamed)."""
    pending = directory / pending_name(name, manifest.get("generation", 0))
    path = pending if pending.exists() else directory / name
    expected = manifest.get("files", {}).get(name)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IndexStoreError(f"{path}: missing; rebuild with {rebuild_command(directory, manifest)}") from None
    if expected is not None and size != expected:
        raise IndexStoreError(f"{path}: {size} bytes, the manifest says {expected} (changed or damaged); "
                              f"rebuild with {rebuild_command(directory, manifest)}")
    return path


def checkpoint_mismatch_message(directory: Path, manifest: dict[str, Any], model_sha: str) -> str:
    """The one-line refusal for an index made by another checkpoint."""
    built = manifest.get("checkpoint_sha256") or "(unsaved model)"
    return (f"{directory}: index was built with checkpoint {built[:12]}…, this model is "
            f"{(model_sha or '(unsaved model)')[:12]}…; rebuild with {rebuild_command(directory, manifest)}")


def rebuild_command(directory: Path, manifest: dict[str, Any] | None) -> str:
    """The command that rebuilds `directory` from its roots with the current model."""
    roots = (manifest or {}).get("roots") or ["FOLDER..."]
    return "mammut index build " + " ".join(readable(str(r)) for r in roots) + f" --out {directory} [--checkpoint DIR]"


# ----- writing -----

def pending_name(name: str, generation: int) -> str:
    """File name of a data file written for `generation` but not yet renamed onto `name`."""
    return f"{name}.gen{generation}"


def commit_index(index_dir: str | Path, items: pd.DataFrame, vectors, manifest: dict[str, Any]) -> IndexStore:
    """Write items and vectors as a new generation of `index_dir`, then commit it by replacing manifest.json.

    `manifest` holds the caller's fields (checkpoint_sha256, latent_dim, roots, created if not new...); this
    function adds schema_version, generation, count, items, skipped, files, faiss_version, index and updated.
    """
    import faiss

    directory = Path(index_dir)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _previous_manifest(directory)
    finish_pending_renames(directory, previous)
    generation = (previous or {}).get("generation", 0) + 1
    items = items[ITEM_COLUMNS].reset_index(drop=True)
    if items["id"].duplicated().any():
        raise ValueError("items have duplicate ids")

    vectors.save(directory / pending_name(INDEX_FILE, generation))
    atomic_write(directory / pending_name(ITEMS_FILE, generation), lambda tmp: _write_items_parquet(items, tmp))
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest = dict(manifest)
    manifest.update(
        schema_version=SCHEMA_VERSION,
        generation=generation,
        count=int(vectors.ntotal),
        items=len(items),
        skipped=int((items["status"] != OK).sum()),
        faiss_version=faiss.__version__,
        index=vectors.description,
        files={name: (directory / pending_name(name, generation)).stat().st_size for name in DATA_FILES},
        created=manifest.get("created") or now,  # an update passes the original date; a rebuild does not
        updated=now,
    )
    text = json.dumps(manifest, indent=2, sort_keys=True, default=_plain)
    atomic_write(directory / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(text))  # the commit point
    finish_pending_renames(directory, manifest)
    return IndexStore(directory, manifest, items, vectors=vectors)


def finish_pending_renames(directory: Path, manifest: dict[str, Any] | None) -> None:
    """Rename the committed generation's pending files into place and delete pending files never committed."""
    committed = (manifest or {}).get("generation")
    for path in directory.glob("*.gen*"):
        name, _, generation = path.name.rpartition(".gen")
        if name not in DATA_FILES or not generation.isdigit():
            continue
        if int(generation) == committed:
            os.replace(path, directory / name)
        else:
            path.unlink()
    fsync_directory(directory)


def _previous_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


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
