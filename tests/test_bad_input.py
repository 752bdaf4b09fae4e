"""Bad input on the command line and through the API: undecodable queries, a full disk, hostile file names,
a file given where an index belongs. Each gets one sentence, never a traceback, and loses nothing."""

import errno
import shutil

import pytest

from index_builder.build import BuildOptions, build_index, update_index
from mammut_search.cli import main
from mammut_search.errors import UserError
from mammut_search.index.store import IndexStore
from mammut_search.search import Searcher
from search_testkit import one_torch_thread, write_collection  # noqa: F401 (autouse fixture)

EVIL_NAME = "evil\n\x1b[31mred\x1b[0m\tname.png"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    from mammut_search.testing import tiny_model

    root = tmp_path_factory.mktemp("bad-input")
    paths = list(write_collection(root / "images", 6))
    shutil.copy(paths[0], root / "images" / EVIL_NAME)
    model = tiny_model()
    model.save(root / "checkpoint")
    build_index([root / "images"], root / "photos.index", model, checkpoint_dir=root / "checkpoint",
                options=BuildOptions(batch_size=4, workers=0, progress=False))
    return root


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_query_with_invalid_utf8_is_a_one_line_error(indexed, capsys):
    query = b"red \xff apple".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    assert main(["search", query, "--index", str(indexed / "photos.index")]) == 2
    assert "not valid UTF-8" in one_line_error(capsys)
    with Searcher.open(indexed / "photos.index", device="cpu") as searcher:
        with pytest.raises(UserError, match="not valid UTF-8"):
            searcher.search_text("red \ud800 apple")  # a lone surrogate, as JSON can carry one
        from ui.app import search_text

        gallery, message, _ = search_text(searcher, query, 3, False)
        assert gallery == [] and "not valid UTF-8" in message


def test_file_names_are_printed_escaped(indexed, capsys):
    image = indexed / "images" / EVIL_NAME
    assert main(["search", "--image", str(image), "--index", str(indexed / "photos.index"), "-k", "7"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 7 and all(line.count("\t") == 4 for line in lines)  # rank, score, path, caption, why
    assert "\x1b" not in out and "evil\\n\\x1b[31mred\\x1b[0m\\tname.png" in out


def test_a_file_given_as_the_index_is_named_as_such(capsys):
    assert main(["search", "a cat", "--index", "/etc/passwd"]) == 2
    err = one_line_error(capsys)
    assert "/etc/passwd: a file, not an index" in err and "--out" not in err


def test_a_full_disk_during_update_or_build_is_a_sentence_and_keeps_the_index(indexed, tmp_path, monkeypatch,
                                                                               capsys):
    import mammut_search.index.store as store

    index = tmp_path / "photos.index"
    shutil.copytree(indexed / "photos.index", index)
    before = IndexStore.open(index).items
    write_collection(indexed / "images" / "new", 2)  # something to encode and write

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_items_parquet", full)
    assert main(["index", "update", str(index), "--quiet", "--workers", "0"]) == 2
    assert "the disk is full" in one_line_error(capsys)
    assert IndexStore.open(index).items.equals(before)
    with pytest.raises(UserError, match="the disk is full"):
        build_index([indexed / "images"], index, Searcher.open(index, device="cpu").model,
                    options=BuildOptions(workers=0, progress=False))
    assert IndexStore.open(index).items.equals(before)
    shutil.rmtree(indexed / "images" / "new")
