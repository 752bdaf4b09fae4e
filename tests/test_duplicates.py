"""Near-duplicates from the stored vectors (FAISS range search) and byte copies (sha256): the API, the CLI and
a result's duplicates in the Searcher (the UI shows them; test_ui_browser). The tiny test model sees every
drawing as much alike, so the tests ask for near-identical latents (SAME)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mammut_search.cli import main
from mammut_search.index.duplicates import duplicate_groups, similar_pairs
from mammut_search.index.store import IndexStore
from mammut_search.search import Searcher
from search_testkit import build_test_index, one_torch_thread  # noqa: F401 (autouse fixture)


SAME = 0.9999


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    from search_testkit import write_collection

    drawings = sorted(write_collection(root / "images"))
    shutil.copy(drawings[3], root / "images" / "copy-of-3.png")  # the same bytes
    Image.open(drawings[5]).save(root / "images" / "resaved-5.bmp")  # the same pixels, other bytes
    return build_test_index(root)[0], drawings


def test_range_search_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors[150:160] = vectors[0] + 0.01 * rng.normal(size=(10, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarities = vectors @ vectors.T
    expected = {(i, j) for i, j in zip(*np.nonzero(similarities >= 0.9)) if i < j}
    assert {tuple(p) for p in similar_pairs(vectors, 0.9).tolist()} == expected and len(expected) >= 55


def test_the_approximate_search_of_large_collections_finds_the_planted_pairs(monkeypatch):
    from mammut_search.index import duplicates

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    twins = rng.choice(4000, 80, replace=False)
    vectors[twins[40:]] = vectors[twins[:40]] + 0.05 * rng.normal(size=(40, 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarities = vectors @ vectors.T
    expected = {(i, j) for i, j in zip(*np.nonzero(similarities >= 0.9)) if i < j}
    monkeypatch.setattr(duplicates, "EXACT_UP_TO", 1000)
    assert type(duplicates.range_index(vectors)).__name__ == "IndexIVFFlat"
    found = {tuple(p) for p in similar_pairs(vectors, 0.9).tolist()}
    assert found <= expected and len(found) >= 0.95 * len(expected) >= 38
    assert all(i < j for i, j in found)


def test_groups_hold_byte_copies_and_resaved_images(index):
    directory, drawings = index
    store = IndexStore.open(directory)
    groups = duplicate_groups(store, SAME)
    assert len(groups) == 2
    as_paths = [sorted(store.path_of(i) for i in g.ids) for g in groups]
    assert [drawings[3], str(directory.parent / "images" / "copy-of-3.png")] in as_paths
    assert sorted([drawings[5], str(directory.parent / "images" / "resaved-5.bmp")]) in as_paths
    copied = next(g for g in groups if drawings[3] in [store.path_of(i) for i in g.ids])
    assert [store.path_of(i) for i in copied.copies] == [str(directory.parent / "images" / "copy-of-3.png")]
    assert [g.ids for g in duplicate_groups(store, threshold=1.01)] == [copied.ids]  # byte copies: always


def test_a_results_duplicates_from_the_searcher(index):
    directory, drawings = index
    with Searcher.open(directory, device="cpu") as searcher:
        item = int(searcher.store.ok_items.set_index("path").loc[drawings[5], "id"])
        twins = searcher.duplicates(item, threshold=SAME)
        other = int(searcher.store.ok_items.set_index("path").loc[drawings[7], "id"])
        assert [h.path for h in twins] == [str(directory.parent / "images" / "resaved-5.bmp")]
        assert twins[0].similarity >= 0.95 and searcher.duplicates(other, threshold=SAME).hits == []


def test_cli_lists_the_groups(index, capsys):
    directory, drawings = index
    assert main(["index", "duplicates", str(directory), "--threshold", str(SAME)]) == 0
    out, err = capsys.readouterr()
    assert "group 1: 2 images" in out and "copy-of-3.png\tcopy" in out and "groups of near-duplicates" in err
    assert main(["index", "duplicates", str(directory), "--json", "--threshold", str(SAME)]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert any(g["paths"] == [drawings[3], str(directory.parent / "images" / "copy-of-3.png")] for g in groups)
    with pytest.raises(SystemExit):
        main(["index", "duplicates", str(directory), "--threshold", "2"])
    assert "between -1 and 1" in capsys.readouterr().err
