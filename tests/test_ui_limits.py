"""What one client can make the UI hold or wait for: request bodies and text inputs are capped (and an oversized
input leaves no copy in the session's state), an unknown event number is a sentence, and wrong passwords from one
address never keep another address's login waiting."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from search_testkit import free_port
from test_ui_http import call, is_sentence, served  # noqa: F401 (the served fixture)
from ui import app as ui_app
from ui import guard


def test_request_bodies_over_the_limit_are_refused_before_they_are_read(served):  # noqa: F811
    limit = guard.body_limit(ui_app.upload_bytes("200kb"))
    big = {"data": ["a red circle " * (limit // 10), 3, False]}
    response = httpx.post(f"{served['base']}/gradio_api/call/search", json=big, timeout=60)
    assert response.status_code == 413 and is_sentence(response.json()["error"])
    assert f"{limit:,} bytes at most" in response.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = httpx.post(f"{served['base']}/gradio_api/queue/join", content=chunks(), timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and is_sentence(response.json()["error"])
    event, (gallery, _, _) = call(served["base"], "search", ["a red circle", 3, False])  # the server goes on
    assert event == "complete" and len(gallery) == 3


def test_an_oversized_text_input_is_a_sentence_and_no_session_keeps_it(served):  # noqa: F811
    long_query = "a red circle " * (guard.MAX_TEXT_CHARS // 12)  # 13 characters each: just over the limit
    session = "oversized-text-session"
    with httpx.Client(base_url=served["base"], timeout=60) as client:
        joined = client.post("/gradio_api/queue/join", json={"data": [long_query, 3, False], "fn_index": 0,
                                                             "session_hash": session})
        assert joined.status_code == 200
        stream = client.get("/gradio_api/queue/data", params={"session_hash": session}).text
    assert f"longer than {guard.MAX_TEXT_CHARS:,} characters" in stream and "Traceback" not in stream
    state = served["app"].state_holder[session]
    assert long_query not in str(state.config_values)
    event, data = call(served["base"], "search", [long_query, 3, False])
    assert event == "error" and is_sentence(data["error"]) and f"{guard.MAX_TEXT_CHARS:,}" in data["error"]


def test_an_oversized_pasted_image_is_a_sentence_and_no_session_keeps_it(served):  # noqa: F811
    import base64

    limit = ui_app.upload_bytes("200kb")
    payload = {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"x" * (limit + 1000)).decode(),
               "meta": {"_type": "gradio.FileData"}}
    number = next(i for i, fn in served["app"].fns.items() if fn.api_name == "search_by_image")
    session = "oversized-image-session"
    with httpx.Client(base_url=served["base"], timeout=60) as client:
        joined = client.post("/gradio_api/queue/join", json={"data": [payload, 3], "fn_index": number,
                                                             "session_hash": session})
        assert joined.status_code == 200
        stream = client.get("/gradio_api/queue/data", params={"session_hash": session}).text
    assert "larger than this server's upload limit" in stream
    assert payload["url"][-1000:] not in str(served["app"].state_holder[session].config_values)


@pytest.mark.parametrize("route", ["/gradio_api/queue/join", "/gradio_api/run/predict"])
def test_an_unknown_event_number_is_a_sentence(served, route):  # noqa: F811
    response = httpx.post(served["base"] + route, timeout=60,
                          json={"data": ["a red circle", 3, False], "fn_index": 999, "session_hash": "s"})
    assert response.status_code == 404 and is_sentence(response.json()["error"]), response.text
    assert "no API endpoint" in response.json()["error"]


def test_wrong_passwords_from_one_address_never_hold_up_another(served):  # noqa: F811
    port = free_port()
    app = ui_app.launch(served["searcher"], port=port, auth=("alice", "s3cret"), block=False, quiet=True)
    base = f"http://127.0.0.1:{port}"

    def login(password: str, source: str = "127.0.0.1") -> tuple[int, float]:
        started = time.monotonic()
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=60) as client:
            status = client.post(f"{base}/login", data={"username": "alice", "password": password}).status_code
        return status, time.monotonic() - started

    try:
        with ThreadPoolExecutor(6) as pool:
            attack = [pool.submit(login, guess) for guess in ("a", "b", "c", "d")]  # 0.25 + 0.5 + 1 + 2 s in turn
            time.sleep(0.3)
            assert login("s3cret", "127.0.0.2")[1] < 1.0  # the right password from elsewhere: answered at once
            status, waited = login("wrong", "127.0.0.3")  # another address starts at the first delay
            assert status == 400 and waited < guard.LOGIN_FIRST_DELAY + 1.0
            assert [f.result()[0] for f in attack] == [400] * 4
            assert max(f.result()[1] for f in attack) >= sum(guard.LOGIN_FIRST_DELAY * 2 ** i for i in range(4)) - 0.1
    finally:
        app.close()
