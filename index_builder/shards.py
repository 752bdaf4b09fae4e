"""Encoded results checkpointed while a build runs, so a killed build resumes without encoding anything twice.

Layout: `INDEX_DIR/.work/meta.json` (which model and options made the shards) and `shard-00001.npz`, ...
each written atomically and keyed by image sha256. The directory is deleted once the index is committed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mammut_search.atomic import atomic_write

from index_builder.encode import Encoded

log = logging.getLogger(__name__)
WORK_DIR = ".work"


class ShardWriter:
    """Collects Encoded results and writes them as numbered shard files every `shard_size` images.

    `prefix` names this writer's files; parallel writers (one per rank) use distinct prefixes, and `load`
    reads every writer's shards.
    """

    def __init__(self, index_dir: str | Path, identity: dict[str, Any], *, shard_size: int = 1024,
                 prefix: str = "shard"):
        self.directory = Path(index_dir) / WORK_DIR
        self.identity = identity
        self.shard_size = shard_size
        self.prefix = prefix
        self.buffer: list[Encoded] = []
        self._prepare()
        self.next_number = 1 + max((_shard_number(p) for p in self.directory.glob(f"{prefix}-*.npz")), default=0)

    def _prepare(self) -> None:
        """Keep earlier shards only if the same model and options made them."""
        meta = self.directory / "meta.json"
        try:
            same = json.loads(meta.read_text()) == self.identity
        except (FileNotFoundError, ValueError):
            same = False
        if not same:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True)
            text = json.dumps(self.identity, sort_keys=True)
            atomic_write(meta, lambda tmp: Path(tmp).write_text(text))

    def load(self) -> dict[str, Encoded]:
        """sha256 -> Encoded, from every complete shard on disk."""
        results: dict[str, Encoded] = {}
        for path in sorted(self.directory.glob("shard*.npz")):
            try:
                for encoded in read_shard(path):
                    results[encoded.sha256] = encoded
            except (OSError, ValueError, KeyError) as e:  # cannot happen with atomic writes, but costs nothing
                log.warning("%s: unreadable shard ignored (%s)", path, e)
        return results

    def add(self, results: list[Encoded]) -> None:
        """Buffer results; write a shard once `shard_size` have gathered."""
        self.buffer.extend(results)
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered results as the next shard file."""
        if not self.buffer:
            return
        path = self.directory / f"{self.prefix}-{self.next_number:05d}.npz"
        atomic_write(path, lambda tmp: write_shard(tmp, self.buffer, int(self.identity["latent_dim"])))
        self.next_number += 1
        self.buffer = []



def remove_work(index_dir: str | Path) -> None:
    """Delete the work directory (once the index that used it is committed)."""
    shutil.rmtree(Path(index_dir) / WORK_DIR, ignore_errors=True)


def write_shard(path: str, results: list[Encoded], latent_dim: int) -> None:
    """Encoded results -> one .npz (no pickled objects)."""
    latents = np.zeros((len(results), latent_dim), np.float32)
    shape = next((r.tokens.shape for r in results if r.tokens is not None), (0, 0))
    tokens = np.zeros((len(results), *shape), np.float16)
    for i, r in enumerate(results):
        if r.latent is not None:
            latents[i] = r.latent
        if r.tokens is not None:
            tokens[i] = r.tokens
    with open(path, "wb") as f:
        np.savez(
            f,
            sha256=np.array([r.sha256 for r in results], dtype=str),
            status=np.array([r.status for r in results], dtype=str),
            caption=np.array([r.caption for r in results], dtype=str),
            width=np.array([r.width for r in results], np.int64),
            height=np.array([r.height for r in results], np.int64),
            latents=latents,
            tokens=tokens,
        )


def read_shard(path: str | Path) -> list[Encoded]:
    """One .npz shard -> its Encoded results."""
    with np.load(path, allow_pickle=False) as data:
        columns = {k: data[k] for k in ("sha256", "status", "caption", "width", "height", "latents", "tokens")}
    return [
        Encoded(str(sha), str(status), int(w), int(h), str(caption), latent.copy() if status == "ok" else None,
                tokens.copy() if status == "ok" and tokens.size else None)
        for sha, status, caption, w, h, latent, tokens in zip(*columns.values())
    ]


def _shard_number(path: Path) -> int:
    digits = path.stem.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else 0
