"""The UI over HTTP: searches through the Gradio API, thumbnails of indexed images served, and every request
for another file (`..`, absolute paths, URL-encoded variants, the index's own files, /etc/passwd) refused;
uploads checked and size-limited, optional password, 127.0.0.1 by default, no traceback ever in a page."""

import http.client
import io
import json
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from PIL import Image

from mammut_search.cli import build_parser
from mammut_search.search import Searcher
from search_testkit import build_test_index, free_port, one_torch_thread  # noqa: F401 (autouse fixture)
from ui import app as ui_app
from ui import guard

MAX_UPLOAD = "200kb"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    index, checkpoint = build_test_index(tmp_path_factory.mktemp("collection"), readable_captions=True)
    searcher = Searcher.open(index, device="cpu", no_match_cutoff=0.5)  # the tiny model's matches stay below
    port = free_port()
    app = ui_app.launch(searcher, port=port, max_file_size=MAX_UPLOAD, block=False, quiet=True)
    yield {"base": f"http://127.0.0.1:{port}", "port": port, "searcher": searcher, "index": index,
           "checkpoint": checkpoint, "app": app}
    app.close()


def call(base: str, api_name: str, data: list, cookies=None) -> tuple[str, object]:
    """Run an event through the Gradio HTTP API -> (last event name, its data). A text search given
    (query, k, rerank) searches names and captions too, with no image added."""
    if api_name == "search" and len(data) == 3:
        data = [*data, False, None, 0]
    with httpx.Client(base_url=base, timeout=60, cookies=cookies) as client:
        started = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
        started.raise_for_status()
        event_id = started.json()["event_id"]
        text = client.get(f"/gradio_api/call/{api_name}/{event_id}").text
    event, payload = None, None
    for line in text.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            payload = json.loads(line[len("data: "):])
    return event, payload


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client-side normalisation of `..` or %-escapes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_page_is_served_on_localhost(served):
    assert served["app"].server_name == "127.0.0.1"
    assert build_parser({"ui"}).parse_args(["ui", "--index", "x"]).host == "127.0.0.1"
    status, body = raw_get(served["port"], "/")
    assert status == 200 and b"mammut-search" in body


def test_a_text_search_returns_captioned_thumbnails_of_indexed_images(served):
    event, (gallery, message, _) = call(served["base"], "search", ["a red circle", 6, True])
    assert event == "complete" and "6 images" in message
    expected = served["searcher"].search_text("a red circle", 6, rerank=True)
    assert len(gallery) == len(expected)
    for entry, hit in zip(gallery, expected):  # then the words it matched, if any
        assert entry["caption"].startswith(f"{hit.caption} · {hit.score:.3f}")
        assert all(word in entry["caption"] for word in hit.name_words + hit.caption_words)
    for entry, hit in zip(gallery, expected):
        status, body = raw_get(served["port"], httpx.URL(entry["image"]["url"]).raw_path.decode())
        assert status == 200
        shown = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), np.float32)
        original = np.asarray(Image.open(hit.path).convert("RGB"), np.float32)
        assert shown.shape == original.shape and np.abs(shown - original).mean() < 8  # lossy webp copy


def test_messages_for_empty_long_and_unmatched_queries(served):
    _, (gallery, message, _) = call(served["base"], "search", ["   ", 6, True])
    assert gallery == [] and "Type a few words" in message
    _, (gallery, message, _) = call(served["base"], "search", ["a red circle " * 100, 6, False])
    assert "cut" in message and len(gallery) == 6
    _, (gallery, message, _) = call(served["base"], "search", ["an octopus", 6, True])
    assert "Nothing in the index seems to match" in message and len(gallery) == 6  # no words, and below the cutoff
    event, data = call(served["base"], "search", ["a red circle", 0, False])  # below the slider's range
    assert event == "error" and "Traceback" not in json.dumps(data)


INDEX_FILES = ("manifest.json", "items.parquet", "index.faiss")


