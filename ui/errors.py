"""Failures raised by Gradio itself, not by our handlers, told to the user as one sentence.

Two places turn them into sentences:
- `speak_plainly(blocks)`: an exception while Gradio reads an event's values or shows its results would reach
  the page as `{"error": null}`, which the browser shows as a bare "Error" badge with no message. It becomes a
  `gr.Error` with a sentence, which the page shows in a toast (the details go to the server's log).
- `SentenceErrors`, an ASGI middleware: every other error answer of the server (a malformed request, a
  refused file, an unknown endpoint, an oversized upload, an exception in a route) is answered with
  `{"error": sentence, "detail": sentence}`, never with Gradio's or FastAPI's internals (a server path, a
  validation dump, "Internal Server Error"). The upload route answers in plain text, as Gradio's does: its
  browser client shows that text verbatim after "HTTP <status>:".
"""

from __future__ import annotations

import json
import logging
from typing import Any

import gradio as gr
from gradio import route_utils
from gradio.route_utils import FnIndexInferError
from starlette.exceptions import HTTPException

from ui.guard import check_inputs

log = logging.getLogger(__name__)

SERVER_ERROR = "Something went wrong on the server (the details are in its log); try again, or reload the page."
BAD_VALUES = ("The request carried values this page cannot use (a number out of range, or a file that was not "
              "uploaded here); reload the page and try again.")
STATUS_SENTENCES = {
    400: "The request could not be read; reload the page and try again.",
    401: "This page needs a user name and password; log in first.",
    403: "That is not served here: only the images shown in search results can be opened.",
    404: "There is nothing at this address; open the search page at / instead.",
    405: "This address does not take that kind of request; open the search page at / instead.",
    429: "Too many requests at once; wait a moment and try again.",
    503: "The server is busy or shutting down; try again in a moment.",
}
LOGIN_REFUSED = "Wrong user name or password; try again."
NO_SUCH_ENDPOINT = "This server has no API endpoint of that name or number; reload the page and try again."
# The result stream of an event this server does not know (finished and read already, or asked of a server that
# has restarted since) ends in Gradio's `event: error` with the text of an HTTPException; said in words here.
UNKNOWN_EVENT = (b'data: "404: Not Found"', b"data: " + json.dumps(
    "This server does not know that event (it was answered already, or the server has restarted since); "
    "send the request again.").encode())


def upload_limit_sentence(max_bytes: int | None) -> str:
    """What a user sees for an image over the upload limit."""
    limit = f" of {max_bytes:,} bytes" if max_bytes is not None else ""
    return f"The image is larger than this server's upload limit{limit}; choose a smaller image."


