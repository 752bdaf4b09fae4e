"""One class per kind of FAISS index: all that is specific to a kind lives in its class.

A kind knows how to make an empty index (`make`), train it (`train`, on the GPU when FAISS has one), recognise
a loaded one (`matches`), its search parameters (`default_params`, `search_params`, the `tuned` ones), how to
remove vectors from it (`remove`), which ids it holds (`stored_ids`) and whether and how it goes to a GPU
(`to_gpu`). Adding a kind means adding a class here and listing it in KINDS; VectorIndex (serving) and ann
(choosing, building, tuning) only ask these questions.

Every kind compares unit vectors by inner product and keeps the caller's int64 ids: an IndexIDMap2 around
flat and refined IVF-PQ indexes, native ids with a hash-table direct map in the other IVF indexes (so
vectors can be reconstructed and removed by id).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KMEANS_ITERATIONS = 10  # enough for a coarse quantizer; FAISS's default 25 mostly polishes
ID_OVERHEAD = 8 + 16  # bytes per vector besides its codes: its id in an inverted list, and a hash-map entry
SQ_RANGE_MARGIN = 0.05  # widen the trained 8-bit ranges so vectors outside the training sample clip less
REFINE_BITS = (8, 6, 4)  # scalar quantizer bits per dimension of the refine codes, finest first


class Kind:
    """What every kind answers; the defaults fit an index that needs no training and goes to the GPU."""

    name = ""
    exact = False  # search returns the true nearest neighbours
    compressed = False  # stored vectors are codes: reconstruct() is approximate, rebuilding from them loses
    trains = False  # needs a training sample (a coarse quantizer, codebooks)
    tuned: tuple[str, ...] = ()  # search parameters tuned to a recall target
    gpu = True  # FAISS can copy it to a GPU
    min_training_points = 0

    def matches(self, index) -> bool:
        """Whether a loaded FAISS index is of this kind."""
        raise NotImplementedError

    def make(self, dim: int, count: int, *, nlist: int, memory_budget_bytes: int, seed: int) -> tuple[Any, dict]:
        """An empty (untrained) index for `count` vectors of `dim`, and the facts about it worth recording."""
        raise NotImplementedError

    def train(self, index, sample: np.ndarray, *, on_gpu: bool = False):
        """Train `index` on `sample` (k-means on the GPU when on_gpu); returns the index to fill."""
        return index

    def default_params(self, index) -> dict[str, int]:
        """The search parameters set on the index itself."""
        return {}

    def search_params(self, params: dict[str, int]):
        """FAISS SearchParameters for one search with `params`, or None."""
        return None

    def tuning_range(self, index, description: dict[str, Any]) -> tuple[int, int]:
        """Bounds of the (first) tuned parameter."""
        raise NotImplementedError

    def nlist(self, index) -> int | None:
        """Inverted lists, for IVF kinds."""
        return None

    def remove(self, index, ids: np.ndarray, kept: np.ndarray):
        """Remove `ids` (all present); `kept` are the ids that stay. Returns the index (the same or a new one)."""
        removed = index.remove_ids(ids)
        if removed != len(ids):
            raise RuntimeError(f"FAISS removed {removed} of {len(ids)} vectors")
        return index

    def stored_ids(self, index) -> np.ndarray:
        """Every id the index holds (int64, unordered)."""
        import faiss

        return faiss.vector_to_array(index.id_map).astype(np.int64)

    def to_gpu(self, index, params: dict[str, int]):
        """A copy of the index on all GPUs with `params` set on it (it is the caller's alone), or None."""
        import faiss

        if not self.gpu:
            log.warning("vector index stays on the CPU: FAISS cannot copy a %s index to the GPU", self.name)
            return None
        options = faiss.GpuMultipleClonerOptions()
        # several GPUs: each holds a share of the vectors (an IndexShards) and their results are merged,
        # so the index can be as large as their memory together; a single GPU holds it whole
        options.shard = faiss.get_num_gpus() > 1
        copy = faiss.index_cpu_to_all_gpus(index, co=options)
        for name, value in params.items():
            faiss.GpuParameterSpace().set_index_parameter(copy, name, int(value))
        return copy


class Flat(Kind):
    """Exact search: every vector scored (on the CPU by matrix product, see exact.py)."""

    name, exact = "flat", True

    def matches(self, index) -> bool:
        import faiss

        return isinstance(index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)

    def make(self, dim: int, count: int, **_) -> tuple[Any, dict]:
        import faiss

        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), {"exact": True, "recall_at_10": 1.0}

    @staticmethod
    def vectors(index) -> np.ndarray:
        """The stored vectors (n d) as a read-only view of FAISS's memory (valid until the next change)."""
        import faiss

        flat = faiss.downcast_index(index.index)
        view = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d) if flat.ntotal else np.zeros(0, np.float32)
        view = view.reshape(flat.ntotal, flat.d)
        view.flags.writeable = False
        return view