def refused_paths(served) -> list[str]:
    index = str(served["index"].resolve())
    image = str(served["searcher"].image_path(int(served["searcher"].store.ok_items["id"].iloc[0])))
    from gradio.route_utils import DEFAULT_TEMP_DIR

    names = ["/etc/passwd", "../../../../../../../../etc/passwd", "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
             "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "%2Fetc%2Fpasswd", "%252Fetc%252Fpasswd",
             "....//....//....//etc/passwd", f"{DEFAULT_TEMP_DIR}/../../../../etc/passwd",
             f"{DEFAULT_TEMP_DIR}/..%2f..%2f..%2f..%2fetc%2fpasswd", "file:///etc/passwd",
             image, quote(image, safe=""), index, *(f"{index}/{name}" for name in INDEX_FILES),
             quote(f"{index}/manifest.json", safe=""), str(served["checkpoint"] / "model.safetensors")]
    return [f"{prefix}{name}" for prefix in ("/gradio_api/file=", "/file=") for name in names] + [
        "/static/../../../../etc/passwd", "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/gradio_api/file=http://127.0.0.1:1/", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
    ]


def test_files_outside_the_served_thumbnails_are_refused(served):
    secrets = [b"root:", (served["index"] / "manifest.json").read_bytes()[:40],
               (served["index"] / "index.faiss").read_bytes()[:16]]
    for path in refused_paths(served):
        status, body = raw_get(served["port"], path)
        assert status in (400, 403, 404), (path, status)
        assert not any(s in body for s in secrets), path


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_an_image_upload_gets_its_caption_and_nearest_images(served):
    searcher = served["searcher"]
    item = searcher.store.ok_items.iloc[2]
    with httpx.Client(base_url=served["base"], timeout=60) as client:
        with open(item["path"], "rb") as f:
            uploaded = client.post("/gradio_api/upload", files={"files": ("query.png", f, "image/png")})
    assert uploaded.status_code == 200
    event, (text, gallery, _) = call(served["base"], "search_by_image", [file_data(uploaded.json()[0]), 4])
    assert event == "complete"
    assert f"**Caption:** {ui_app.markdown_text(searcher.caption(item['path']))}" in text
    assert len(gallery) == 4 and gallery[0]["caption"] == f"{item['caption']} · 1.000"


def test_an_upload_that_is_not_an_image_gets_a_message(served):
    with httpx.Client(base_url=served["base"], timeout=60) as client:
        uploaded = client.post("/gradio_api/upload", files={"files": ("x.png", b"not an image", "image/png")})
    event, data = call(served["base"], "search_by_image", [file_data(uploaded.json()[0]), 4])
    text = json.dumps(data)
    assert "Traceback" not in text and "File " not in text


def test_event_inputs_naming_files_outside_the_uploads_are_refused(served):
    index = served["index"].resolve()
    image = served["searcher"].image_path(int(served["searcher"].store.ok_items["id"].iloc[0]))
    for path in ["/etc/passwd", str(index / "manifest.json"), image, "../../../../etc/passwd"]:
        event, data = call(served["base"], "search_by_image", [file_data(path), 4])
        assert event == "error" or (data and "⚠️" in data[0]), (path, event, data)
        assert "root:" not in json.dumps(data)


def test_uploads_over_the_size_limit_are_refused(served):
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8)).save(big, "PNG")
    assert big.tell() > 200_000
    with httpx.Client(base_url=served["base"], timeout=60) as client:
        response = client.post("/gradio_api/upload", files={"files": ("big.png", big.getvalue(), "image/png")})
    assert response.status_code == 413
    assert response.text == ("The image is larger than this server's upload limit of 204,800 bytes; "
                             "choose a smaller image.")


def test_a_password_protects_the_page_and_the_files(served):
    port = free_port()
    app = ui_app.launch(served["searcher"], port=port, auth=("alice", "s3cret"), block=False, quiet=True)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.get("/config").status_code == 401
            assert client.post("/gradio_api/call/search", json={"data": ["a red circle", 3, False]}).status_code == 401
            assert client.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 400
            assert client.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
            assert client.get("/config").status_code == 200
            cookies = dict(client.cookies)
        event, (gallery, _, _) = call(base, "search", ["a red circle", 3, False], cookies=cookies)
        assert event == "complete" and len(gallery) == 3
        url = httpx.URL(gallery[0]["image"]["url"]).raw_path.decode()
        assert raw_get(port, url)[0] in (401, 403)  # without the login cookie
    finally:
        app.close()


