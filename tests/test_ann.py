"""Index choice and tuning: approximate indexes keep recall@10 ≥ the target against exact search."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mammut_search.index.vectors.ann import (build_vector_index, choose_kind, ground_truth, measure_recall, refine_layout,
                               update_vector_index)
from mammut_search.index.vectors import VectorIndex

DIM = 64
CENTRES = np.random.default_rng(2024).normal(size=(100, DIM))


def latents(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors (n d) drawn around fixed centres, like image latents of a photo collection."""
    rng = np.random.default_rng(seed)
    x = CENTRES[rng.integers(0, len(CENTRES), n)] + rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_recall_at_10(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> float:
    """Recall@10 of `index` computed independently of mammut_search.index.vectors.ann, by brute force in numpy (tie-aware)."""
    scores = queries @ vectors.T  # (q n)
    tenth = np.sort(scores, axis=1)[:, -10]
    _, found = index.search(queries, 10)
    row = {int(i): r for r, i in enumerate(ids)}
    true = np.array([[scores[q, row[int(i)]] if i >= 0 else -np.inf for i in f] for q, f in enumerate(found)])
    return float((true >= tenth[:, None] - 1e-5).sum(axis=1).mean() / 10)


@pytest.fixture(scope="module")
def collection():
    vectors = latents(20_000, seed=0)
    return vectors, np.arange(20_000, dtype=np.int64) * 5 + 3


@pytest.fixture(scope="module")
def ivf(collection):
    vectors, ids = collection
    return build_vector_index(vectors, ids, exact_threshold=1000, seed=0)


def test_small_collections_get_exact_search(collection):
    vectors, ids = collection
    index = build_vector_index(vectors[:500], ids[:500], exact_threshold=1000)
    assert index.kind == "flat"
    assert index.description["exact"] is True and index.description["recall_at_10"] == 1.0


def test_approximate_index_keeps_recall_against_exact_search(ivf, collection):
    vectors, ids = collection
    fresh_queries = latents(500, seed=99)  # never seen by the builder

    assert ivf.kind == "ivf_flat"
    assert exact_recall_at_10(ivf, vectors, ids, fresh_queries) >= 0.95
    description = ivf.description
    assert description["recall_at_10"] >= 0.95 and description["recall_target_met"] is True
    assert description["params"]["nprobe"] < description["nlist"]  # cheaper than scanning every list


def test_tuning_picks_the_cheapest_setting_that_meets_the_target(ivf):
    description = ivf.description
    nprobe, curve = description["params"]["nprobe"], description["recall_curve"]  # value -> [mean, std error]
    assert curve[str(nprobe)] == [description["recall_at_10"], description["recall_stderr"]]
    assert description["recall_at_10"] - 2 * description["recall_stderr"] >= 0.95  # met with confidence
    cheaper = [mean - 2 * error for value, (mean, error) in curve.items() if int(value) < nprobe]
    assert cheaper and max(cheaper) < 0.95  # every cheaper setting tried fell short
    assert str(nprobe - 1) in curve  # and the next cheaper one was tried


def test_a_higher_target_buys_more_probes(collection, ivf):
    vectors, ids = collection
    stricter = build_vector_index(vectors, ids, exact_threshold=1000, target_recall=0.99, seed=0)
    assert stricter.description["params"]["nprobe"] > ivf.description["params"]["nprobe"]
    assert stricter.description["recall_at_10"] >= 0.99


def test_recall_is_measured_on_given_queries_when_there_are_some(collection):
    vectors, ids = collection[0][:5000], collection[1][:5000]
    queries = latents(200, seed=5)
    index = build_vector_index(vectors, ids, exact_threshold=1000, queries=queries)
    assert index.description["recall_query_source"] == "given" and index.description["recall_queries"] == 200
    assert exact_recall_at_10(index, vectors, ids, queries) == pytest.approx(index.description["recall_at_10"])


def test_recall_counts_ties_as_right(collection):
    vectors = collection[0][:400]
    copies = np.concatenate([vectors, vectors, vectors])  # every image three times: many equal scores
    copy_ids = np.arange(len(copies), dtype=np.int64)
    exact = build_vector_index(copies, copy_ids, kind="flat")
    truth = ground_truth(copies, copy_ids, query_rows=np.arange(0, 1200, 7))
    assert measure_recall(exact, truth) == 1.0


def test_memory_budget_chooses_compressed_indexes():
    assert choose_kind(10**6, 256, exact_threshold=10**5, memory_budget_bytes=2 * 2**30) == "ivf_flat"
    assert choose_kind(10**6, 256, exact_threshold=10**5, memory_budget_bytes=512 * 2**20) == "ivf_sq8"
    assert choose_kind(10**6, 256, exact_threshold=10**5, memory_budget_bytes=64 * 2**20) == "ivf_pq"
    assert choose_kind(10**5, 256, exact_threshold=10**5, memory_budget_bytes=1) == "flat"


def test_pq_index_records_whether_it_met_the_target(tmp_path, collection):
    vectors, ids = collection[0][:4000], collection[1][:4000]
    index = build_vector_index(vectors, ids, exact_threshold=1000, memory_budget_bytes=4000 * 28)  # 4-byte codes

    description = index.description
    assert index.kind == "ivf_pq" and description["pq_bytes_per_vector"] == 4
    assert description["recall_target_met"] == (description["recall_at_10"] >= 0.95)
    assert exact_recall_at_10(index, vectors, ids, latents(200, seed=3)) == pytest.approx(
        description["recall_at_10"], abs=0.1)
    index.save(tmp_path / "index.faiss")
    loaded = VectorIndex.load(tmp_path / "index.faiss")
    assert loaded.description == description
    assert np.array_equal(loaded.search(vectors[:20], 10)[1], index.search(vectors[:20], 10)[1])


def test_updates_keep_untouched_vectors_and_the_recall(ivf, collection, tmp_path):
    vectors, ids = collection
    ivf.save(tmp_path / "index.faiss")
    index = VectorIndex.load(tmp_path / "index.faiss")  # a copy: the module's fixture stays untouched
    new_vectors, new_ids = latents(2000, seed=50), np.arange(2000, dtype=np.int64) + 10**9

    updated = update_vector_index(index, add_vectors=new_vectors, add_ids=new_ids, remove_ids=ids[:3000],
                                  exact_threshold=1000)

    assert updated.kind == "ivf_flat" and updated.ntotal == 20_000 - 3000 + 2000
    assert np.array_equal(updated.reconstruct(ids[3000:]), vectors[3000:])
    assert np.array_equal(updated.reconstruct(new_ids), new_vectors)
    assert updated.description["recall_measured_at"] == updated.ntotal  # re-tuned on what it now holds
    everything = np.concatenate([vectors[3000:], new_vectors])
    assert exact_recall_at_10(updated, everything, np.concatenate([ids[3000:], new_ids]),
                              latents(300, seed=8)) >= 0.95


def test_updates_switch_between_exact_and_approximate(collection):
    vectors, ids = collection[0][:3000], collection[1][:3000]
    index = build_vector_index(vectors[:900], ids[:900], exact_threshold=1000)
    assert index.kind == "flat"

    grown = update_vector_index(index, add_vectors=vectors[900:], add_ids=ids[900:], exact_threshold=1000)
    assert grown.kind == "ivf_flat" and grown.description["recall_at_10"] >= 0.95
    assert np.array_equal(grown.reconstruct(ids), vectors)

    shrunk = update_vector_index(grown, remove_ids=ids[500:], exact_threshold=1000)
    assert shrunk.kind == "flat" and np.array_equal(shrunk.reconstruct(ids[:500]), vectors[:500])


def test_bad_input_is_refused_clearly(collection):
    vectors, ids = collection[0][:10], collection[1][:10]
    with pytest.raises(ValueError, match="duplicate ids"):
        build_vector_index(vectors, np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="10 vectors but 9 ids"):
        build_vector_index(vectors, ids[:9])
    with pytest.raises(ValueError, match="NaN"):
        build_vector_index(np.full((10, DIM), np.nan, np.float32), ids)
    with pytest.raises(ValueError, match="unknown vector index kind"):
        build_vector_index(latents(100, 1), np.arange(100), kind="lsh")


def test_a_budget_for_coarse_and_finer_codes_chooses_the_refined_index():
    assert choose_kind(10**6, 256, exact_threshold=10**5, memory_budget_bytes=200 * 2**20) == "ivf_pq_refine"
    assert refine_layout(10**6, 256, 200 * 2**20) == (32, 4)  # 32-byte PQ codes, re-ranked with 4-bit codes
    assert refine_layout(10**6, 256, 320 * 2**20) == (32, 8)
    assert refine_layout(10**6, 256, 64 * 2**20) is None  # not even 4-bit codes fit: plain PQ


REFINED_BUDGET = 20_000 * 104  # 8-byte PQ codes + 64 bytes of 8-bit refine codes + ids, per vector


@pytest.fixture(scope="module")
def refined(collection):
    vectors, ids = collection
    return build_vector_index(vectors, ids, kind="ivf_pq_refine", exact_threshold=1000,
                              memory_budget_bytes=REFINED_BUDGET, target_recall=0.97, seed=0)


def test_refined_pq_reaches_the_target_where_pq_alone_does_not(refined, collection):
    vectors, ids = collection
    fresh_queries = latents(500, seed=99)
    description = refined.description
    assert refined.kind == "ivf_pq_refine" and description["refine"] == "SQ8"
    assert description["recall_target_met"] is True and description["recall_at_10"] >= 0.97
    assert set(description["params"]) == {"nprobe", "k_factor"}
    assert description["params"]["nprobe"] < description["nlist"]
    assert exact_recall_at_10(refined, vectors, ids, fresh_queries) >= 0.95

    plain = build_vector_index(vectors, ids, kind="ivf_pq", exact_threshold=1000,
                               memory_budget_bytes=20_000 * (description["pq_bytes_per_vector"] + 24), seed=0)
    assert plain.description["pq_bytes_per_vector"] == description["pq_bytes_per_vector"]  # same coarse codes
    assert plain.description["recall_target_met"] is False
    assert exact_recall_at_10(plain, vectors, ids, fresh_queries) < 0.9


def test_refined_pq_round_trips_through_a_file(refined, collection, tmp_path):
    vectors, ids = collection
    refined.save(tmp_path / "index.faiss")
    loaded = VectorIndex.load(tmp_path / "index.faiss")
    assert loaded.kind == "ivf_pq_refine" and loaded.description == refined.description
    for a, b in zip(loaded.search(vectors[:50], 10), refined.search(vectors[:50], 10)):
        assert np.array_equal(a, b)
    assert np.array_equal(loaded.reconstruct(ids[:100]), refined.reconstruct(ids[:100]))
    decoded = loaded.reconstruct(ids[:100])  # 8-bit codes, not the vectors: close in direction
    assert ((decoded * vectors[:100]).sum(axis=1) / np.linalg.norm(decoded, axis=1)).min() > 0.99


def test_refined_pq_search_params_are_per_call(refined, collection):
    queries = latents(200, seed=12)
    params = dict(refined.description["params"])
    default = refined.search(queries, 10)[1]
    settings = [{"nprobe": 1, "k_factor": 1}, {"nprobe": params["nprobe"], "k_factor": 64}, params] * 4
    alone = [refined.search(queries, 10, search_params=s)[1] for s in settings]
    assert not np.array_equal(alone[0], default)  # the override did take effect, for that call
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda s: refined.search(queries, 10, search_params=s)[1], settings))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
    assert refined.description["params"] == params
    assert np.array_equal(refined.search(queries, 10)[1], default)


