"""One image, one caption: the index, `mammut caption`, image queries and uploads decode captions alike,
with the setting the index records."""

import json
import shutil

from index_builder.build import BuildOptions, build_index, update_index
from mammut_search.cli import main
from mammut_search.images import load_image
from mammut_search.index.store import IndexStore
from mammut_search.model.config import CAPTION_BEAM_WIDTH
from mammut_search.search import Searcher
from search_testkit import one_torch_thread, write_collection  # noqa: F401 (autouse fixture)


def test_an_image_has_the_same_caption_in_the_index_the_cli_and_an_upload(tmp_path, model, capsys):
    from ui.app import markdown_text, search_image

    paths = list(write_collection(tmp_path / "images", 12))
    model.save(tmp_path / "checkpoint")
    store = build_index([tmp_path / "images"], tmp_path / "i", model, checkpoint_dir=tmp_path / "checkpoint",
                        options=BuildOptions(batch_size=4, workers=0, progress=False))
    assert store.manifest.caption_beam_width == CAPTION_BEAM_WIDTH
    indexed = dict(zip(store.items["path"], store.items["caption"]))
    searcher = Searcher(store, model)
    # --json: the exact text (the plain lines escape control characters, which a random tiny model writes)
    assert main(["caption", *paths, "--checkpoint", str(tmp_path / "checkpoint"), "--device", "cpu", "--json"]) == 0
    printed = {row["path"]: row["caption"] for row in map(json.loads, capsys.readouterr().out.splitlines())}
    for path in paths:
        assert searcher.search_image(path, 1, with_caption=True).query_caption == indexed[path] == printed[path]
        assert searcher.caption(open(path, "rb").read()) == indexed[path]
        assert search_image(searcher, path, 1)[0].startswith(f"**Caption:** {markdown_text(indexed[path])}  \n")


def test_an_index_built_with_another_width_keeps_it_for_queries_and_updates(tmp_path, model):
    paths = list(write_collection(tmp_path / "images", 6))
    options = BuildOptions(batch_size=4, workers=0, progress=False, caption_beam_width=3)
    store = build_index([tmp_path / "images"], tmp_path / "i", model, options=options)
    assert store.manifest.caption_beam_width == 3 and Searcher(store, model).caption_beam_width == 3
    shutil.copy(paths[0], tmp_path / "images" / "copy.png")
    store = update_index(tmp_path / "i", model, options=BuildOptions(batch_size=4, workers=0, progress=False))
    assert IndexStore.open(tmp_path / "i").manifest.caption_beam_width == 3
    row = store.items[store.items["path"].str.endswith("copy.png")].iloc[0]
    assert row["caption"] == model.caption([load_image(paths[0])], beam_width=3)[0]
