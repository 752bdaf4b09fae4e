"""VectorIndex: exact answers, files that round-trip, ids that survive updates, searches safe from many threads."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mammut_search.index.vectors.ann import build_vector_index
from mammut_search.index.vectors import VectorIndex

DIM = 32


def unit_vectors(n: int, seed: int = 0, dim: int = DIM, clusters: int = 40) -> np.ndarray:
    """Clustered unit vectors (n d), like image latents."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.8 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sparse_ids(n: int, start: int = 7) -> np.ndarray:
    """Ids with gaps and large values, so that ids can never be confused with row numbers."""
    return (np.arange(n, dtype=np.int64) * 3 + start) * 1_000_003


def build(kind: str, n: int = 3000, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    vectors, ids = unit_vectors(n, seed), sparse_ids(n)
    return build_vector_index(vectors, ids, kind=kind, exact_threshold=100, seed=seed), vectors, ids


@pytest.fixture(scope="module", params=["flat", "ivf_flat"])
def built(request):
    return build(request.param)


def test_flat_search_is_exact_with_the_given_ids():
    index, vectors, ids = build("flat", 500)
    queries = unit_vectors(20, seed=5)

    scores, found = index.search(queries, 7)

    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :7]
    assert found.dtype == np.int64 and scores.dtype == np.float32 and found.shape == (20, 7)
    assert np.array_equal(found, ids[expected])
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, expected, axis=1), atol=1e-6)


def test_missing_results_are_minus_one_with_minus_infinity():
    index, _, _ = build("flat", 3)
    for queries in (2, 1):  # a batch, and one query (a path of its own)
        scores, found = index.search(unit_vectors(queries, seed=9), 5)
        assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all() and (found[:, :3] >= 0).all()

    empty = build_vector_index(np.zeros((0, DIM), np.float32), np.zeros(0, np.int64))
    assert empty.ntotal == 0 and empty.dim == DIM
    scores, found = empty.search(unit_vectors(1), 3)
    assert (found == -1).all() and np.isneginf(scores).all()


def test_bad_queries_are_refused_clearly():
    index, vectors, _ = build("flat", 50)
    with pytest.raises(ValueError, match=f"shape \\(q, {DIM}\\)"):
        index.search(np.zeros((2, DIM + 1), np.float32), 3)
    with pytest.raises(ValueError, match="positive"):
        index.search(vectors[:1], 0)
    one = index.search(vectors[0], 3)[1]  # a single vector is one query
    assert one.shape == (1, 3)


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_sq8", "ivf_pq_refine"])
def test_save_load_round_trip(tmp_path, kind):
    import faiss

    index, vectors, ids = build(kind, 3000)
    queries = unit_vectors(30, seed=3)
    path = tmp_path / "index.faiss"

    index.save(path)
    loaded = VectorIndex.load(path)

    assert loaded.ntotal == index.ntotal and loaded.dim == DIM and loaded.kind == kind
    assert loaded.description == index.description  # tuned params and measured recall travel with the file
    for a, b in zip(loaded.search(queries, 10), index.search(queries, 10)):
        assert np.array_equal(a, b)
    assert np.array_equal(loaded.ids(), np.sort(ids))
    if kind not in ("ivf_sq8", "ivf_pq_refine"):
        assert np.array_equal(loaded.reconstruct(ids[::7]), vectors[::7])
    else:  # 8-bit codes, not the vectors: close in direction
        decoded = loaded.reconstruct(ids[::7])
        cosines = (decoded * vectors[::7]).sum(axis=1) / np.linalg.norm(decoded, axis=1)
        assert cosines.min() > 0.99
    assert faiss.read_index(str(path)).ntotal == len(ids)  # still a plain FAISS file for other tools
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left behind


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "index.faiss"
    build("flat", 40)[0].save(path)
    build("flat", 60)[0].save(path)
    assert VectorIndex.load(path).ntotal == 60


def test_a_file_that_is_no_index_is_refused(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"not a faiss index at all")
    with pytest.raises(ValueError, match="not a FAISS index"):
        VectorIndex.load(path)


