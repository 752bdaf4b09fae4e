"""Hybrid search: the keyword index of file names, folders and captions, written in each generation and fused
with the vectors; results say why they matched; vectors only is one flag away; the relevance cutoff lives in
the index and is calibrated again by every update."""

import json
import shutil

import numpy as np
import pytest

from index_builder.build import BuildOptions, update_index
from mammut_search.cli import main
from mammut_search.index.keywords import KEYWORDS_FILE, item_fields, query_words
from mammut_search import relevance
from mammut_search.index.store import IndexStore
from mammut_search.search import Searcher
from search_testkit import build_test_index, one_torch_thread  # noqa: F401 (autouse fixture)

NAMED = "paris-2019/grandmas-birthday-cake.png"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    (root / "images" / "paris-2019").mkdir(parents=True)
    from search_testkit import write_collection

    drawings = write_collection(root / "images")
    blue_square = next(p for p, label in drawings.items() if label == "a blue square")
    shutil.copy(blue_square, root / "images" / NAMED)  # its pixels show a blue square, not a cake
    return build_test_index(root)


def test_a_file_named_with_the_query_words_ranks_first_whatever_its_pixels(index):
    with Searcher.open(index[0], device="cpu") as searcher:
        results = searcher.search_text("grandmas birthday", 5)
        pictures_only = searcher.search_text("grandmas birthday", 5, vectors_only=True)
        by_folder = searcher.search_text("photos from paris", 3)
        plural = searcher.search_text("birthdays", 3)
    first = results[0]
    assert results.hybrid and first.path.endswith(NAMED)
    assert set(first.name_words) == {"grandmas", "birthday"} and "name: grandmas birthday" in first.why()
    assert first.similarity is not None and f"similarity {first.similarity:.3f}" in first.why()
    assert not pictures_only.hybrid and all(not h.name_words for h in pictures_only)
    assert by_folder[0].path.endswith(NAMED) and by_folder[0].name_words == ("paris",)
    assert plural[0].path.endswith(NAMED)  # stemmed: "birthdays" finds "birthday"


def test_fusion_keeps_vector_results_and_a_query_without_known_words_ranks_by_vectors(index):
    with Searcher.open(index[0], device="cpu") as searcher:
        hybrid = searcher.search_text("a red circle", 24)
        vectors = searcher.search_text("a red circle", 24, vectors_only=True)
        unknown = searcher.search_text("zebra", 6)
        unknown_vectors = searcher.search_text("zebra", 6, vectors_only=True)
    assert sorted(hybrid.ids) == sorted(vectors.ids)  # every image still there, in another order
    assert hybrid.ids != vectors.ids and all(set(h.name_words) <= {"red", "circle"} for h in hybrid)
    named = [h for h in hybrid if h.name_words]
    assert named and hybrid[0].name_words  # the images named "red circle" come first
    assert unknown.ids == unknown_vectors.ids and [h.score for h in unknown] == [h.score for h in unknown_vectors]


def test_the_keyword_index_is_part_of_each_generation(tmp_path):
    index, _ = build_test_index(tmp_path, count=6)
    store = IndexStore.open(index)
    assert KEYWORDS_FILE in store.manifest.files and KEYWORDS_FILE in store.manifest.checksums
    (tmp_path / "images" / "000-red-circle.png").rename(tmp_path / "images" / "wedding-day.png")
    model = Searcher.open(index, device="cpu").model
    updated = update_index(index, model, options=BuildOptions(workers=0, progress=False))
    hits = updated.keywords.search("wedding", 5)
    assert [updated.path_of(h.id) for h in hits] == [str(tmp_path / "images" / "wedding-day.png")]
    assert [updated.path_of(h.id) for h in updated.keywords.search("red", 5)] == []
    assert IndexStore.open(index).manifest.files[KEYWORDS_FILE] == (index / KEYWORDS_FILE).stat().st_size


def test_words_of_names_folders_and_queries():
    assert item_fields("/p/photos/paris-2019/IMG_4031.JPG", "a cat", ["/p/photos"]) == (
        "IMG_4031", "photos paris-2019", "a cat")
    assert query_words("A picture of the Eiffel tower, at night") == ["eiffel", "tower", "night"]


def test_cli_says_why_and_has_a_vectors_only_flag(index, capsys):
    assert main(["search", "grandmas birthday", "--index", str(index[0]), "-k", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0].split("\t")
    assert first[2].endswith(NAMED) and first[4].startswith("name: grandmas birthday; similarity")
    assert main(["search", "grandmas birthday", "--index", str(index[0]), "-k", "2", "--vectors-only", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["hybrid"] is False and all(h["name_words"] == [] for h in answer["hits"])


def test_the_relevance_cutoff_is_calibrated_on_the_index_and_again_by_each_update(tmp_path):
    from search_testkit import write_collection

    index, _ = build_test_index(tmp_path, count=8)
    before = IndexStore.open(index).manifest.relevance
    assert before["version"] == relevance.VERSION and np.isfinite(before["cutoff"]) and before["queries"] > 0
    with Searcher.open(index, device="cpu") as searcher:
        answer = searcher.search_text("an octopus", 3, vectors_only=True)
        assert relevance.cutoff(searcher.store.manifest) == before["cutoff"]
        assert answer.nothing_matches == (answer.match < before["cutoff"])
        model = searcher.model
    write_collection(tmp_path / "images" / "more", count=16)
    after = update_index(index, model, options=BuildOptions(workers=0, progress=False)).manifest.relevance
    assert after["version"] == relevance.VERSION
    assert after["cutoff"] != before["cutoff"]  # measured again on the new vectors
