"""The index store: round trip, refusals with helpful messages, and crash safety of a commit."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from mammut_search.index import store as store_module
from mammut_search.errors import IndexStoreError
from mammut_search.index.manifest import Manifest
from mammut_search.index.store import IndexStore, items_frame

NON_UTF8 = os.fsdecode(b"/photos/caf\xe9.png")  # holds a surrogate escape


def make_items(n_ok: int, first_id: int = 0) -> "pd.DataFrame":
    rows = [dict(id=first_id + i, path=f"/photos/{first_id + i}.png", size=100 + i, mtime=1.5 + i,
                 sha256=f"{i:064x}", width=10, height=20, caption=f"caption {i}", status="ok") for i in range(n_ok)]
    rows.append(dict(id=first_id + n_ok, path=f"/photos/broken{first_id}.jpg", size=0, mtime=2.0, sha256="",
                     width=0, height=0, caption="", status="empty file"))
    return items_frame(rows)


def make_vectors(ids, dim: int = 8, seed: int = 0):
    from mammut_search.index.vectors.ann import build_vector_index

    vectors = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return build_vector_index(vectors, np.asarray(ids, np.int64)), vectors


def manifest(sha: str = "a" * 64, **fields) -> Manifest:
    return Manifest(checkpoint_sha256=sha, latent_dim=8, roots=["/photos"], **fields)


def weights(sha: str) -> SimpleNamespace:
    """A stand-in for a model: all an index made before model identities were recorded checks is the weights."""
    return SimpleNamespace(checkpoint_sha256=sha)


def commit(directory, n_ok: int = 3, first_id: int = 0, sha: str = "a" * 64):
    items = make_items(n_ok, first_id)
    vectors, raw = make_vectors(items["id"][:n_ok], seed=first_id)
    return IndexStore.commit(directory, items, vectors, manifest(sha)), raw


def test_round_trip_keeps_rows_exact_paths_and_vectors(tmp_path):
    items = make_items(2)
    items.loc[0, "path"] = NON_UTF8
    vectors, raw = make_vectors([0, 1])
    IndexStore.commit(tmp_path / "i", items, vectors, manifest())

    store = IndexStore.open(tmp_path / "i", model=weights("a" * 64))
    assert store.items.to_dict("records") == items.to_dict("records")
    assert store.path_of(0) == NON_UTF8 and store.has_path(NON_UTF8)
    assert store.item(1) == items.iloc[1].to_dict()
    assert list(store.ok_items["id"]) == [0, 1]
    assert np.array_equal(store.vectors.reconstruct(np.array([0, 1])), raw)
    m = store.manifest
    assert (m.schema_version, m.count, m.items, m.skipped) == (store_module.SCHEMA_VERSION, 2, 3, 1)
    assert m.generation == 1 and m.created == m.updated and m.faiss_version
    with pytest.raises(KeyError):
        store.item(99)


def test_refuses_an_index_built_with_another_checkpoint_saying_how_to_rebuild(tmp_path):
    commit(tmp_path / "i", sha="a" * 64)
    with pytest.raises(IndexStoreError) as error:
        IndexStore.open(tmp_path / "i", model=weights("b" * 64))
    message = str(error.value)
    assert "aaaaaaaaaaaa" in message and "bbbbbbbbbbbb" in message
    assert f"mammut index build /photos --out {tmp_path / 'i'}" in message
    assert "\n" not in message


def test_refuses_another_schema_version_missing_and_damaged_indexes(tmp_path):
    with pytest.raises(IndexStoreError, match="no such index directory"):
        IndexStore.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexStoreError, match="manifest.json: missing"):
        IndexStore.open(tmp_path / "empty")

    commit(tmp_path / "i")
    path = tmp_path / "i" / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema_version": 999}))
    with pytest.raises(IndexStoreError, match="schema version 999"):
        IndexStore.open(tmp_path / "i")
    for wrong, shown in (("1", '"1"'), (None, "null"), (1.5, "1.5"), (True, "true")):
        path.write_text(json.dumps({**data, "schema_version": wrong}))
        with pytest.raises(IndexStoreError) as refused:
            IndexStore.open(tmp_path / "i")
        assert f"'schema_version' is {shown}, not a whole number" in str(refused.value)
        assert "this program reads version" not in str(refused.value)
    path.write_text("{not json")
    with pytest.raises(IndexStoreError, match="unreadable manifest"):
        IndexStore.open(tmp_path / "i")

    commit(tmp_path / "j")
    with open(tmp_path / "j" / "items.parquet", "ab") as f:
        f.write(b"junk")
    with pytest.raises(IndexStoreError, match="changed or damaged"):
        IndexStore.open(tmp_path / "j")


def test_a_writer_killed_before_the_manifest_leaves_the_previous_index(tmp_path, monkeypatch):
    commit(tmp_path / "i", n_ok=3)

    def crash_at_manifest(directory, manifest):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(store_module, "write_manifest", crash_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        commit(tmp_path / "i", n_ok=5, first_id=100)
    monkeypatch.undo()

    store = IndexStore.open(tmp_path / "i")
    assert store.manifest.generation == 1 and list(store.ok_items["id"]) == [0, 1, 2]
    assert store.vectors.ntotal == 3
    assert sorted(h.id for h in store.keywords.search("caption", 10)) == [0, 1, 2]  # the same generation's words
    commit(tmp_path / "i", n_ok=4, first_id=200)  # the next commit discards the uncommitted files
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["index.faiss", "items.parquet", "keywords.sqlite", "manifest.json"]
    assert IndexStore.open(tmp_path / "i").manifest.generation == 2


def test_a_writer_killed_after_the_manifest_leaves_the_new_index(tmp_path, monkeypatch):
    commit(tmp_path / "i", n_ok=3)
    real_finish = store_module.finish_pending_renames
    calls = []

    def crash_after_commit(directory, manifest):
        calls.append(manifest)
        if len(calls) == 2:  # the renames after the commit point
            raise KeyboardInterrupt("killed")
        real_finish(directory, manifest)

    monkeypatch.setattr(store_module, "finish_pending_renames", crash_after_commit)
    with pytest.raises(KeyboardInterrupt):
        _, raw = commit(tmp_path / "i", n_ok=5, first_id=100)
    monkeypatch.undo()

    store = IndexStore.open(tmp_path / "i")
    assert store.manifest.generation == 2 and list(store.ok_items["id"]) == [100, 101, 102, 103, 104]
    assert store.vectors.ntotal == 5
    assert sorted(h.id for h in store.keywords.search("caption", 10)) == [100, 101, 102, 103, 104]
    store, _ = commit(tmp_path / "i", n_ok=1, first_id=300)  # rolls the renames forward, then commits
    assert store.manifest.generation == 3
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["index.faiss", "items.parquet", "keywords.sqlite", "manifest.json"]


def test_an_update_keeps_created_and_moves_updated(tmp_path, monkeypatch):
    first, _ = commit(tmp_path / "i")
    monkeypatch.setattr(store_module.time, "strftime", lambda fmt: "2099-01-01T00:00:00+0000")
    items = make_items(1)
    vectors, _ = make_vectors([0])
    second = IndexStore.commit(tmp_path / "i", items, vectors, manifest(created=first.manifest.created))
    assert second.manifest.created == first.manifest.created != "2099-01-01T00:00:00+0000"
    assert second.manifest.updated == "2099-01-01T00:00:00+0000"
    rebuilt, _ = commit(tmp_path / "i")
    assert rebuilt.manifest.created == "2099-01-01T00:00:00+0000"
