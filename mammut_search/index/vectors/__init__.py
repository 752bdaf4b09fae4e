"""The FAISS vector index of an index directory: search, reconstruct, add, remove, save, load.

Vectors are unit-norm latents compared by inner product (cosine similarity). Ids are the items table's int64
ids, stored inside FAISS (IndexIDMap2 around flat and refined IVF-PQ indexes, native ids in the other
IVF indexes with a hash table direct map) so they stay stable across additions and removals. Which index to
build, and with which search parameters, is decided in `ann`; what is specific to each kind of FAISS index
lives in its class in `kinds`; exact search is `exact`. This module only serves what was built. Nothing
outside mammut_search/index imports faiss.

Concurrency: any number of threads may search and reconstruct at once; `add` and `remove` wait for them and
run alone. Search parameters (nprobe, k_factor) are passed per call as FAISS SearchParameters, so nothing a
search does changes the shared index. A GPU copy, when FAISS has GPUs, serves one search at a time.

File format: a plain FAISS index file (`faiss.read_index` opens it) followed by a small trailer holding the
description as JSON, so that the tuned search parameters and the measured recall travel with the vectors.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import struct
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mammut_search.atomic import atomic_write
from mammut_search.index.vectors.exact import exact_knn
from mammut_search.index.vectors.kinds import KINDS, Flat, kind_of

log = logging.getLogger(__name__)

TRAILER_MAGIC = b"MAMMUTVI"  # ends every file written by save(); the JSON length precedes it
GPU_MAX_K = 2048  # FAISS GPU search returns at most this many neighbours; larger k is searched on the CPU
CHECK_BLOCK = 1 << 18  # rows checked at a time (a block of 256-d float32 vectors is 256 MB)


class VectorIndex:
    """Unit vectors keyed by int64 ids, searched by inner product; thread-safe search.

    `description` says what it is: type (flat, ivf_flat, ivf_sq8, ivf_pq, ivf_pq_refine), params (nprobe /
    k_factor used by search), the recall@10 measured against exact search when it was built, and
    on_gpu. ivf_sq8, ivf_pq and ivf_pq_refine store compressed vectors (8 bits per dimension; PQ codes; PQ
    codes whose candidates are re-ranked with finer scalar-quantized codes), so their reconstruct() is
    approximate. ivf_pq_refine serves from the CPU only.
    """

    def __init__(self, faiss_index, description: dict[str, Any] | None = None, *, use_gpu: bool | None = None):
        """Wrap a CPU FAISS index with inner-product metric (see mammut_search.index.vectors.ann for building one)."""
        import faiss

        if faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("vector index must use the inner-product metric (unit vectors, cosine similarity)")
        self._index = faiss_index
        self._kind = kind_of(faiss_index)
        self._description = {"type": self._kind.name, "params": self._kind.default_params(faiss_index)}
        if self._kind.nlist(faiss_index) is not None:
            self._description["nlist"] = self._kind.nlist(faiss_index)
        self._description.update(_json_ready(description or {}))
        self._description["type"] = self._kind.name
        self._description.pop("on_gpu", None)
        self._ids = np.sort(self._kind.stored_ids(faiss_index))
        self._lock = _ReadWriteLock()
        self._gpu_lock = threading.Lock()  # guards the GPU copy: its creation and its one-at-a-time searches
        self._gpu = None
        self._use_gpu = _gpu_wanted(use_gpu) and self._kind.gpu
        self._row_ids: np.ndarray | None = None  # flat: the id of each stored row and -1, until the next change
        self._flat_copy: np.ndarray | None = None  # flat: the stored vectors in numpy memory, until the next change

    # ----- what it holds -----

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        """Number of vectors."""
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def kind(self) -> str:
        """flat (exact), ivf_flat, ivf_sq8, ivf_pq or ivf_pq_refine."""
        return self._description["type"]

    @property
    def description(self) -> dict[str, Any]:
        """What this index is (type, params, measured recall, ...) as a JSON-ready dict; a copy."""
        return _json_ready({**self._description, "on_gpu": self._use_gpu})

    def describe(self, **fields: Any) -> None:
        """Record more facts in the description (e.g. a recall measured after an update)."""
        with self._lock.writing():
            self._description.update(_json_ready(fields))
            if "params" in fields:
                self._gpu = None  # the GPU copy carries the old parameters

    def ids(self) -> np.ndarray:
        """The stored ids, sorted (int64)."""
        with self._lock.reading():
            return self._ids.copy()

    def __contains__(self, item_id: int) -> bool:
        position = np.searchsorted(self._ids, item_id)
        return bool(position < len(self._ids) and self._ids[position] == item_id)

    # ----- reading -----

    def search(self, queries: np.ndarray, k: int, *,
               search_params: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (q k) float32, ids (q k) int64); missing slots have id -1, score -inf.

        `search_params` ({"nprobe": n}, {"k_factor": f}) overrides the tuned ones for this
        call only.
        """
        queries = self._check_queries(queries)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, not {k!r}")
        k = int(k)
        with self._lock.reading():
            if self.ntotal == 0 or len(queries) == 0:
                return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            if self._use_gpu and not search_params and k <= GPU_MAX_K:
                scores, ids = self._search_gpu(queries, k)
            elif self._kind.exact:  # a matrix product: faster than FAISS's flat search on a CPU
                scores, rows = exact_knn(self._flat_vectors(), queries, k)
                return scores, self._flat_row_ids()[rows]  # row -1 (no result) reads the -1 kept at the end
            else:
                params = {**self._description.get("params", {}), **(search_params or {})}
                scores, ids = self._index.search(queries, k, params=self._kind.search_params(params))
        ids = ids.astype(np.int64, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids

    def reconstruct(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """The stored vectors of `ids` (n d) float32; KeyError if one is absent. Bit-exact for flat and
        ivf_flat; decoded from the compressed codes for ivf_sq8, ivf_pq and ivf_pq_refine (its finer codes)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock.reading():
            missing = ids[~np.isin(ids, self._ids)]
            if len(missing):
                raise KeyError(f"ids not in the vector index: {_some(missing)}")
            if len(ids) == 0:
                return np.zeros((0, self.dim), np.float32)
            return self._index.reconstruct_batch(ids)

    # ----- changing -----

    def add(self, vectors: np.ndarray, ids: np.ndarray | list[int]) -> None:
        """Add vectors (n d) under new, unique, non-negative int64 ids; stored vectors stay bit-identical."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        check_vectors(vectors, ids, self.dim)
        if len(ids) == 0:
            return
        with self._lock.writing():
            taken = ids[np.isin(ids, self._ids)]
            if len(taken):
                raise ValueError(f"ids already in the vector index: {_some(taken)}; remove them first")
            self._index.add_with_ids(vectors, ids)
            self._ids = np.union1d(self._ids, ids)
            self._gpu = self._row_ids = self._flat_copy = None

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove the vectors of `ids` (KeyError if one is absent); the others stay bit-identical. Returns the count."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) == 0:
            return 0
        with self._lock.writing():
            missing = ids[~np.isin(ids, self._ids)]
            if len(missing):
                raise KeyError(f"ids not in the vector index: {_some(missing)}")
            self._index = self._kind.remove(self._index, ids, np.setdiff1d(self._ids, ids))
            self._ids = np.setdiff1d(self._ids, ids)
            self._gpu = self._row_ids = self._flat_copy = None
        return len(ids)

    # ----- files -----

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to `path` atomically (mammut_search.atomic): a plain FAISS index file followed by
        the description trailer."""
        import faiss

        def write(tmp: str) -> None:
            with self._lock.reading():
                description = json.dumps({k: v for k, v in self._description.items() if k != "on_gpu"}).encode()
                if _encodable(tmp):
                    faiss.write_index(self._index, tmp)  # streams: no second copy of the index in memory
                else:
                    np.asarray(faiss.serialize_index(self._index)).tofile(tmp)
            with open(tmp, "ab") as f:
                f.write(description + struct.pack("<Q", len(description)) + TRAILER_MAGIC)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | os.PathLike, *, use_gpu: bool | None = None) -> "VectorIndex":
        """Read an index written by save() (or any inner-product FAISS index file); GPU when available unless
        use_gpu is False. ValueError for a file that is not one."""
        require_faiss()
        import faiss

        description = _read_trailer(Path(path))  # also raises FileNotFoundError for a missing file
        try:
            if _encodable(path):
                index = faiss.read_index(os.fspath(path))
            else:
                index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        except RuntimeError as e:
            raise ValueError(f"{path}: not a FAISS index ({str(e).strip().splitlines()[-1]})") from None
        return cls(index, description, use_gpu=use_gpu)

    # ----- inside -----

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (q, {self.dim}), not {tuple(queries.shape)}")
        return np.ascontiguousarray(queries)

    def _flat_vectors(self) -> np.ndarray:
        """A flat index's vectors (n d) as a numpy array of their own (made at the first search after a change;
        callers hold the read lock). Held twice, FAISS's copy and this one, for speed: numpy backs large arrays
        with transparent huge pages and FAISS's buffer has none, and a one-query search reads every vector, so
        the product runs faster on the numpy array (benchmarks/RESULTS.md, "Exact search")."""
        vectors = self._flat_copy
        if vectors is None:
            vectors = self._flat_copy = np.array(Flat.vectors(self._index))
        return vectors

    def _flat_row_ids(self) -> np.ndarray:
        """The id of each row of a flat index, then -1, so that row -1 maps to id -1 (cached until the next
        change; callers hold the read lock)."""
        row_ids = self._row_ids
        if row_ids is None:
            row_ids = self._row_ids = np.append(self._kind.stored_ids(self._index), np.int64(-1))
        return row_ids

    def _search_gpu(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._gpu_lock:
            if self._gpu is None:
                self._gpu = self._gpu_copy()
            if self._gpu is None:  # the copy failed; serve from the CPU from now on
                self._use_gpu = False
                return self._index.search(queries, k, params=self._kind.search_params(self._description["params"]))
            return self._gpu.search(queries, k)

    def _gpu_copy(self):
        """A copy of the index on all GPUs, with the tuned search parameters set on it (it is ours alone)."""
        try:
            return self._kind.to_gpu(self._index, self._description.get("params", {}))
        except Exception as e:  # e.g. a GPU build without this index type, or out of GPU memory
            log.warning("vector index stays on the CPU: cannot copy it to the GPU (%s)", e)
            return None


def check_vectors(vectors: np.ndarray, ids: np.ndarray, dim: int | None = None) -> None:
    """Raise ValueError unless vectors is (n d) finite float32 and ids are n unique non-negative int64."""
    if vectors.ndim != 2 or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(f"vectors must have shape (n, {dim if dim is not None else 'd'}), not {vectors.shape}")
    if ids.shape != (len(vectors),):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
    if len(ids) and ids.min() < 0:
        raise ValueError(f"ids must be non-negative (-1 means 'no result'): {_some(ids[ids < 0])}")
    if len(np.unique(ids)) != len(ids):
        values, counts = np.unique(ids, return_counts=True)
        raise ValueError(f"duplicate ids: {_some(values[counts > 1])}")
    for start in range(0, len(vectors), CHECK_BLOCK):  # in blocks: `vectors` may be a memmap larger than memory
        if not np.isfinite(vectors[start:start + CHECK_BLOCK]).all():
            raise ValueError("vectors contain NaN or infinity")


# ----- FAISS details -----

FAISS_DISTRIBUTIONS = ("faiss-gpu-cu12", "faiss-gpu", "faiss-cpu")  # pip packages that ship the faiss module


def require_faiss() -> None:
    """UserError saying how to install FAISS when no build of it is installed."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        from mammut_search.errors import UserError

        raise UserError("FAISS is not installed: pip install 'mammut-search[cpu]', or 'mammut-search[gpu]' on a "
                        "machine with an NVIDIA GPU (one of the two, never both)") from None


def faiss_version() -> str:
    """The installed FAISS version."""
    import faiss

    return faiss.__version__


def faiss_build() -> tuple[str, str]:
    """(pip distribution, version) of the installed FAISS, e.g. ("faiss-cpu", "1.12.0"), read from the package
    metadata without importing faiss; ("faiss", "?") when installed some other way."""
    from importlib import metadata

    for name in FAISS_DISTRIBUTIONS:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "faiss", "?"


def gpu_count() -> int:
    """GPUs this FAISS build can use (0 for the CPU build, faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def search_device(use_gpu: bool | None = None) -> str:
    """Where vectors are searched and with which FAISS build, in words, for `index info` and the UI; does not
    import faiss when nothing has (`index info` stays light): the GPUs are then the driver's."""
    name, version = faiss_build()
    gpu_build = "gpu" in name
    if "faiss" in sys.modules:
        gpus = gpu_count()
    else:
        gpus = len(glob.glob("/proc/driver/nvidia/gpus/*")) if gpu_build else 0
    build = f"{name} {version} ({'GPU' if gpu_build else 'CPU'} build)"
    if gpus and use_gpu is not False:
        return f"GPU ({gpus} GPU{'s' if gpus > 1 else ''}), {build}"
    return f"CPU, {build}"


def _gpu_wanted(use_gpu: bool | None) -> bool:
    gpus = gpu_count()
    if use_gpu and gpus == 0:
        log.warning("use_gpu requested but this FAISS build sees no GPU; searching on the CPU")
    return bool(gpus > 0 and use_gpu is not False)


def _read_trailer(path: Path) -> dict[str, Any]:
    """The description JSON at the end of a file written by save(), or {} for a plain FAISS file."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail = len(TRAILER_MAGIC) + 8
        if size < tail:
            return {}
        f.seek(size - tail)
        length_bytes, magic = f.read(8), f.read(len(TRAILER_MAGIC))
        if magic != TRAILER_MAGIC:
            return {}
        (length,) = struct.unpack("<Q", length_bytes)
        if length > size - tail:
            raise ValueError(f"{path}: damaged vector index file (bad description length)")
        f.seek(size - tail - length)
        text = f.read(length)
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: damaged vector index description ({e})") from None


def _encodable(path: str | os.PathLike) -> bool:
    """Whether FAISS (which takes UTF-8 C strings) can be handed this path."""
    try:
        os.fspath(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _json_ready(value: dict[str, Any]) -> dict[str, Any]:
    """A deep copy holding only JSON types (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _some(values: np.ndarray, shown: int = 5) -> str:
    head = ", ".join(str(int(v)) for v in values[:shown])
    return head + (f" … ({len(values)} in all)" if len(values) > shown else "")


class _ReadWriteLock:
    """Many readers at once, or one writer; a waiting writer holds back new readers so it is not starved."""

    def __init__(self):
        self._condition = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._reading = _Reading(self)

    def reading(self) -> "_Reading":
        """`with lock.reading():` runs the block alongside other readers."""
        return self._reading

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


class _Reading:
    """The read side of a _ReadWriteLock as a context manager. Every search passes through it, so it is a plain
    object rather than a generator-based one, which took twice as long with the caches cold."""

    __slots__ = ("_lock",)

    def __init__(self, lock: _ReadWriteLock):
        self._lock = lock

    def __enter__(self) -> None:
        lock = self._lock
        with lock._condition:
            while lock._writer or lock._writers_waiting:
                lock._condition.wait()
            lock._readers += 1

    def __exit__(self, *exc_info) -> None:
        lock = self._lock
        with lock._condition:
            lock._readers -= 1
            if lock._readers == 0 and lock._writers_waiting:  # only a writer waits for the readers to leave
                lock._condition.notify_all()
