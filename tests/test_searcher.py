"""The Searcher and `mammut search`: ranking against brute force, re-ranking by likelihood, refusals, odd
queries, image queries, and 32 concurrent queries answering exactly like the same queries one by one."""

import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from mammut_search.inference import load_model
from mammut_search.cli import main
from mammut_search.errors import IndexStoreError, UserError
from mammut_search import relevance
from mammut_search.search import RERANK_BY_DEFAULT, Searcher
from mammut_search.testing import tiny_model
from search_testkit import build_test_index, one_torch_thread  # noqa: F401 (autouse fixture)

QUERIES = ["a red circle", "a blue square", "a green tree", "an octopus", "a yellow star", "the blue sea",
           "a purple heart", "a smiling face"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_test_index(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def searcher(index):
    with Searcher.open(index[0], device="cpu") as s:
        yield s


def brute_force(searcher, latent: np.ndarray, k: int) -> list[int]:
    ids = searcher.store.ok_items["id"].to_numpy(np.int64)
    vectors = searcher.store.vectors.reconstruct(ids)
    order = np.argsort(-(vectors @ latent), kind="stable")
    return ids[order[:k]].tolist()


def test_open_uses_the_index_checkpoint_and_ranks_like_brute_force(searcher, index):
    assert searcher.model.checkpoint_sha256 == load_model(index[1], device="cpu").checkpoint_sha256
    results = searcher.search_text("a red circle", 5, rerank=False, vectors_only=True)
    latent = searcher.model.encode_text(["a red circle"])[0].numpy()
    assert results.ids == brute_force(searcher, latent, 5)
    assert [h.rank for h in results] == [1, 2, 3, 4, 5]
    assert [h.score for h in results] == sorted((h.score for h in results), reverse=True)
    for hit in results:
        row = searcher.item(hit.id)
        assert (hit.path, hit.caption) == (row["path"], row["caption"]) and os.path.exists(hit.path)
        assert hit.likelihood is None and hit.score == hit.similarity
    assert not results.reranked and not results.truncated
    assert results.notices == ([relevance.NOTICE] if results.nothing_matches else [])  # the tiny model's cutoff


def test_an_index_of_another_checkpoint_is_refused(index, tmp_path):
    other = tmp_path / "other"
    tiny_model(seed=1).save(other)
    with pytest.raises(IndexStoreError, match="rebuild with mammut index build"):
        Searcher.open(index[0], checkpoint=other, device="cpu")


def test_missing_index_and_bad_arguments_are_user_errors(searcher, tmp_path):
    with pytest.raises(IndexStoreError, match="no such index directory"):
        Searcher.open(tmp_path / "nowhere.index")
    for empty in ["", "   ", "\n\t"]:
        with pytest.raises(UserError, match="empty query"):
            searcher.search_text(empty)
    with pytest.raises(UserError, match="must be text"):
        searcher.search_text(None)
    for k in [0, -3, 1001, 2.5, True]:
        with pytest.raises(UserError, match="k must be"):
            searcher.search_text("a red circle", k)
    with pytest.raises(UserError, match="no indexed image"):
        searcher.similar(10_000)
    with pytest.raises(UserError):
        searcher.image_path(-1)


def test_k_larger_than_the_index_returns_every_image_once(searcher):
    results = searcher.search_text("a red circle", 100)
    assert sorted(results.ids) == sorted(searcher.store.ok_items["id"].tolist())


def test_an_over_long_query_is_cut_with_a_notice_and_ranks_like_its_cut_text(searcher):
    long_query = "a red circle on a white ground " * 40
    results = searcher.search_text(long_query, 5)
    assert results.truncated and "cut" in results.notices[0]
    assert 0 < len(results.query) < len(long_query)
    cut = searcher.search_text(results.query, 5)
    assert not cut.truncated and cut.ids == results.ids
    huge = searcher.search_text("x" * 1_000_000, 3)  # never tokenises megabytes
    assert huge.truncated and len(huge) == 3


def test_rerank_combines_similarity_and_likelihood(index):
    query = "a blue square"
    plain = Searcher.open(index[0], device="cpu", rerank_weight=0.0)
    without = plain.search_text(query, 24, rerank=False, vectors_only=True)
    assert plain.search_text(query, 24, rerank=True, vectors_only=True).ids == without.ids  # weight 0: similarity

    by_likelihood = Searcher.open(index[0], device="cpu", rerank_weight=1e6)
    reranked = by_likelihood.search_text(query, 24, rerank=True, vectors_only=True)
    assert reranked.reranked and sorted(reranked.ids) == sorted(without.ids)
    lifts = [h.likelihood for h in reranked]
    assert all(isinstance(x, float) for x in lifts)
    assert all(a >= b - 2e-6 for a, b in zip(lifts, lifts[1:]))  # a huge weight: likelihood order
    assert reranked.ids != without.ids

    mixed = Searcher.open(index[0], device="cpu", rerank_weight=0.5)
    hits = mixed.search_text(query, 24, rerank=True, vectors_only=True)
    for hit in hits:
        assert hit.score == pytest.approx(hit.similarity + 0.5 * hit.likelihood, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # the lift is log p(query | image) per token relative to the median over the index's reference images
    best = hits[0]
    direct = mixed.model.score_text([mixed.load_item_image(best.id)], [query])[0].item()
    ref_ids = mixed.reference_ids
    reference = mixed.model.score_text([mixed.load_item_image(i) for i in ref_ids], [query] * len(ref_ids))
    assert best.likelihood == pytest.approx(direct - float(np.median(reference.numpy())), abs=1e-4)


def test_rerank_default_and_switch(index):
    on = Searcher.open(index[0], device="cpu", rerank_default=True)
    off = Searcher.open(index[0], device="cpu", rerank_default=False)
    assert on.search_text("a red circle", 3).reranked and on.search_text("a red circle", 3)[0].likelihood is not None
    assert not off.search_text("a red circle", 3).reranked
    assert off.search_text("a red circle", 3, rerank=True).reranked


def test_nothing_matches_is_said_when_no_candidate_beats_the_baseline(index):
    strict = Searcher.open(index[0], device="cpu", no_match_cutoff=float("inf"))
    lenient = Searcher.open(index[0], device="cpu", no_match_cutoff=-float("inf"))
    results = strict.search_text("an octopus", 5, rerank=True)
    assert results.nothing_matches and len(results) == 5  # the closest are still given, flagged
    assert any("nothing in the index" in n for n in results.notices)
    assert not lenient.search_text("an octopus", 5, rerank=True).nothing_matches
    assert strict.search_text("an octopus", 5, rerank=False).nothing_matches  # re-ranked or not


def test_nothing_matches_compares_the_querys_best_similarity_with_the_cutoff(index):
    searcher = Searcher.open(index[0], device="cpu")
    words = relevance.calibration_words(searcher.model.tokenizer)
    assert words and all(len(w) >= 4 and w.isalpha() for w in words)
    results = searcher.search_text("an octopus", 5, rerank=False, vectors_only=True)
    best = float(np.max(searcher.store.vectors.reconstruct(np.arange(searcher.store.vectors.ntotal))
                        @ searcher.model.encode_text(["an octopus"]).numpy()[0]))
    assert results.match == pytest.approx(best, abs=1e-5) == results[0].similarity
    above = Searcher.open(index[0], device="cpu", no_match_cutoff=results.match + 1e-4)
    below = Searcher.open(index[0], device="cpu", no_match_cutoff=results.match - 1e-4)
    assert above.search_text("an octopus", 5).nothing_matches
    assert not below.search_text("an octopus", 5).nothing_matches


def test_a_candidate_whose_file_went_away_is_still_reranked_from_its_stored_tokens(tmp_path):
    index, _ = build_test_index(tmp_path, count=8)
    with Searcher.open(index, device="cpu") as searcher:
        gone = searcher.search_text("a red circle", 1, rerank=False)[0]
        os.remove(gone.path)
        results = searcher.search_text("a red circle", 8, rerank=True)
    assert len(results) == 8 and gone.id in results.ids
    assert all(h.likelihood is not None for h in results)


def test_image_queries_find_the_image_itself_from_a_path_bytes_or_pil(searcher):
    item = searcher.store.ok_items.iloc[3]
    from_path = searcher.search_image(item["path"], 4, with_caption=True)
    assert from_path[0].id == item["id"] and from_path[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert from_path.kind == "image" and from_path.query == item["path"]
    assert from_path.query_caption == searcher.caption(item["path"])
    with open(item["path"], "rb") as f:
        data = f.read()
    assert searcher.search_image(data, 4).ids == from_path.ids
    assert searcher.search_image(Image.open(io.BytesIO(data)), 4).ids == from_path.ids
    assert from_path.query_caption == searcher.model.caption([Image.open(io.BytesIO(data)).convert("RGB")],
                                                              beam_width=searcher.caption_beam_width)[0]


def test_bad_image_queries_are_user_errors(searcher, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for bad in [str(text), str(tmp_path / "missing.jpg"), b"", b"GIF89a broken", 42]:
        with pytest.raises(UserError):
            searcher.search_image(bad, 3)
    with pytest.raises(UserError):
        searcher.caption(b"\x89PNG\r\n\x1a\n truncated")


def test_similar_uses_the_stored_latent_and_leaves_the_item_out(searcher):
    item_id = int(searcher.store.ok_items["id"].iloc[5])
    similar = searcher.similar(item_id, 4)
    assert item_id not in similar.ids and len(similar) == 4
    assert similar.query_caption == searcher.item(item_id)["caption"]
    by_image = searcher.search_image(searcher.image_path(item_id), 5)
    assert [i for i in by_image.ids if i != item_id][:4] == similar.ids


def test_info_describes_the_index(searcher, index):
    info = searcher.info()
    assert info["images"] == 24 and info["skipped"] == 0
    assert info["checkpoint_sha256"] == searcher.model.checkpoint_sha256
    assert info["checkpoint_dir"] == os.path.abspath(index[1]) and info["created"] and info["device"] == "cpu"
    json.dumps(info)


def run_all(searcher, jobs):
    answers = []
    for kind, query, k, rerank in jobs:
        if kind == "text":
            answers.append(searcher.search_text(query, k, rerank=rerank).to_dict())
        else:
            answers.append(searcher.search_image(query, k, with_caption=True).to_dict())
    return answers


def test_32_concurrent_queries_answer_like_one_by_one(index):
    paths = Searcher.open(index[0], device="cpu").store.ok_items["path"].tolist()
    jobs = [("text", QUERIES[i % len(QUERIES)], 3 + i % 5, i % 3 != 0) for i in range(24)]
    jobs += [("image", paths[i], 4, None) for i in range(8)]
    sequential = run_all(Searcher.open(index[0], device="cpu"), jobs)
    concurrent_searcher = Searcher.open(index[0], device="cpu")
    with ThreadPoolExecutor(max_workers=32) as pool:
        concurrent = list(pool.map(lambda job: run_all(concurrent_searcher, [job])[0], jobs))
    assert concurrent == sequential


# ----- the command line -----

def test_cli_text_search_json_and_table(index, capsys):
    assert main(["search", "a red circle", "--index", str(index[0]), "-k", "3", "--json", "--device", "cpu"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in answer["hits"]] == [1, 2, 3] and answer["query"] == "a red circle"
    assert answer["reranked"] is RERANK_BY_DEFAULT
    assert main(["search", "a red circle", "--index", str(index[0]), "-k", "2", "--no-rerank"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 2 and lines[0].split("\t")[0] == "1" and os.path.exists(lines[0].split("\t")[2])


def test_cli_image_search_prints_the_caption(index, capsys):
    image = sorted((index[0].parent / "images").iterdir())[0]
    assert main(["search", "--image", str(image), "--index", str(index[0]), "-k", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.split("\n")[0].split("\t")[2] == str(image) and "query image caption:" in err


@pytest.mark.parametrize("argv, message", [
    (["search", "--index", "IDX"], "either a text query"),
    (["search", "q", "--image", "x.png", "--index", "IDX"], "either a text query"),
    (["search", "   ", "--index", "IDX"], "empty query"),
    (["search", "q", "--index", "IDX", "-k", "0"], "k must be"),
    (["search", "q", "--index", "MISSING"], "no such index directory"),
    (["search", "--image", "MISSING.png", "--index", "IDX"], "MISSING.png"),
])
def test_cli_errors_are_one_line(index, capsys, tmp_path, argv, message):
    argv = [str(index[0]) if a == "IDX" else str(tmp_path / a) if a.startswith("MISSING") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_refuses_another_checkpoint(index, capsys, tmp_path):
    tiny_model(seed=2).save(tmp_path / "other")
    assert main(["search", "q", "--index", str(index[0]), "--checkpoint", str(tmp_path / "other")]) == 2
    assert "index was built with checkpoint" in capsys.readouterr().err


def test_searcher_falls_back_to_the_bundled_checkpoint_when_the_index_one_is_gone(tmp_path, monkeypatch):
    index, checkpoint = build_test_index(tmp_path, count=4)
    bundled = tmp_path / "bundled"
    shutil.move(checkpoint, bundled)
    monkeypatch.setattr("mammut_search.inference.bundled_checkpoint_dir", lambda: bundled)
    assert len(Searcher.open(index, device="cpu").search_text("a red circle", 2)) == 2


def test_a_searcher_opened_before_an_update_switches_to_the_new_generation(tmp_path):
    from index_builder.build import BuildOptions, update_index
    from mammut_search.inference import load_model
    from search_testkit import write_collection

    index, checkpoint = build_test_index(tmp_path, count=6)
    searcher = Searcher.open(index, device="cpu", rerank_default=False)  # vectors not loaded yet
    write_collection(tmp_path / "images" / "more", count=3)
    (tmp_path / "images" / "000-red-circle.png").unlink()
    update_index(index, load_model(checkpoint, device="cpu"), options=BuildOptions(workers=0, progress=False))

    results = searcher.search_text("a red circle", 8)
    paths = {h.path for h in results}
    assert len(results) == 8 and searcher.info()["generation"] == 2
    assert str(tmp_path / "images" / "more" / "000-red-circle.png") in paths
    assert str(tmp_path / "images" / "000-red-circle.png") not in paths
    for hit in results:
        assert searcher.item(hit.id)["path"] == hit.path
