"""Collections larger than memory: an index is built from a read-only memmap, read in blocks."""

import numpy as np
import pytest

import mammut_search.index.vectors as vector_index
from mammut_search.index.vectors.ann import build_vector_index
from mammut_search.index.vectors import check_vectors
from test_ann import exact_recall_at_10, latents


def on_disk(tmp_path, vectors: np.ndarray) -> np.ndarray:
    np.save(tmp_path / "vectors.npy", vectors)
    return np.load(tmp_path / "vectors.npy", mmap_mode="r")


def test_ivf_pq_from_a_memmap_with_chosen_lists(tmp_path):
    vectors = latents(5000, seed=0)
    ids = np.arange(len(vectors), dtype=np.int64) * 3
    index = build_vector_index(on_disk(tmp_path, vectors), ids, kind="ivf_pq", nlist=16,
                               queries=latents(100, seed=1), exact_threshold=1000)
    assert index.kind == "ivf_pq" and index.ntotal == 5000 and index.description["nlist"] == 16
    recall = exact_recall_at_10(index, vectors, ids, latents(100, seed=2))
    assert abs(recall - index.description["recall_at_10"]) < 0.1  # the tuned figure holds on fresh queries


def test_non_finite_vectors_are_found_in_any_block(tmp_path, monkeypatch):
    monkeypatch.setattr(vector_index, "CHECK_BLOCK", 64)
    vectors = latents(300, seed=0)
    vectors[250, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_vectors(on_disk(tmp_path, vectors), np.arange(300, dtype=np.int64))
