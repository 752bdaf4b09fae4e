"""Odd input to the search surfaces: weights that are no finite number, terms that name no image, a damaged keyword
index or relevance entry, long terms. Each gets a one-line message naming it, or is searched as well as it can be;
never a traceback."""

import json
import logging
import re
import shutil

import numpy as np
import pytest

from mammut_search.cli import main
from mammut_search.errors import UserError
from mammut_search.query import MAX_QUERY_CHARS, QueryTerm, parse_arithmetic
from mammut_search.search import Searcher
from search_testkit import build_test_index, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_test_index(tmp_path_factory.mktemp("collection"))[0]


@pytest.fixture(scope="module")
def searcher(index):
    return Searcher.open(index, device="cpu")


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -float("inf"), "2", None, True])
def test_a_weight_that_is_no_finite_number_is_refused_by_name(searcher, weight):
    with pytest.raises(UserError, match=r"term 2 of the query has the weight .*a weight is a finite number"):
        searcher.search_terms([QueryTerm(text="a red circle"), QueryTerm(text="blue", weight=weight)], 3)


def test_huge_weights_rank_as_their_ratio_does(searcher):
    huge = searcher.search_terms([QueryTerm(text="red", weight=1e308), QueryTerm(text="star", weight=-1e308)], 5)
    unit = searcher.search_terms([QueryTerm(text="red"), QueryTerm(text="star", weight=-1.0)], 5)
    assert huge.ids == unit.ids and np.isfinite([h.score for h in huge]).all()


def test_a_term_is_a_text_or_an_image_and_terms_are_few(searcher, index):
    image = str(next((index.parent / "images").iterdir()))
    for terms in ([QueryTerm(text="red", image=image)], [QueryTerm(weight=1.0)]):
        with pytest.raises(UserError, match="either a text or an image"):
            searcher.search_terms(terms, 3)
    with pytest.raises(UserError, match="at most 8 terms"):
        searcher.search_terms([QueryTerm(text=f"word{i}") for i in range(300)], 3)


def test_a_leading_operator_and_a_missing_image_are_named(tmp_path):
    for query in ["- red", "- red - blue", "+ stripes", " - "]:
        with pytest.raises(UserError, match=re.escape(f"starts with '{query.split()[0]}': put a term")):
            parse_arithmetic(query)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'beach.jpg'}: no such file")):
        parse_arithmetic(f"sunset + {tmp_path / 'beach.jpg'}")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path}: a folder")):
        parse_arithmetic(f"sunset - {tmp_path}")
    assert parse_arithmetic("sunset + beach.jpg", files=False)[1] == QueryTerm(text="beach.jpg")  # the UI's words


def test_the_words_of_a_long_term_are_cut_where_the_models_text_is(searcher):
    long_term = "zzz " * (MAX_QUERY_CHARS // 4) + "circle"
    answer = searcher.search_text(f"red + {long_term}", 5)
    assert answer.hybrid and not any("circle" in hit.why() for hit in answer)
    assert any("circle" in hit.why() for hit in searcher.search_text("red + zzz circle", 5))


def test_a_damaged_keyword_index_leaves_the_vectors_searching(index, tmp_path, caplog):
    damaged = tmp_path / "damaged.index"
    shutil.copytree(index, damaged)
    keywords = next(damaged.rglob("keywords.sqlite"))
    data = bytearray(keywords.read_bytes())
    data[200::97] = bytes(b ^ 0x5A for b in data[200::97])  # the same size, other bytes
    keywords.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING), Searcher.open(damaged, device="cpu") as searcher:
        answers = [searcher.search_text("a red circle", 4) for _ in range(2)]
    assert [len(a) for a in answers] == [4, 4]
    said = [r.getMessage() for r in caplog.records if "cannot search the keyword index" in r.getMessage()]
    assert len(said) == 1 and str(keywords) in said[0]


@pytest.mark.parametrize("entry", [{"version": 2, "cutoff": "0.3"}, {"version": 2, "cutoff": {}},
                                   {"version": 2, "cutoff": float("nan")}, {"version": 2, "cutoff": True}])
def test_a_hand_edited_relevance_entry_counts_as_no_cutoff(index, tmp_path, capsys, entry):
    edited = tmp_path / "edited.index"
    shutil.copytree(index, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    (edited / "manifest.json").write_text(json.dumps({**manifest, "relevance": entry}))
    with Searcher.open(edited, device="cpu") as searcher:
        answer = searcher.search_text("an octopus", 3, vectors_only=True)
    assert len(answer) == 3 and not answer.nothing_matches
    assert main(["index", "info", str(edited)]) == 0
    assert "nothing-matches cutoff" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["index", "duplicates", "INDEX", "--threshold", "abc"], "expected a cosine similarity, a number between -1 and 1"),
    (["index", "build", "IMAGES", "--out", "OUT", "--batch-size", "1.5"], "expected a whole number, at least 1"),
    (["index", "build", "IMAGES", "--out", "OUT", "--workers", "x"], "expected a whole number, 0 or more")])
def test_number_options_say_what_they_expect(index, capsys, argv, expected):
    argv = [{"INDEX": str(index), "IMAGES": str(index.parent / "images"), "OUT": str(index.parent / "o")}.get(a, a)
            for a in argv]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert expected in err and "invalid" not in err


@pytest.mark.parametrize("k, weight, expected", [
    (4.0, float("nan"), "The uploaded image has the weight nan; a weight is a finite number"),
    (4, "abc", "The uploaded image has the weight 'abc'"), (4, [1], "The uploaded image has the weight [1]"),
    (float("nan"), 0.5, "K must be a whole number from 1 to 1000, got nan"),
    ("x", 0.0, "K must be a whole number from 1 to 1000, got 'x'"), (2.5, 0.0, "got 2.5")])
def test_the_pages_odd_numbers_get_a_message_naming_them(searcher, index, k, weight, expected):
    from ui import app

    image = str(next((index.parent / "images").iterdir()))
    gallery, message, ids = app.search_text(searcher, "a red circle", k, False, False, image, weight)
    assert (gallery, ids) == ([], []) and message.startswith("⚠️ ") and expected in message


def test_odd_ids_and_thresholds_of_duplicates_are_named(searcher):
    for item_id in (1.5, float("inf"), float("nan"), True, "x", 10**9):
        with pytest.raises(UserError, match=re.escape(repr(item_id) if item_id != 10**9 else str(item_id))):
            searcher.duplicates(item_id)
    for threshold in (float("nan"), float("inf"), "0.9", None, True):
        with pytest.raises(UserError, match="a near-duplicate threshold is a cosine similarity, a number, got"):
            searcher.duplicates(0, threshold=threshold)
    assert searcher.similar(0, 3.0).ids == searcher.similar(0, 3).ids  # a slider's whole float


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "", "meta"])
@pytest.mark.parametrize("command", [["search", "red", "--index", "INDEX"], ["caption", "IMAGE"],
                                     ["eval", "--folder", "IMAGES"], ["index", "build", "IMAGES", "--out", "OUT"],
                                     ["ui", "--index", "INDEX"]])
def test_a_device_torch_cannot_use_is_refused_before_any_work(index, capsys, command, device):
    image = str(next((index.parent / "images").iterdir()))
    names = {"INDEX": str(index), "IMAGE": image, "IMAGES": str(index.parent / "images"),
             "OUT": str(index.parent / "o")}
    with pytest.raises(SystemExit) as exited:
        main([names.get(a, a) for a in command] + ["--device", device])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument --device: {device!r} is not a device" in err
    assert "Traceback" not in err and not (index.parent / "o").exists()
