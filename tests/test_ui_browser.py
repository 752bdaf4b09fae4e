"""The UI in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

Types a query and sees a gallery of images with their captions; clicks a result and sees its caption and its
near-duplicates; uploads an image and sees its caption and nearest images, then adds it to the words with a
weight; saves a screenshot.
"""

import os
import shutil

import pytest

from mammut_search.search import Searcher
from search_testkit import build_test_index, free_port, one_torch_thread  # noqa: F401 (autouse fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ui import app as ui_app

    from index_builder.build import BuildOptions, update_index

    index, _ = build_test_index(tmp_path_factory.mktemp("collection"), readable_captions=True)
    searcher = Searcher.open(index, device="cpu")
    first = searcher.store.ok_items.sort_values("id")["path"].iloc[0]
    shutil.copy(first, os.path.join(os.path.dirname(first), "copy-of-the-first.png"))  # a byte copy
    update_index(index, searcher.model, options=BuildOptions(workers=0, progress=False))
    port = free_port()
    app = ui_app.launch(searcher, port=port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}", searcher
    app.close()


@pytest.fixture(scope="module")
def browser(served):  # after the server: Playwright's event loop must not be current while Gradio starts
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def test_search_click_and_upload_in_a_browser(browser, served, tmp_path):
    url, searcher = served
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)

    page.locator("#query").get_by_role("textbox").fill("a red circle")
    page.locator("#query").get_by_role("textbox").press("Enter")
    thumbnails = page.locator("#results img")
    thumbnails.first.wait_for(state="visible")
    expected = searcher.search_text("a red circle", 12)
    first_caption = f"{expected[0].caption} · {expected[0].score:.3f}"
    page.locator("#results").get_by_text(first_caption).first.wait_for(state="attached")
    assert thumbnails.count() == 12
    assert "12 images for" in page.locator("#message").inner_text()
    results_text = page.locator("#results").inner_text()
    assert all(f"{hit.caption} · {hit.score:.3f}" in results_text for hit in expected)

    thumbnails.first.click()  # a click on a result: its caption and its nearest images
    page.locator("#detail").get_by_text(expected[0].caption).first.wait_for(state="attached")
    assert os.path.basename(expected[0].path) in page.locator("#detail").inner_text()
    page.locator("#similar img").first.wait_for(state="visible")

    query_image = tmp_path / "my photo.png"
    shutil.copy(expected[1].path, query_image)
    page.locator("#upload input[type=file]").set_input_files(str(query_image))
    caption = searcher.caption(str(query_image))
    page.locator("#detail").get_by_text("Caption:").first.wait_for(state="attached")
    page.wait_for_function("([sel, text]) => document.querySelector(sel).innerText.includes(text)",
                           arg=["#detail", caption.strip()[:8]])
    page.locator("#similar img").first.wait_for(state="visible")
    similar_text = page.locator("#similar").inner_text()
    assert f"{expected[1].caption} · 1.000" in similar_text  # the image itself comes first

    page.locator("#query").get_by_role("textbox").fill("   ")
    page.locator("#query").get_by_role("textbox").press("Enter")
    page.locator("#message").get_by_text("Type a few words").wait_for(state="attached")
    assert "Traceback" not in page.content()

    page.locator("#query").get_by_role("textbox").fill("a red circle")
    page.locator("#query").get_by_role("textbox").press("Enter")
    thumbnails.first.wait_for(state="visible")
    screenshot = tmp_path / "mammut-search-ui.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
    page.close()


def test_a_click_replaces_the_upload_and_a_long_query_keeps_the_layout(browser, served, tmp_path):
    url, searcher = served
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    box = page.locator("#query").get_by_role("textbox")
    button = page.locator("#search-button")
    heights = box.bounding_box()["height"], button.bounding_box()["height"]
    box.fill("a red circle and " * 300)  # 5,100 characters
    box.press("Enter")
    page.locator("#results img").first.wait_for(state="visible")
    assert box.bounding_box()["height"] <= heights[0] + 2 and button.bounding_box()["height"] <= heights[1] + 2

    query_image = tmp_path / "upload.png"
    shutil.copy(searcher.image_path(int(searcher.store.ok_items["id"].iloc[3])), query_image)
    page.locator("#upload input[type=file]").set_input_files(str(query_image))
    page.locator("#upload img").first.wait_for(state="visible")
    page.locator("#detail").get_by_text("Caption:").first.wait_for(state="attached")
    page.locator("#results img").first.click()
    page.locator("#detail").get_by_text("File:").first.wait_for(state="attached")
    page.locator("#upload img").first.wait_for(state="detached")  # the clicked image's detail, not the upload's
    page.close()


def test_failures_outside_the_handlers_reach_the_page_as_sentences(browser, served, tmp_path, monkeypatch):
    from ui import app as ui_app
    from ui.errors import SERVER_ERROR

    url, _ = served
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    toasts = page.get_by_test_id("toast-body")

    big = tmp_path / "big.png"  # over the default upload limit: refused before it is sent, with the limit and name
    with open(big, "wb") as f:
        f.truncate(11 << 20)
    page.locator("#upload input[type=file]").set_input_files(str(big))
    toasts.get_by_text('maximum allowed size of 10.0 Mb: "big.png"').wait_for(state="attached")

    monkeypatch.setattr(ui_app, "gallery", lambda searcher, answer: [(object(), "x")])  # Gradio cannot show it
    page.locator("#query").get_by_role("textbox").fill("a red circle")
    page.locator("#query").get_by_role("textbox").press("Enter")
    toasts.get_by_text(SERVER_ERROR).wait_for(state="attached")  # not a bare "Error" badge
    page.close()


def test_words_plus_an_uploaded_image_and_a_results_duplicates(browser, served, tmp_path):
    from mammut_search.query import QueryTerm

    url, searcher = served
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    blue = next(p for p, c in zip(searcher.store.ok_items["path"], searcher.store.ok_items["caption"])
                if c == "a blue square")
    query_image = tmp_path / "mine.png"
    shutil.copy(blue, query_image)
    page.locator("#upload input[type=file]").set_input_files(str(query_image))
    page.locator("#detail").get_by_text("Caption:").first.wait_for(state="attached")
    weight = page.locator("#image-weight input[type=number]")
    weight.fill("0.7")
    weight.press("Enter")
    page.locator("#query").get_by_role("textbox").fill("a red circle")
    page.locator("#query").get_by_role("textbox").press("Enter")
    page.locator("#message").get_by_text("a red circle + 0.7×").wait_for(state="attached")
    expected = searcher.search_terms([QueryTerm(text="a red circle"), QueryTerm(image=str(query_image), weight=0.7)], 12)
    page.locator("#results").get_by_text(f"{expected[0].caption} · {expected[0].score:.3f}").first.wait_for(
        state="attached")

    weight.fill("0")
    weight.press("Enter")
    page.locator("#query").get_by_role("textbox").fill("the first one's copy")
    page.locator("#query").get_by_role("textbox").press("Enter")
    page.locator("#message").get_by_text("images for the first").wait_for(state="attached")
    words = searcher.search_text("the first one's copy", 12)
    assert words[0].path.endswith("copy-of-the-first.png")  # found by its name
    page.locator("#results img").first.click()  # its byte copy is its near-duplicate
    original = os.path.basename(searcher.store.ok_items.sort_values("id")["path"].iloc[0])
    page.locator("#detail").get_by_text("Near-duplicates:").first.wait_for(state="attached")
    page.wait_for_function("([sel, text]) => document.querySelector(sel).innerText.includes(text)",
                           arg=["#detail", f"Near-duplicates: {original}"])
    page.close()