def test_refined_pq_removes_and_adds_by_id(refined, collection, tmp_path):
    vectors, ids = collection
    refined.save(tmp_path / "index.faiss")
    index = VectorIndex.load(tmp_path / "index.faiss")  # a copy: the module's fixture stays untouched
    kept = ids[3000:]
    before = index.reconstruct(kept)
    new_vectors, new_ids = latents(2000, seed=51), np.arange(2000, dtype=np.int64) + 10**9

    updated = update_vector_index(index, add_vectors=new_vectors, add_ids=new_ids, remove_ids=ids[::7][:400],
                                  exact_threshold=1000, memory_budget_bytes=REFINED_BUDGET)
    updated = update_vector_index(updated, remove_ids=np.setdiff1d(ids[:3000], ids[::7][:400]),
                                  exact_threshold=1000, memory_budget_bytes=REFINED_BUDGET)

    assert updated is index and updated.kind == "ivf_pq_refine" and updated.ntotal == 20_000 - 3000 + 2000
    assert np.array_equal(updated.ids(), np.sort(np.concatenate([kept, new_ids])))
    assert np.array_equal(updated.reconstruct(kept), before)  # untouched codes stay bit-identical
    with pytest.raises(KeyError):
        updated.reconstruct(ids[:1])
    found = updated.search(vectors, 10)[1]
    assert not np.isin(found, ids[:3000]).any()  # removed vectors are never returned
    assert (updated.search(new_vectors[:200], 1)[1][:, 0] == new_ids[:200]).mean() > 0.95
    everything = np.concatenate([vectors[3000:], new_vectors])
    assert exact_recall_at_10(updated, everything, np.concatenate([kept, new_ids]), latents(300, seed=8)) >= 0.95
    updated.save(tmp_path / "updated.faiss")
    reloaded = VectorIndex.load(tmp_path / "updated.faiss")
    assert np.array_equal(reloaded.search(new_vectors[:50], 10)[1], updated.search(new_vectors[:50], 10)[1])


