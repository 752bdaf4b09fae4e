"""The index stores the decoder's image tokens, so a re-ranked query decodes and encodes no image, cold or warm."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from index_builder.build import BuildOptions, update_index
from index_builder.shards import read_shard, write_shard
from mammut_search.inference import MammutModel
from mammut_search.index.manifest import summary_rows
from mammut_search.index.store import IndexStore
from mammut_search.index.tokens import TOKENS_FILE
from mammut_search.search import Searcher

from search_testkit import build_test_index, one_torch_thread, write_collection  # noqa: F401 (autouse fixture)

QUERIES = ["a red circle", "a blue square", "a yellow star"]


class ImageWork:
    """Counts every image decoded through the pipeline and every batch run through the image encoder."""

    def __init__(self, monkeypatch):
        self.decoded = self.encoded = 0
        decode_files, decode, encode = MammutModel.preprocess_files, MammutModel.preprocess, MammutModel.image_features

        def counted_decode_files(model, paths):
            self.decoded += len(paths)
            return decode_files(model, paths)

        def counted_decode(model, images):
            self.decoded += len(images)
            return decode(model, images)

        def counted_encode(model, pixels):
            self.encoded += len(pixels)
            return encode(model, pixels)

        monkeypatch.setattr(MammutModel, "preprocess_files", counted_decode_files)
        monkeypatch.setattr(MammutModel, "preprocess", counted_decode)
        monkeypatch.setattr(MammutModel, "image_features", counted_encode)


@pytest.fixture
def index(tmp_path):
    return build_test_index(tmp_path, count=12)[0]


def test_the_index_stores_one_row_of_decoder_tokens_per_image(index):
    store = IndexStore.open(index)
    entry = store.manifest.rerank_tokens
    assert entry["rows"] == len(store.ok_items) == 12 and entry["dtype"] == "float16"
    assert store.manifest.files[TOKENS_FILE] == (index / TOKENS_FILE).stat().st_size
    with Searcher.open(index, device="cpu") as searcher:
        path = store.ok_items.iloc[5]
        expected = searcher.model.decoder_tokens(searcher.model.image_features(
            searcher.model.preprocess_files([path["path"]])))[0]
    assert store.tokens.shape == tuple(expected.shape)
    assert ("re-ranking", "from the stored decoder tokens") in summary_rows(index, store.manifest, search="cpu")
    np.testing.assert_allclose(store.tokens.rows([path["id"]])[0], expected.numpy(), atol=2e-3, rtol=2e-3)


def test_a_cold_reranked_query_decodes_and_encodes_no_image(index, monkeypatch):
    with Searcher.open(index, device="cpu") as searcher:  # what the files' own pixels say
        model, references = searcher.model, searcher.reference_ids
        pictures = {i: searcher.load_item_image(int(i)) for i in searcher.store.ok_items["id"]}
    work = ImageWork(monkeypatch)
    with Searcher.open(index, device="cpu") as cold:  # a new process would open it just like this
        answers = {query: cold.search_text(query, 5, rerank=True, vectors_only=True) for query in QUERIES}
    assert (work.decoded, work.encoded) == (0, 0)
    monkeypatch.undo()
    for query, results in answers.items():
        baseline = np.median(model.score_text([pictures[i] for i in references], [query] * len(references)).numpy())
        direct = model.score_text([pictures[h.id] for h in results], [query] * len(results)).numpy() - baseline
        assert results.reranked
        np.testing.assert_allclose([h.likelihood for h in results], direct, atol=1e-2)  # tokens kept in float16


def test_an_index_without_stored_tokens_says_to_rebuild_it_and_ranks_by_similarity(index, monkeypatch):
    with Searcher.open(index, device="cpu") as searcher:
        expected = searcher.search_text(QUERIES[0], 5, rerank=False)
    manifest = json.loads((index / "manifest.json").read_text())  # as an index written before tokens were stored
    del manifest["rerank_tokens"], manifest["files"][TOKENS_FILE], manifest["checksums"][TOKENS_FILE]
    (index / "manifest.json").write_text(json.dumps(manifest))
    (index / TOKENS_FILE).unlink()

    work = ImageWork(monkeypatch)
    with Searcher.open(index, device="cpu") as searcher:
        assert searcher.store.tokens is None
        results = searcher.search_text(QUERIES[0], 5, rerank=True)
    assert results.ids == expected.ids and not results.reranked and (work.decoded, work.encoded) == (0, 0)
    notice = [n for n in results.notices if "decoder image tokens" in n]
    assert len(notice) == 1 and "rebuild it with mammut index build" in notice[0] and "\n" not in notice[0]
    rows = dict(summary_rows(index, searcher.store.manifest, search="cpu"))
    assert rows["re-ranking"].startswith("not possible")  # `index info` says so

    updated = update_index(index, searcher.model, options=BuildOptions(workers=0, progress=False))
    assert updated.tokens is None and not updated.manifest.rerank_tokens  # nothing half-filled
    assert not (index / TOKENS_FILE).exists()


def test_update_keeps_the_tokens_in_step(index, tmp_path):
    before = IndexStore.open(index)
    old = {p: before.tokens.row(i).copy() for p, i in zip(before.ok_items["path"], before.ok_items["id"])}
    paths = sorted(old)
    os.remove(paths[0])
    shutil.move(paths[1], tmp_path / "images" / "moved.png")
    write_collection(tmp_path / "images" / "new", 3)

    with Searcher.open(index, device="cpu") as searcher:
        model = searcher.model
    updated = update_index(index, model, options=BuildOptions(workers=0, progress=False))
    ok = updated.ok_items
    assert updated.manifest.rerank_tokens["rows"] == len(ok) == 12 - 1 + 3
    rows = dict(zip(ok["path"], updated.tokens.rows(ok["id"].to_numpy(np.int64)).astype(np.float16)))
    for path in paths[2:]:  # untouched: the very same bytes
        assert np.array_equal(rows[path], old[path])
    assert np.array_equal(rows[str(tmp_path / "images" / "moved.png")], old[paths[1]])
    for path in ok["path"]:
        if "/new/" in path:  # new: what the model makes of the file
            fresh = model.decoder_tokens(model.image_features(model.preprocess_files([path])))[0].numpy()
            np.testing.assert_allclose(rows[path].astype(np.float32), fresh, atol=2e-3, rtol=2e-3)


def test_work_shards_carry_the_tokens(index, tmp_path):
    from index_builder.encode import Encoded

    tokens = np.arange(2 * 3, dtype=np.float16).reshape(2, 3)
    results = [Encoded("a", "ok", 4, 5, "x", np.ones(4, np.float32), tokens), Encoded("b", "unreadable")]
    write_shard(str(tmp_path / "shard.npz"), results, latent_dim=4)
    back = read_shard(tmp_path / "shard.npz")
    assert np.array_equal(back[0].tokens, tokens) and back[1].tokens is None
