"""Small things a user sees: plot ticks, log lines, counts in messages, packaging metadata, the about table."""

import logging
import tomllib
from pathlib import Path

import pandas as pd

from search_testkit import one_torch_thread, write_collection  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parent.parent


def test_the_recall_plot_has_a_title_and_whole_number_ticks(tmp_path, model):
    from mammut_search.eval.evaluation import evaluate, recall_figure

    labels = write_collection(tmp_path / "images", 24)
    pairs = pd.DataFrame({"image": list(labels), "caption": [f"{c} number {i}" for i, c in enumerate(labels.values())]})
    result = evaluate(pairs, model, ks=(1,), captions=False, progress=False)
    figure = recall_figure(result)
    figure.canvas.draw()
    ax = figure.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "1" in ticks and "10" in ticks and not any(t.endswith(".0") for t in ticks)
    assert "Recall@k" in ax.get_title()


def test_pyproject_license_is_an_spdx_expression():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"


def test_the_readme_says_the_browser_test_needs_chromium():
    assert "chromium" in (REPO / "README.md").read_text().lower()


def test_the_ui_log_has_no_faiss_loader_chatter():
    from mammut_search.cli.ui import configure_logging

    configure_logging()
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)


def test_the_about_table_has_no_empty_header_row(tmp_path):
    from mammut_search.search import Searcher
    from search_testkit import build_test_index
    from ui.app import about_markdown

    index, _ = build_test_index(tmp_path, count=4)
    with Searcher.open(index, device="cpu") as searcher:
        lines = about_markdown(searcher.info(private=True)).splitlines()
    assert all(cell.strip() for cell in lines[0].strip("|").split("|"))  # a header row with words in it


def test_update_reports_encoded_and_skipped_files_truthfully(tmp_path, model, caplog):
    from index_builder.build import BuildOptions, build_index, update_index

    write_collection(tmp_path / "images", 3)
    options = BuildOptions(batch_size=4, workers=0, progress=False)
    build_index([tmp_path / "images"], tmp_path / "i", model, options=options)
    from PIL import Image

    Image.new("RGB", (30, 20), (10, 200, 90)).save(tmp_path / "images" / "new.png")  # bytes not yet indexed
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "images" / "cut.jpg").write_bytes(b"\xff\xd8\xff")
    with caplog.at_level(logging.INFO, logger="index_builder"):
        update_index(tmp_path / "i", model, options=options)
    text = caplog.text
    assert "encoded 1 image" in text and "2 files could not be decoded" in text
    assert "encoding 3 files" not in text


def test_the_readme_stays_short_with_the_details_in_docs():
    readme = (REPO / "README.md").read_text()
    assert len(readme) <= 12_000
    for link in ("docs/model.md", "docs/quality.md", "docs/training.md", "docs/search.md", "docs/scaling.md"):
        assert link in readme and (REPO / link).is_file()