def test_without_an_index_the_page_says_why(tmp_path):
    port = free_port()
    message = f"{tmp_path}/missing.index: no such index directory"
    app = ui_app.launch(None, port=port, index_error=message, block=False, quiet=True)
    try:
        config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=60).text
        assert "No index is open" in config and "no such index directory" in config
    finally:
        app.close()


def test_handlers_turn_any_failure_into_a_message(served, monkeypatch):
    searcher = served["searcher"]

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /secret/path")

    assert ui_app.search_text(searcher, "", 5, True)[1].startswith("Type a few words")
    monkeypatch.setattr(searcher, "search_text", broken)
    gallery, message, ids = ui_app.search_text(searcher, "a red circle", 5, True)
    assert (gallery, ids) == ([], []) and message == f"⚠️ {ui_app.SERVER_ERROR}"
    text, gallery, ids = ui_app.show_item(searcher, [1, 2], 5, 7)
    assert "no longer on the page" in text and gallery == []
    assert ui_app.search_image(searcher, "/nonexistent/x.png", 5)[0].startswith("⚠️")


def test_queries_captions_and_names_are_shown_literally(served):
    _, (_, message, _) = call(served["base"], "search", ["**red** <b>", 3, False])
    assert "images for *\\*\\*red\\*\\* \\<b\\>*" in message


def test_about_panel_lists_the_index_where_it_runs_and_no_server_paths(served):
    text = ui_app.about_markdown(served["searcher"].info(private=True))
    assert "| Images | 24 indexed, 0 files skipped |" in text
    assert served["searcher"].model.checkpoint_sha256[:12] in text
    assert "| Search | CPU, faiss\\-cpu " in text and "CPU build" in text and "| Model device | cpu |" in text
    assert str(served["index"].parent).replace("-", "\\-") not in text  # folder names only, no paths


def test_a_port_in_use_is_a_one_line_error(served):
    from mammut_search.errors import UserError

    with pytest.raises(UserError, match=f"127.0.0.1:{served['port']}.*another --port"):
        ui_app.launch(served["searcher"], port=served["port"], block=False, quiet=True)


def test_auth_argument_is_user_colon_password():
    from mammut_search.cli.ui import parse_auth
    from mammut_search.errors import UserError

    assert parse_auth("alice:pa:ss") == ("alice", "pa:ss") and parse_auth(None) is None
    for bad in ["alice", ":secret", "alice:", ""]:
        with pytest.raises(UserError, match="USER:PASSWORD"):
            parse_auth(bad)


def data_url(image: Image.Image, fmt: str) -> dict:
    import base64

    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return {"url": f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}",
            "meta": {"_type": "gradio.FileData"}}


def test_pasted_data_urls_obey_the_upload_limit_and_the_safe_loader(served):
    small = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 30, 3), np.uint8))
    event, (text, gallery, _) = call(served["base"], "search_by_image", [data_url(small, "PNG"), 3])
    assert event == "complete" and "**Caption:**" in text and len(gallery) == 3

    over = Image.fromarray(np.random.default_rng(0).integers(0, 256, (270, 270, 3), np.uint8))  # 219 kB > 200 kB
    event, data = call(served["base"], "search_by_image", [data_url(over, "PNG"), 3])  # kept nowhere: refused
    assert event == "error" and "larger than this server's upload limit" in data["error"]
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8))  # 480 kB
    response = httpx.post(f"{served['base']}/gradio_api/call/search_by_image", timeout=60,
                          json={"data": [data_url(big, "PNG"), 3]})  # refused at the door: the body is too large
    assert response.status_code == 413 and is_sentence(response.json()["error"])

    event, (text, gallery, _) = call(served["base"], "search_by_image", [data_url(small, "TGA"), 3])
    assert event == "complete" and "The uploaded image cannot be used: not an image" in text and gallery == []


