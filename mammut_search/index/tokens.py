"""The decoder's image tokens stored beside the vectors, so that re-ranking reads them instead of decoding and
encoding every candidate image again (a cold query then costs what a warm one does).

`image_tokens.npy`: one float16 array (n q d) in .npy format, read memory-mapped; row r belongs to the ok item
with the r-th smallest id. The manifest describes it under `rerank_tokens` (version, shape, dtype, rows). An
index without it (built before it existed, or updated from such an index) still works: re-ranking then decodes
the candidates' files.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

TOKENS_FILE = "image_tokens.npy"
TOKENS_VERSION = 1
_CHUNK = 4096  # rows assembled at a time: memory stays bounded however large the index


def describe(rows: int, shape: Sequence[int]) -> dict[str, Any]:
    """The manifest entry of a tokens file of `rows` rows of `shape` (q d)."""
    return {"version": TOKENS_VERSION, "rows": int(rows), "shape": [int(s) for s in shape], "dtype": "float16"}


def tokens_writer(ids: np.ndarray, row_of: Callable[[int], np.ndarray], shape: Sequence[int]) -> Callable[[str], None]:
    """A writer (path -> None) of the tokens file for the ok item `ids` (ascending), each row from `row_of(id)`."""

    def write(path: str) -> None:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(ids), *shape))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            out[start:start + len(chunk)] = np.stack([row_of(int(i)) for i in chunk])
        out.flush()
        del out

    return write


class StoredTokens:
    """The tokens file of an opened index: `rows(ids)` -> float32 tokens (b q d) read from the memory map."""

    def __init__(self, array: np.ndarray, ids: np.ndarray):
        self.array = array
        self.ids = np.sort(np.asarray(ids, np.int64))  # row r <-> r-th smallest ok id

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape[1:])

    def rows(self, ids: Sequence[int]) -> np.ndarray:
        """Tokens (b q d), float32, of ok item ids; KeyError for an id that has none."""
        wanted = np.asarray(ids, np.int64)
        rows = np.searchsorted(self.ids, wanted)
        if len(wanted) and (rows.max() >= len(self.ids) or (self.ids[rows] != wanted).any()):
            raise KeyError("an id without stored tokens")
        return self.array[rows].astype(np.float32)  # fancy indexing reads only these rows of the map

    def row(self, item_id: int) -> np.ndarray:
        """Tokens (q d), float16, of one ok item id."""
        return np.asarray(self.array[int(np.searchsorted(self.ids, item_id))])


def open_tokens(path, entry: dict[str, Any], ok_ids: np.ndarray) -> StoredTokens | None:
    """The tokens file that the manifest's `rerank_tokens` entry describes, or None when it does not fit."""
    if not entry or entry.get("version") != TOKENS_VERSION or entry.get("rows") != len(ok_ids):
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.float16 or list(array.shape) != [len(ok_ids), *entry["shape"]]:
        return None
    return StoredTokens(array, ok_ids)