def test_remove_and_add_keep_other_vectors_bit_identical(built, tmp_path):
    original, vectors, ids = built
    original.save(tmp_path / "index.faiss")
    index = VectorIndex.load(tmp_path / "index.faiss")  # a copy: the module's fixture stays untouched
    gone, kept = ids[::5], np.setdiff1d(ids, ids[::5])
    new_vectors, new_ids = unit_vectors(100, seed=42), sparse_ids(100, start=10**6)

    assert index.remove(gone) == len(gone)
    index.add(new_vectors, new_ids)

    assert index.ntotal == len(ids) - len(gone) + 100
    row = {int(i): r for r, i in enumerate(ids)}
    assert np.array_equal(index.reconstruct(kept), vectors[[row[int(i)] for i in kept]])
    assert np.array_equal(index.reconstruct(new_ids), new_vectors)
    _, found = index.search(vectors[::5], 10)  # the removed vectors themselves as queries
    assert not np.isin(found, gone).any()
    _, found = index.search(new_vectors[:20], 1, search_params=_widest(index))
    assert np.array_equal(found[:, 0], new_ids[:20])
    with pytest.raises(KeyError, match=str(gone[0])):
        index.reconstruct(gone[:1])


def test_updates_refuse_ids_that_make_no_sense():
    index, vectors, ids = build("flat", 50)
    with pytest.raises(ValueError, match="already in the vector index"):
        index.add(vectors[:2], ids[:2])
    with pytest.raises(KeyError, match="not in the vector index"):
        index.remove([123])
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(vectors[:2], [5, 5])
    with pytest.raises(ValueError, match="non-negative"):
        index.add(vectors[:1], [-1])
    with pytest.raises(ValueError, match="shape"):
        index.add(vectors[:1, :-1], [77])
    assert index.ntotal == 50


def test_concurrent_searches_equal_sequential_results(built):
    index, _, _ = built
    batches = [unit_vectors(8, seed=100 + i) for i in range(64)]
    sequential = [index.search(q, 10) for q in batches]

    with ThreadPoolExecutor(max_workers=16) as pool:
        concurrent = list(pool.map(lambda q: index.search(q, 10), batches))

    for (s1, i1), (s2, i2) in zip(sequential, concurrent):
        assert np.array_equal(i1, i2) and np.array_equal(s1, s2)


def test_per_call_search_params_do_not_touch_the_index():
    index, _, _ = build("ivf_flat", 3000)
    queries = unit_vectors(200, seed=11)
    default = index.search(queries, 10)[1]
    params = dict(index.description["params"])
    narrow = index.search(queries, 10, search_params={"nprobe": 1})[1]
    assert not np.array_equal(narrow, default)  # the override did take effect, for that call

    # threads each with their own nprobe, interleaved, get what they would get alone
    settings = [1, 2, params["nprobe"], index.description["nlist"]] * 8
    alone = {n: index.search(queries, 10, search_params={"nprobe": n})[1] for n in set(settings)}
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda n: index.search(queries, 10, search_params={"nprobe": n})[1], settings))

    assert all(np.array_equal(found, alone[n]) for n, found in zip(settings, together))
    assert index.description["params"] == params
    assert np.array_equal(index.search(queries, 10)[1], default)


def test_searches_during_updates_see_a_whole_index():
    index, vectors, ids = build("flat", 2000)
    additions = [(unit_vectors(50, seed=200 + i), sparse_ids(50, start=10**7 + 1000 * i)) for i in range(20)]
    errors, stop = [], threading.Event()

    def search_forever():
        while not stop.is_set():
            try:
                _, found = index.search(vectors[:4], 5)
                assert (found >= 0).all()
                _, found = index.search(vectors[:1], 5)  # one query takes a path of its own
                assert (found >= 0).all()
            except Exception as e:  # reported below, so that a failure shows its cause
                errors.append(e)
                return

    readers = [threading.Thread(target=search_forever) for _ in range(4)]
    for t in readers:
        t.start()
    for new_vectors, new_ids in additions:
        index.add(new_vectors, new_ids)
        index.remove(new_ids[:10])
    stop.set()
    for t in readers:
        t.join()

    assert not errors, errors[0]
    assert index.ntotal == 2000 + 20 * 40


def test_description_is_a_copy():
    index, _, _ = build("flat", 20)
    index.description["type"] = "changed"
    assert index.description["type"] == "flat" and index.description["on_gpu"] is False


def _widest(index: VectorIndex) -> dict:
    """Search params that make an approximate index exhaustive enough to find an exact duplicate."""
    if index.kind.startswith("ivf"):
        return {"nprobe": index.description["nlist"]}
    return {}


@pytest.mark.parametrize("gpus", [1, 2])
def test_gpu_copy_shards_the_vectors_across_several_gpus(monkeypatch, gpus):
    import faiss

    cloned = {}

    class Options:
        shard = False

    class ParameterSpace:
        def set_index_parameter(self, index, name, value):
            cloned[name] = value

    def to_all_gpus(index, co=None):
        cloned["shard"] = co.shard
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: gpus, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", ParameterSpace, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus, raising=False)
    index, _, _ = build("flat", n=200)
    assert index._gpu_copy() is not None
    assert cloned["shard"] is (gpus > 1)
