"""The FAISS vector index of an index directory: search, reconstruct, add, remove, save, load.

Vectors are unit-norm latents compared by inner product (cosine similarity). Ids are the items table's int64
ids, stored inside FAISS (IndexIDMap2 around flat, HNSW and refined IVF-PQ indexes, native ids in the other
IVF indexes with a hash table direct map) so they stay stable across additions and removals. Which index to
build, and with which search parameters, is decided in `mammut_search.index.vectors.ann`; this module only serves what was built.

Concurrency: any number of threads may search and reconstruct at once; `add` and `remove` wait for them and
run alone. Search parameters (nprobe, efSearch, k_factor) are passed per call as FAISS SearchParameters, so nothing a
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

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf_flat", "ivf_sq8", "ivf_pq", "ivf_pq_refine", "hnsw")
TRAILER_MAGIC = b"MAMMUTVI"  # ends every file written by save(); the JSON length precedes it
GPU_MAX_K = 2048  # FAISS GPU search returns at most this many neighbours; larger k is searched on the CPU
CHECK_BLOCK = 1 << 18  # rows checked at a time (a block of 256-d float32 vectors is 256 MB)


class VectorIndex:
    """Unit vectors keyed by int64 ids, searched by inner product; thread-safe search.

    `description` says what it is: type (flat, ivf_flat, ivf_sq8, ivf_pq, ivf_pq_refine, hnsw), params (nprobe /
    efSearch / k_factor used by search), the recall@10 measured against exact search when it was built, and
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
        kind = _kind_of(faiss_index)
        self._description = {"type": kind, "params": _default_params(faiss_index, kind)}
        if kind.startswith("ivf"):
            self._description["nlist"] = int(_ivf_part(faiss_index).nlist)
        self._description.update(_json_ready(description or {}))
        self._description["type"] = kind
        self._description.pop("on_gpu", None)
        self._ids = np.sort(_stored_ids(faiss_index))
        self._lock = _ReadWriteLock()
        self._gpu_lock = threading.Lock()  # guards the GPU copy: its creation and its one-at-a-time searches
        self._gpu = None
        self._use_gpu = _gpu_wanted(use_gpu) and kind != "hnsw"  # FAISS has no GPU HNSW

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
        """flat (exact), ivf_flat, ivf_sq8, ivf_pq, ivf_pq_refine or hnsw."""
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

        `search_params` ({"nprobe": n}, {"efSearch": e}, {"k_factor": f}) overrides the tuned ones for this
        call only.
        """
        queries = self._check_queries(queries)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, not {k!r}")
        k = int(k)
        params = {**self._description.get("params", {}), **(search_params or {})}
        with self._lock.reading():
            if self.ntotal == 0 or len(queries) == 0:
                return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            if self._use_gpu and not search_params and k <= GPU_MAX_K:
                scores, ids = self._search_gpu(queries, k)
            else:
                scores, ids = self._index.search(queries, k, params=_faiss_params(self.kind, params))
        ids = ids.astype(np.int64, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids

    def reconstruct(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """The stored vectors of `ids` (n d) float32; KeyError if one is absent. Bit-exact for flat, ivf_flat and
        hnsw; decoded from the compressed codes for ivf_sq8, ivf_pq and ivf_pq_refine (its finer codes)."""
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
            self._gpu = None

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove the vectors of `ids` (KeyError if one is absent); the others stay bit-identical. Returns the count."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) == 0:
            return 0
        with self._lock.writing():
            missing = ids[~np.isin(ids, self._ids)]
            if len(missing):
                raise KeyError(f"ids not in the vector index: {_some(missing)}")
            if self.kind == "hnsw":
                self._index = _hnsw_without(self._index, ids, np.setdiff1d(self._ids, ids))
            elif self.kind == "ivf_pq_refine":
                _remove_refined(self._index, ids)
            else:
                removed = self._index.remove_ids(ids)
                if removed != len(ids):
                    raise RuntimeError(f"FAISS removed {removed} of {len(ids)} vectors")
            self._ids = np.setdiff1d(self._ids, ids)
            self._gpu = None
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

    def _search_gpu(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._gpu_lock:
            if self._gpu is None:
                self._gpu = self._gpu_copy()
            if self._gpu is None:  # the copy failed; serve from the CPU from now on
                self._use_gpu = False
                return self._index.search(queries, k, params=_faiss_params(self.kind, self._description["params"]))
            return self._gpu.search(queries, k)

    def _gpu_copy(self):
        """A copy of the index on all GPUs, with the tuned search parameters set on it (it is ours alone)."""
        import faiss

        if self.kind == "ivf_pq_refine":  # FAISS has no GPU version of the re-ranking step
            log.warning("vector index stays on the CPU: FAISS cannot copy a refined IVF-PQ index to the GPU")
            return None
        try:
            options = faiss.GpuMultipleClonerOptions()
            # several GPUs: each holds a share of the vectors (an IndexShards) and their results are merged,
            # so the index can be as large as their memory together; a single GPU holds it whole
            options.shard = faiss.get_num_gpus() > 1
            gpu = faiss.index_cpu_to_all_gpus(self._index, co=options)
            nprobe = self._description.get("params", {}).get("nprobe")
            if nprobe is not None:
                faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", int(nprobe))
            return gpu
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

def _kind_of(index) -> str:
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(index, faiss.IndexIDMap2) and isinstance(inner, faiss.IndexFlat):
        return "flat"
    if isinstance(index, faiss.IndexIDMap2) and isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if (isinstance(index, faiss.IndexIDMap2) and isinstance(inner, faiss.IndexRefine)
            and isinstance(faiss.downcast_index(inner.base_index), faiss.IndexIVFPQ)
            and isinstance(faiss.downcast_index(inner.refine_index), faiss.IndexScalarQuantizer)):
        return "ivf_pq_refine"
    if isinstance(index, faiss.IndexIVFFlat):
        _check_direct_map(index)
        return "ivf_flat"
    if isinstance(index, faiss.IndexIVFPQ):
        _check_direct_map(index)
        return "ivf_pq"
    if isinstance(index, faiss.IndexIVFScalarQuantizer) and index.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
        _check_direct_map(index)
        return "ivf_sq8"
    raise ValueError(f"unsupported FAISS index {type(index).__name__}: expected IndexIDMap2 around a flat or "
                     "HNSW index or an IndexRefine of IndexIVFPQ and IndexScalarQuantizer, or "
                     "IndexIVFFlat / IndexIVFScalarQuantizer (8 bit) / IndexIVFPQ with a "
                     "hash-table direct map")


def _check_direct_map(index) -> None:
    import faiss

    if index.direct_map.type != faiss.DirectMap.Hashtable:
        raise ValueError("IVF index needs a hash-table direct map (set_direct_map_type(faiss.DirectMap.Hashtable)) "
                         "to reconstruct and remove vectors by id")


def _ivf_part(index):
    """The IVF index inside `index` (the index itself, or the base of a refined IVF-PQ index)."""
    import faiss

    if isinstance(index, faiss.IndexIDMap2):
        return faiss.downcast_index(faiss.downcast_index(index.index).base_index)
    return index


def _default_params(index, kind: str) -> dict[str, int]:
    import faiss

    if kind == "ivf_pq_refine":
        return {"nprobe": int(_ivf_part(index).nprobe), "k_factor": int(faiss.downcast_index(index.index).k_factor)}
    if kind.startswith("ivf"):
        return {"nprobe": int(index.nprobe)}
    if kind == "hnsw":
        return {"efSearch": int(faiss.downcast_index(index.index).hnsw.efSearch)}
    return {}


def _faiss_params(kind: str, params: dict[str, int]):
    import faiss

    if kind == "ivf_pq_refine":
        base = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
        refine = faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]))
        refine.base_index_params = base
        refine.referenced_objects = [base]  # keeps the IVF parameters alive as long as these
        return refine
    if kind.startswith("ivf"):
        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))
    return None


def _stored_ids(index) -> np.ndarray:
    """Every id the FAISS index holds (int64, unordered)."""
    import faiss

    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    lists = index.invlists
    parts = [np.zeros(0, np.int64)]
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
    return np.concatenate(parts).astype(np.int64)


def _hnsw_without(index, removed: np.ndarray, kept: np.ndarray):
    """A new HNSW index holding `kept` ids (FAISS cannot delete from an HNSW graph, so it is rebuilt)."""
    import faiss

    graph = faiss.downcast_index(index.index)
    vectors = index.reconstruct_batch(kept) if len(kept) else np.zeros((0, index.d), np.float32)
    rebuilt = faiss.IndexHNSWFlat(index.d, graph.hnsw.nb_neighbors(1), faiss.METRIC_INNER_PRODUCT)
    rebuilt.hnsw.efConstruction = graph.hnsw.efConstruction
    rebuilt.hnsw.efSearch = graph.hnsw.efSearch
    result = faiss.IndexIDMap2(rebuilt)
    if len(kept):
        result.add_with_ids(vectors, kept)
    log.info("HNSW index rebuilt without %d removed vectors (%d kept)", len(removed), len(kept))
    return result


def _remove_refined(index, removed: np.ndarray) -> None:
    """Remove `removed` ids from an IndexIDMap2 around an IndexRefine, in place. FAISS cannot remove from an
    IndexRefine: the labels of its IVF-PQ base are positions in its refine codes. So both are removed by
    position, the refine codes close up (in order) and the positions left in the inverted lists are renumbered."""
    import faiss

    refine = faiss.downcast_index(index.index)
    base, fine = faiss.downcast_index(refine.base_index), faiss.downcast_index(refine.refine_index)
    id_map = faiss.vector_to_array(index.id_map)
    gone = np.flatnonzero(np.isin(id_map, removed)).astype(np.int64)  # sorted positions
    for part in (base, fine):
        if part.remove_ids(faiss.IDSelectorBatch(len(gone), faiss.swig_ptr(gone))) != len(gone):
            raise RuntimeError(f"FAISS removed the wrong number of vectors from {type(part).__name__}")
    lists = base.invlists
    for number in range(base.nlist):
        size = lists.list_size(number)
        if size:
            old = faiss.rev_swig_ptr(lists.get_ids(number), size)
            renumbered = (old - np.searchsorted(gone, old)).astype(np.int64)
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy()
            lists.update_entries(number, 0, size, faiss.swig_ptr(renumbered), faiss.swig_ptr(codes))
    faiss.copy_array_to_vector(np.delete(id_map, gone), index.id_map)
    refine.ntotal = index.ntotal = fine.ntotal
    index.construct_rev_map()  # from the first ntotal entries of the id map


FAISS_DISTRIBUTIONS = ("faiss-gpu-cu12", "faiss-gpu", "faiss-cpu")  # pip packages that ship the faiss module


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
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            while self._writer or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

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