def test_a_bad_upload_is_described_without_the_servers_paths(served):
    with httpx.Client(base_url=served["base"], timeout=60) as client:
        uploaded = client.post("/gradio_api/upload", files={"files": ("x.png", b"not an image", "image/png")})
    event, (text, gallery, _) = call(served["base"], "search_by_image", [file_data(uploaded.json()[0]), 4])
    assert event == "complete" and text.startswith("⚠️ The uploaded image cannot be used: not an image")
    assert "/tmp" not in text and "gradio" not in text


def test_words_plus_an_upload_name_it_as_the_uploaded_image_never_by_the_servers_path(served):
    item = served["searcher"].store.ok_items.iloc[2]
    with httpx.Client(base_url=served["base"], timeout=60) as client:
        with open(item["path"], "rb") as f:
            good = client.post("/gradio_api/upload", files={"files": ("query.png", f, "image/png")}).json()[0]
        bad = client.post("/gradio_api/upload", files={"files": ("x.png", b"not an image", "image/png")}).json()[0]
    event, (gallery, message, _) = call(served["base"], "search",
                                        ["a red circle", 4, False, False, file_data(good), 0.5])
    assert event == "complete" and len(gallery) == 4 and "0\\.5×the uploaded image" in message
    event, (gallery, message, _) = call(served["base"], "search", ["a red circle", 4, False, False, file_data(bad), -1])
    assert event == "complete" and message.startswith("⚠️ The uploaded image cannot be used: not an image")
    for text in (message, json.dumps(gallery)):
        assert "/tmp" not in text and "gradio" not in text


