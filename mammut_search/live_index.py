"""The generation of an index that a Searcher serves, switched to a newer one between queries when
`mammut index update` commits it (noticed by the manifest's stat: cheap enough for every query)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammut_search.errors import UserError
from mammut_search.index.manifest import MANIFEST_FILE

log = logging.getLogger(__name__)
REFERENCE_IMAGES = 16  # indexed images whose likelihoods make the re-ranking baseline


@dataclass(frozen=True)
class Generation:
    """One committed generation of the index and what is derived from it, swapped as a whole."""

    store: Any  # IndexStore
    ok_ids: np.ndarray
    ok_id_set: frozenset[int]
    reference_ids: np.ndarray  # spread over the ids, the same every time the generation is opened

    @classmethod
    def of(cls, store) -> "Generation":
        ok_ids = store.ok_items["id"].to_numpy(np.int64)
        return cls(store, ok_ids, frozenset(ok_ids.tolist()), spread(np.sort(ok_ids), REFERENCE_IMAGES))


class LiveIndex:
    """Holds the generation served (`current`) and follows the index directory's commits."""

    def __init__(self, store, model):
        self.model = model
        self.current = Generation.of(store)
        self._stamp = stamp(store.directory)
        self._lock = threading.Lock()

    def served(self) -> Generation:
        """The generation to answer a query from: the newest committed one (see `follow`)."""
        self.follow()
        return self.current

    def check_item(self, item_id: Any) -> int:
        """An id of an indexed image of the generation served, or a UserError."""
        try:
            if isinstance(item_id, bool) or isinstance(item_id, float) and not item_id.is_integer():
                raise ValueError(item_id)  # 1.5, nan and inf are no ids, True is not 1
            value = int(item_id)
        except (TypeError, ValueError):
            raise UserError(f"{item_id!r}: not an image id") from None
        if value not in self.current.ok_id_set:
            raise UserError(f"{item_id}: no indexed image has this id")
        return value

    def follow(self) -> bool:
        """Switch to a newer committed generation if there is one. Ids of unchanged images stay. A new
        generation that cannot be opened is logged and the current one kept serving. -> whether it switched."""
        now = stamp(self.current.store.directory)
        if now == self._stamp:
            return False
        from mammut_search.index.store import IndexStore

        with self._lock:
            if now == self._stamp:
                return False
            current = self.current.store
            try:
                store = IndexStore.open(current.directory, model=self.model, use_gpu=current.use_gpu)
            except (UserError, OSError) as e:  # mid-commit, or damaged: the next query tries again
                log.warning("%s: still serving generation %d (%s)", current.directory, current.manifest.generation, e)
                return False
            if store.manifest.generation == current.manifest.generation:
                self._stamp = now
                return False
            store.vectors  # loaded before the switch: the next queries must not wait for it or fail on it
            self.current = Generation.of(store)
            self._stamp = now
            log.info("%s: now serving generation %d (%d images)", store.directory, store.manifest.generation,
                     len(self.current.ok_ids))
            return True

    def info(self, *, private: bool = False) -> dict[str, Any]:
        """What a user wants to know about the index served: size, skipped files, model, dates, where it runs;
        and `summary`, the (label, value) rows that `mammut index info` shows too."""
        from mammut_search.index.manifest import summary_rows
        from mammut_search.index.vectors import search_device

        store, m, device = self.current.store, self.current.store.manifest, str(self.model.device)
        return {"index": str(store.directory.resolve()), "images": m.count, "skipped": m.skipped,
                "roots": list(m.roots), "checkpoint_sha256": m.checkpoint_sha256, "checkpoint_dir": m.checkpoint_dir,
                "generation": m.generation, "created": m.created, "updated": m.updated, "device": device,
                "summary": summary_rows(store.directory, m, search=search_device(store.use_gpu),
                                        model_device=device, private=private)}


def stamp(directory: Path) -> tuple[int, int, int] | None:
    """What changes when manifest.json is replaced: (inode, size, mtime in ns); None when it is missing."""
    try:
        info = os.stat(Path(directory) / MANIFEST_FILE)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def spread(ids: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` ids spread evenly over the sorted ids."""
    if len(ids) <= count:
        return ids
    return ids[np.linspace(0, len(ids) - 1, count).round().astype(np.int64)]