def speak_plainly(blocks: gr.Blocks, max_upload: int | None = None) -> None:
    """Make any exception Gradio raises while it reads an event's values or shows its results a gr.Error with a
    sentence (the page shows those; any other exception reaches it as a bare "Error"). Our handlers never
    raise; this is for what happens around them. (Instance attributes, as for the upload box: no subclass.)
    Values too large to keep (ui.guard.check_inputs; `max_upload` bytes for a pasted image) are refused first."""
    preprocess, process = blocks.preprocess_data, blocks.process_api

    async def preprocess_data(block_fn, inputs, *args, **kwargs):
        check_inputs(block_fn.inputs, inputs, max_upload)  # before Gradio keeps a copy in the session's state
        try:
            return await preprocess(block_fn, inputs, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # the values came from the request: the sender can fix them, not the server
            log.warning("refused the values of a request to %s: %s", block_fn.name, str(e).splitlines()[0])
            raise gr.Error(BAD_VALUES, print_exception=False) from None

    async def process_api(*args, **kwargs):
        try:
            return await process(*args, **kwargs)
        except gr.Error:
            raise
        except Exception:
            log.exception("error while answering a request")
            raise gr.Error(SERVER_ERROR, print_exception=False) from None

    blocks.preprocess_data = preprocess_data
    blocks.process_api = process_api


class SentenceErrors:
    """ASGI middleware: every error answer (status >= 400, or an exception before the answer began) is
    replaced by a sentence; successful answers and streams pass untouched. A JSON answer that already
    carries a sentence as "error" (a gr.Error's) keeps it; a dictionary "detail" (Gradio's login check reads
    its auth_message) is kept beside the sentence."""

    def __init__(self, app, max_upload: int | None = None) -> None:
        self.app, self.max_upload = app, max_upload

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") == "HEAD":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}  # the start of an error answer, and its body so far
        passing, stream = [False], [False]

        async def capture(message) -> None:
            if passing[0]:
                if stream[0] and message["type"] == "http.response.body":
                    message = {**message, "body": message.get("body", b"").replace(*UNKNOWN_EVENT)}
                await send(message)
            elif message["type"] == "http.response.start" and message["status"] < 400:
                passing[0] = True
                stream[0] = _content_type(message["headers"]).startswith("text/event-stream")
                await send(message)
            elif message["type"] == "http.response.start":
                held.update(start=message, body=b"")
            elif message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    status, original = held["start"]["status"], _json_object(held["body"])
                    await self._answer(send, scope, status, held["start"]["headers"],
                                       self._sentence(scope, status, original), original)
            else:
                await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as e:
            if stream[0] and isinstance(e.__cause__ or e, HTTPException):  # how Gradio ends an event stream
                log.debug("event stream ended: %s", e.__cause__ or e)  # after its error event: end it in order
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if passing[0] or "start" in held:
                raise  # the answer has begun: nothing left to replace
            if isinstance(e, FnIndexInferError) or _unknown_fn_index(e):  # an API name or number this app lacks
                await self._answer(send, scope, 404, [], NO_SUCH_ENDPOINT)
                return
            log.exception("error while answering %s %s", scope.get("method"), scope.get("path"))
            await self._answer(send, scope, 500, [], SERVER_ERROR)

    def _sentence(self, scope, status: int, original: dict) -> str:
        """The sentence for an error answer of `status` whose original body was the JSON object `original`
        ({} for any other body)."""
        path = scope.get("path", "").rstrip("/")
        if isinstance(original.get("error"), str) and original["error"]:
            return original["error"]  # a gr.Error: already a sentence
        if status == 413:
            return upload_limit_sentence(self.max_upload)
        if path.endswith("/login") and status == 400:
            return LOGIN_REFUSED
        if path.endswith("/upload") and status == 400:
            return "The upload could not be read; upload the image file again."
        if status == 422:
            return _validation_sentence(original.get("detail"))
        reason = _plain_reason(original.get("detail"))  # e.g. "Session hash not found."
        if status == 400 and reason:
            return f"The request could not be read ({reason}); reload the page and try again."
        if status >= 500 and status != 503:
            return SERVER_ERROR
        return STATUS_SENTENCES.get(status, f"The request was refused (HTTP {status}); reload the page and try "
                                            "again.")

    async def _answer(self, send, scope, status: int, headers: list, sentence: str,
                      original: dict | None = None) -> None:
        """Send `sentence` as the whole answer: plain text on the upload route, JSON elsewhere (with the other
        fields of the `original` JSON answer, and its "detail" if that is a dictionary)."""
        kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type",
                                                               b"content-encoding")]
        if scope.get("path", "").rstrip("/").endswith("/upload"):
            body, kind = sentence.encode(), b"text/plain; charset=utf-8"
        else:
            original = original or {}
            detail = original["detail"] if isinstance(original.get("detail"), dict) else sentence
            body = json.dumps({**original, "error": sentence, "detail": detail}).encode()
            kind = b"application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [*kept, (b"content-type", kind), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _unknown_fn_index(error: BaseException) -> bool:
    """Whether `error` is Gradio's lookup of an event number (fn_index) that this app does not have."""
    if not isinstance(error, (KeyError, IndexError)):
        return False
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code)
        tb = tb.tb_next
    return bool(frames) and frames[-1] is route_utils.get_fn.__code__


def _content_type(headers: list[tuple[bytes, bytes]]) -> str:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _plain_reason(detail: Any) -> str:
    """Gradio's own short reason, lower-cased and without its full stop, if it names no path ("" otherwise)."""
    if not isinstance(detail, str) or len(detail) > 100 or any(c in detail for c in "/\\\n"):
        return ""
    text = detail.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _validation_sentence(detail: Any) -> str:
    """FastAPI's list of validation errors -> one sentence naming the first faulty field (no values)."""
    where = ""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        field = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        reason = str(first.get("msg", "")).rstrip(".").lower()
        if field and reason:
            where = f" ({field}: {reason})"
        elif reason:
            where = f" ({reason})"
    return f"The request is not in the form this server expects{where}; reload the page and try again."