class IVF(Kind):
    """Inverted lists around a flat coarse quantizer; nprobe lists are scanned per query."""

    trains, tuned = True, ("nprobe",)

    def matches(self, index) -> bool:
        import faiss

        if not isinstance(index, self.faiss_type()) or not self.same_codes(index):
            return False
        if index.direct_map.type != faiss.DirectMap.Hashtable:
            raise ValueError("IVF index needs a hash-table direct map (set_direct_map_type(faiss.DirectMap."
                             "Hashtable)) to reconstruct and remove vectors by id")
        return True

    def faiss_type(self):
        raise NotImplementedError

    def same_codes(self, index) -> bool:
        return True

    def train(self, index, sample: np.ndarray, *, on_gpu: bool = False):
        import faiss

        train_coarse_quantizer_on_gpu(index, on_gpu)
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
        return index

    def default_params(self, index) -> dict[str, int]:
        return {"nprobe": int(index.nprobe)}

    def search_params(self, params: dict[str, int]):
        import faiss

        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))

    def tuning_range(self, index, description: dict[str, Any]) -> tuple[int, int]:
        return 1, int(description["nlist"])

    def nlist(self, index) -> int | None:
        return int(index.nlist)

    def stored_ids(self, index) -> np.ndarray:
        import faiss

        lists = index.invlists
        parts = [np.zeros(0, np.int64)]
        for number in range(index.nlist):
            size = lists.list_size(number)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
        return np.concatenate(parts).astype(np.int64)


class IVFFlat(IVF):
    """IVF with the vectors kept exactly."""

    name = "ivf_flat"

    def faiss_type(self):
        import faiss

        return faiss.IndexIVFFlat

    def make(self, dim: int, count: int, *, nlist: int, seed: int, **_) -> tuple[Any, dict]:
        import faiss

        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        return _seeded(index, seed), {"nlist": nlist}


class IVFSQ8(IVF):
    """IVF with one byte per dimension (recall close to IVF-Flat, a quarter of the memory)."""

    name, compressed = "ivf_sq8", True

    def faiss_type(self):
        import faiss

        return faiss.IndexIVFScalarQuantizer

    def same_codes(self, index) -> bool:
        import faiss

        return index.sq.qtype == faiss.ScalarQuantizer.QT_8bit

    def make(self, dim: int, count: int, *, nlist: int, seed: int, **_) -> tuple[Any, dict]:
        import faiss

        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.sq.rangestat_arg = SQ_RANGE_MARGIN
        return _seeded(index, seed), {"nlist": nlist}


class IVFPQ(IVF):
    """IVF with product-quantized codes of a few bytes per vector."""

    name, compressed = "ivf_pq", True
    min_training_points = 256 * 64  # the 256-entry PQ codebooks need their own share of points

    def faiss_type(self):
        import faiss

        return faiss.IndexIVFPQ

    def make(self, dim: int, count: int, *, nlist: int, memory_budget_bytes: int, seed: int) -> tuple[Any, dict]:
        m = pq_code_bytes(count, dim, memory_budget_bytes)
        return _ivf_pq(dim, nlist, m, seed), {"nlist": nlist, "pq_bytes_per_vector": m}


class IVFPQRefine(Kind):
    """Coarse IVF-PQ codes find k_factor·k candidates, re-ranked with finer scalar-quantized codes; CPU only.
    The base's labels are positions in the refine codes, so the ids live in an IndexIDMap2 around both."""

    name, compressed, trains, tuned, gpu = "ivf_pq_refine", True, True, ("nprobe", "k_factor"), False
    min_training_points = IVFPQ.min_training_points

    def matches(self, index) -> bool:
        import faiss

        if not isinstance(index, faiss.IndexIDMap2):
            return False
        inner = faiss.downcast_index(index.index)
        return (isinstance(inner, faiss.IndexRefine)
                and isinstance(faiss.downcast_index(inner.base_index), faiss.IndexIVFPQ)
                and isinstance(faiss.downcast_index(inner.refine_index), faiss.IndexScalarQuantizer))

    def make(self, dim: int, count: int, *, nlist: int, memory_budget_bytes: int, seed: int) -> tuple[Any, dict]:
        import faiss

        layout = refine_layout(count, dim, memory_budget_bytes)
        if layout is None:
            layout = (_pq_divisors(dim)[-1], REFINE_BITS[-1])
            log.warning("coarse and %d-bit refine codes exceed the memory budget of %d bytes for %d vectors",
                        REFINE_BITS[-1], memory_budget_bytes, count)
        m, bits = layout
        facts = {"nlist": nlist, "pq_bytes_per_vector": m, "refine": f"SQ{bits}",
                 "refine_bytes_per_vector": _sq_bytes(dim, bits)}
        qtype = {8: faiss.ScalarQuantizer.QT_8bit, 6: faiss.ScalarQuantizer.QT_6bit,
                 4: faiss.ScalarQuantizer.QT_4bit}[bits]
        fine = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(faiss.IndexRefine(_ivf_pq(dim, nlist, m, seed), fine)), facts

    def train(self, index, sample: np.ndarray, *, on_gpu: bool = False):
        train_coarse_quantizer_on_gpu(self.base(index), on_gpu)
        index.train(sample)  # the id map trains the refine index, which trains its base and its finer codes
        return index

    def base(self, index):
        import faiss

        return faiss.downcast_index(faiss.downcast_index(index.index).base_index)

    def default_params(self, index) -> dict[str, int]:
        import faiss

        return {"nprobe": int(self.base(index).nprobe), "k_factor": int(faiss.downcast_index(index.index).k_factor)}

    def search_params(self, params: dict[str, int]):
        import faiss

        base = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
        refine = faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]))
        refine.base_index_params = base
        refine.referenced_objects = [base]  # keeps the IVF parameters alive as long as these
        return refine

    def tuning_range(self, index, description: dict[str, Any]) -> tuple[int, int]:
        return 1, int(description["nlist"])

    def nlist(self, index) -> int | None:
        return int(self.base(index).nlist)

    def remove(self, index, ids: np.ndarray, kept: np.ndarray):
        """FAISS cannot remove from an IndexRefine (the base's labels are positions in the refine codes): both
        are removed by position, the refine codes close up (in order) and the positions left in the inverted
        lists are renumbered."""
        import faiss

        refine = faiss.downcast_index(index.index)
        base, fine = faiss.downcast_index(refine.base_index), faiss.downcast_index(refine.refine_index)
        id_map = faiss.vector_to_array(index.id_map)
        gone = np.flatnonzero(np.isin(id_map, ids)).astype(np.int64)  # sorted positions
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
        return index


