"""Query arithmetic (rclip's syntax): terms joined by ` + ` and ` - `, each a text or an image file, searched
as the weighted sum of their unit latents; in the API, the CLI and (tested in test_ui_browser) the UI."""

import json

import numpy as np
import pytest

from mammut_search.cli import main
from mammut_search.errors import UserError
from mammut_search.query import QueryTerm, describe_terms, parse_arithmetic
from mammut_search.search import Searcher
from search_testkit import build_test_index, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_test_index(tmp_path_factory.mktemp("collection"))


def test_parsing_terms(tmp_path):
    photo = tmp_path / "beach.jpg"
    photo.write_bytes(b"not decoded here")
    assert parse_arithmetic("a red t-shirt") is None  # a hyphen inside a word is no operator
    assert parse_arithmetic('"horse" + "stripes"') == [QueryTerm(text="horse"), QueryTerm(text="stripes")]
    assert parse_arithmetic(f"{photo} - people + sunset") == [
        QueryTerm(image=str(photo)), QueryTerm(text="people", weight=-1.0), QueryTerm(text="sunset")]
    assert parse_arithmetic(f"{photo} + night", files=False)[0] == QueryTerm(text=str(photo))
    assert describe_terms([QueryTerm(text="cat"), QueryTerm(text="night", weight=-0.5)]) == "cat - 0.5×night"
    for bad in ["horse + ''", "horse - "]:
        with pytest.raises(UserError, match="empty term"):
            parse_arithmetic(bad)
    with pytest.raises(UserError, match="at most"):
        parse_arithmetic(" + ".join(["cat"] * 9))


def brute_force(searcher, latent, k):
    ids = searcher.store.ok_items["id"].to_numpy(np.int64)
    return ids[np.argsort(-(searcher.store.vectors.reconstruct(ids) @ latent), kind="stable")[:k]].tolist()


def test_terms_are_searched_as_the_normalised_weighted_sum_of_their_latents(index):
    with Searcher.open(index[0], device="cpu") as searcher:
        image = searcher.store.ok_items["path"].iloc[4]
        results = searcher.search_text(f"a blue square + {image} - a red circle", 6, vectors_only=True)
        unit = [v / np.linalg.norm(v) for v in (searcher.model.encode_text(["a blue square"])[0].numpy(),
                                               searcher.model.encode_image(searcher.model.preprocess_files([image]))[0].numpy(),
                                               searcher.model.encode_text(["a red circle"])[0].numpy())]
        expected = brute_force(searcher, unit[0] + unit[1] - unit[2], 6)
        weighted = searcher.search_terms([QueryTerm(text="a blue square"), QueryTerm(image=image, weight=50.0)], 6,
                                         vectors_only=True)
        image_alone = searcher.search_image(image, 6)
    assert results.kind == "terms" and results.query == f"a blue square + {image} - a red circle"
    assert results.ids == expected
    assert weighted.ids[0] == image_alone.ids[0]  # a heavy image term pulls its own image first


def test_weights_of_zero_alone_are_refused(index):
    with Searcher.open(index[0], device="cpu") as searcher, pytest.raises(UserError, match="weight other than 0"):
        searcher.search_terms([QueryTerm(text="cat", weight=0.0)])


def test_cli_combines_terms(index, capsys):
    assert main(["search", "a blue square - a red circle", "--index", str(index[0]), "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["kind"] == "terms" and answer["query"] == "a blue square - a red circle" and len(answer["hits"]) == 3