def test_refined_pq_stays_on_the_cpu_with_a_warning(refined, caplog):
    assert refined._gpu_copy() is None
    assert "stays on the CPU" in caplog.text


def test_with_a_gpu_the_selection_uses_it(monkeypatch, collection):
    """FAISS with a GPU (mocked: the 'GPU' copies are CPU indexes): exact search is chosen for more vectors,
    IVF k-means runs on the GPU and searches go to the GPU copy; refusing the GPU restores the CPU choices."""
    import faiss

    from mammut_search.index.vectors import search_device
    from mammut_search.index.vectors.ann import (DEFAULT_EXACT_THRESHOLD, GPU_EXACT_THRESHOLD,
                                                 default_exact_threshold)

    copied = []

    class Options:
        shard = False

    def to_all_gpus(index, co=None):
        copied.append(type(faiss.downcast_index(index)).__name__)
        return index

    assert default_exact_threshold() == DEFAULT_EXACT_THRESHOLD  # this machine: faiss-cpu, no GPU
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus, raising=False)
    assert default_exact_threshold() == GPU_EXACT_THRESHOLD > DEFAULT_EXACT_THRESHOLD
    assert default_exact_threshold(use_gpu=False) == DEFAULT_EXACT_THRESHOLD
    assert search_device().startswith("GPU (1 GPU)") and search_device(use_gpu=False).startswith("CPU")

    vectors, ids = collection
    index = build_vector_index(vectors, ids, kind="ivf_flat", exact_threshold=1000)
    assert index.description["trained_on_gpu"] is True and index.description["on_gpu"] is True
    assert copied == ["IndexFlatIP"]  # the k-means of the coarse quantizer
    index.search(vectors[:3], 5)
    assert copied == ["IndexFlatIP", "IndexIVFFlat"]  # the index itself, searched there

    cpu_only = build_vector_index(vectors, ids, kind="ivf_flat", exact_threshold=1000, use_gpu=False)
    assert cpu_only.description["trained_on_gpu"] is False and cpu_only.description["on_gpu"] is False