KINDS: dict[str, Kind] = {k.name: k for k in (Flat(), IVFFlat(), IVFSQ8(), IVFPQ(), IVFPQRefine())}


def kind_named(name: str) -> Kind:
    """The kind called `name`; ValueError listing the known ones otherwise."""
    if name not in KINDS:
        raise ValueError(f"unknown vector index kind {name!r}; use auto, {', '.join(KINDS)}")
    return KINDS[name]


def kind_of(index) -> Kind:
    """The kind of a loaded FAISS index; ValueError for one this program does not serve."""
    for kind in KINDS.values():
        if kind.matches(index):
            return kind
    raise ValueError(f"unsupported FAISS index {type(index).__name__}: expected IndexIDMap2 around a flat index "
                     "or an IndexRefine of IndexIVFPQ and IndexScalarQuantizer, or "
                     "IndexIVFFlat / IndexIVFScalarQuantizer (8 bit) / IndexIVFPQ with a "
                     "hash-table direct map")


def train_coarse_quantizer_on_gpu(index, on_gpu: bool) -> None:
    """Let FAISS run an IVF index's k-means on all GPUs (the trained centroids come back to the CPU index)."""
    import faiss

    if on_gpu:
        index.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(index.d))


# ----- sizes -----

def pq_code_bytes(count: int, dim: int, memory_budget_bytes: int) -> int:
    """Bytes per PQ code: the largest divisor m of dim with m ≤ 64 and ≥ 4 dimensions per sub-quantizer whose
    codes (plus ids and map) fit the budget."""
    divisors = _pq_divisors(dim)
    for m in divisors:
        if count * (m + ID_OVERHEAD) <= memory_budget_bytes:
            return m
    log.warning("even %d-byte PQ codes exceed the memory budget of %d bytes for %d vectors",
                divisors[-1], memory_budget_bytes, count)
    return divisors[-1]


def refine_layout(count: int, dim: int, memory_budget_bytes: int) -> tuple[int, int] | None:
    """(coarse PQ bytes, refine bits per dimension) of a refined IVF-PQ index that fits the budget, or None.
    The finest refine codes (REFINE_BITS) that leave room for a coarse code of ≥ dim/32 bytes win; the coarse
    code then takes what is left, up to dim/8 bytes (8 dimensions a byte: enough to find the candidates)."""
    divisors = _pq_divisors(dim)
    least = min((m for m in divisors if m >= dim // 32), default=divisors[-1])
    for bits in REFINE_BITS:
        room = memory_budget_bytes / max(count, 1) - ID_OVERHEAD - 8 - _sq_bytes(dim, bits)  # + the id map
        fitting = [m for m in divisors if least <= m <= min(room, max(dim // 8, least))]
        if fitting:
            return fitting[0], bits
    return None


def _pq_divisors(dim: int) -> list[int]:
    """PQ code sizes for `dim`: divisors m ≤ 64 with ≥ 4 dimensions per sub-quantizer, largest first."""
    return [m for m in range(min(dim // 4, 64), 0, -1) if dim % m == 0] or [1]


def _sq_bytes(dim: int, bits: int) -> int:
    return (dim * bits + 7) // 8


def _ivf_pq(dim: int, nlist: int, m: int, seed: int):
    """An untrained IVF-PQ index with `m` bytes per code."""
    import faiss

    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.niter, index.pq.cp.seed = KMEANS_ITERATIONS, seed
    return _seeded(index, seed)


def _seeded(index, seed: int):
    """An IVF index whose k-means runs KMEANS_ITERATIONS from `seed`."""
    index.cp.niter, index.cp.seed = KMEANS_ITERATIONS, seed
    return index