def test_query_images_are_decoded_a_few_at_a_time(served, monkeypatch):
    import threading
    import time

    import mammut_search.images as images
    from mammut_search.image_access import QUERY_DECODES

    searcher, load_image = served["searcher"], images.load_image
    path = searcher.image_path(int(searcher.store.ok_items["id"].iloc[0]))
    running, most, lock = [0], [0], threading.Lock()

    def slow_load(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return load_image(*args, **kwargs)

    monkeypatch.setattr(images, "load_image", slow_load)
    threads = [threading.Thread(target=searcher.search_image, args=(path, 2)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == QUERY_DECODES


UPLOAD_PEAK = """
import resource, sys
from mammut_search.search import Searcher
searcher = Searcher.open(sys.argv[1], device="cpu")
searcher.search_image(open(sys.argv[3], "rb").read(), 3, with_caption=True)  # warm: the model's own first
data = open(sys.argv[2], "rb").read()                                      # allocations are not the upload's
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
answer = searcher.search_image(data, 3, with_caption=True)
print(len(answer), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.slow
def test_one_upload_of_a_huge_16_bit_png_costs_under_a_gigabyte(served, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_images import huge_16_bit_png

    path = huge_16_bit_png(tmp_path / "huge16.png")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "CUDA_VISIBLE_DEVICES": ""}
    small = served["searcher"].image_path(int(served["searcher"].store.ok_items["id"].iloc[0]))
    done = subprocess.run([sys.executable, "-c", UPLOAD_PEAK, str(served["index"]), str(path), small],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    hits, peak = map(int, done.stdout.split())
    assert hits == 3 and peak < 1 << 30, f"{peak / 2**20:.0f} MiB"


@pytest.mark.slow
def test_wrong_passwords_are_answered_ever_more_slowly(served):
    import time
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    app = ui_app.launch(served["searcher"], port=port, auth=("alice", "s3cret"), block=False, quiet=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def login(password: str) -> int:
            return httpx.post(f"{base}/login", data={"username": "alice", "password": password}, timeout=60).status_code

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:  # guessing in parallel is no faster
            assert list(pool.map(login, ["a", "b", "c", "d"])) == [400] * 4
        waited = time.monotonic() - started
        assert waited >= sum(guard.LOGIN_FIRST_DELAY * 2 ** i for i in range(4)) - 0.05, waited
        assert login("s3cret") == 200
        started = time.monotonic()
        assert login("e") == 400 and time.monotonic() - started < 2 * guard.LOGIN_FIRST_DELAY + 1  # reset
    finally:
        app.close()


def is_sentence(text: object) -> bool:
    """One line that starts with a capital and ends with a full stop, naming no server path or internals."""
    return (isinstance(text, str) and "\n" not in text and text[:1].isupper() and text.endswith(".")
            and not any(s in text for s in ("/tmp", "gradio", "Traceback", "Error:", "null")))


MALFORMED = [  # (method, path, request arguments, status): requests a browser never sends, or sends to a stale page
    ("POST", "/gradio_api/upload", {}, 400),
    ("POST", "/gradio_api/upload", {"content": b"x", "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
     400),
    ("POST", "/gradio_api/queue/join", {"content": b"{bad", "headers": {"Content-Type": "application/json"}}, 422),
    ("POST", "/gradio_api/queue/join", {"json": {"data": 5}}, 422),
    ("POST", "/gradio_api/queue/join", {"json": {"data": [], "fn_index": 0}}, 400),
    ("POST", "/gradio_api/call/search", {"json": {"x": 1}}, 422),
    ("POST", "/gradio_api/call/no_such_endpoint", {"json": {"data": []}}, 404),
    ("POST", "/gradio_api/run/search", {"json": {"data": ["a red circle"]}}, 500),  # too few values
    ("POST", "/gradio_api/cancel", {"json": {}}, 422),
    ("DELETE", "/gradio_api/upload", {}, 405),
    ("GET", "/no/such/page", {}, 404),
    ("GET", "/gradio_api/file=/tmp/gradio/none.png", {}, 403),
]


@pytest.mark.parametrize("method, path, arguments, status", MALFORMED, ids=[f"{m} {p} {s}" for m, p, _, s in MALFORMED])
def test_malformed_requests_are_answered_with_a_sentence(served, method, path, arguments, status):
    response = httpx.request(method, served["base"] + path, timeout=60, **arguments)
    assert response.status_code == status
    if path == "/gradio_api/upload":  # plain text, as Gradio's: its browser client shows it after "HTTP 400:"
        assert is_sentence(response.text), response.text
    else:
        body = response.json()
        assert is_sentence(body["error"]) and body["detail"] == body["error"], body


def test_a_failure_around_a_handler_reaches_the_page_as_a_sentence(served, monkeypatch):
    from ui.errors import BAD_VALUES, SERVER_ERROR

    event, data = call(served["base"], "search", ["a red circle"])  # too few values: Gradio refuses them
    assert event == "error" and data["error"] == BAD_VALUES and data["visible"], data
    monkeypatch.setattr(ui_app, "gallery", lambda searcher, answer: [(object(), "x")])  # Gradio cannot show it
    event, data = call(served["base"], "search", ["a red circle", 3, False])
    assert event == "error" and data["error"] == SERVER_ERROR and data["visible"], data


def test_the_result_of_an_unknown_event_is_a_sentence(served):  # asked after a restart, or read twice
    text = httpx.get(f"{served['base']}/gradio_api/call/search/no-such-event", timeout=60).text
    assert text.startswith("event: error\ndata: ")
    assert is_sentence(json.loads(text.splitlines()[1][len("data: "):])), text


def test_an_uploaded_image_with_a_weight_is_a_query_without_words(served):
    from mammut_search.query import QueryTerm

    searcher = served["searcher"]
    picture = searcher.store.ok_items.sort_values("id")["path"].iloc[0]
    gallery, message, ids = ui_app.search_text(searcher, "  ", 6, False, False, picture, 1.0)
    assert ids == searcher.search_terms([QueryTerm(image=picture)], 6).ids and len(ids) == len(gallery) > 0
    assert ids[0] == int(searcher.store.ok_items.sort_values("id")["id"].iloc[0])  # the image itself first
    assert ui_app.search_text(searcher, "", 6, False, False, picture, 0.0)[1].startswith("Type a few words")
