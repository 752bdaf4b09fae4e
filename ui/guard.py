"""Limits on what one client can make the server hold or wait for: the size of any request body, the length of a
text input (Gradio keeps every input in the session's state until the session ends), and the pace of password
guesses from one address.

- `RequestLimits`, an ASGI middleware: a body over `max_body` bytes (declared, or counted as it arrives) is
  refused with 413 before any route reads it; it also notes each request's client address for the login check.
- `check_inputs`: a text input over MAX_TEXT_CHARS, or a pasted image over the upload limit, becomes a sentence
  before Gradio stores it.
- `throttled_login`: wrong passwords are answered ever more slowly, per client address; one address's guesses
  never hold up another's login.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gradio as gr

# A query is a few words (the text encoder reads 32 tokens); 10,000 characters leaves room for pasted prose. Sixty
# 10 MB queries held 700 MB of session state before this limit.
MAX_TEXT_CHARS = 10_000
BODY_SLACK = 64 * 1024  # the JSON around a pasted image's base64 text
DEFAULT_MAX_BODY = 1 << 20  # when uploads are not limited: text requests only need a few kB
LOGIN_FIRST_DELAY, LOGIN_MAX_DELAY = 0.25, 8.0  # seconds a wrong password waits: doubling from the first
LOGIN_CLIENTS = 10_000  # addresses remembered; the oldest idle ones are forgotten first

CLIENT_ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="")


def body_limit(max_upload: int | None) -> int:
    """The largest request body: an upload of `max_upload` bytes as base64 text (a pasted image) plus its JSON."""
    if max_upload is None:
        return DEFAULT_MAX_BODY
    return (max_upload + 2) // 3 * 4 + BODY_SLACK


def body_limit_sentence(max_body: int) -> str:
    return (f"The request is larger than this server takes ({max_body:,} bytes at most); describe the images in "
            "fewer words, or choose a smaller image.")


class RequestLimits:
    """ASGI middleware: refuse request bodies over `max_body` bytes with 413 (by Content-Length, or by counting a
    body sent without one, which is then held here, at most `max_body` bytes, and handed on); note the client's
    address in CLIENT_ADDRESS for the login check."""

    def __init__(self, app, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        token = CLIENT_ADDRESS.set(str(client[0]) if client else "")
        try:
            declared = _content_length(scope["headers"])
            if declared is not None and declared > self.max_body:
                await self._refuse(scope, send)
                return
            if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                receive = await self._held(receive)
                if receive is None:
                    await self._refuse(scope, send)
                    return
            await self.app(scope, receive, send)
        finally:
            CLIENT_ADDRESS.reset(token)

    async def _held(self, receive) -> Callable | None:
        """Read a body of unknown length up to the limit -> a `receive` that hands it on; None when it is over."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            chunks.append(message)
            if not message.get("more_body"):
                break
        waiting = list(chunks)

        async def replay():
            return waiting.pop(0) if waiting else await receive()

        return replay

    async def _refuse(self, scope, send) -> None:
        """413; on the upload route the sentence about the upload limit is SentenceErrors' to give."""
        upload = scope.get("path", "").rstrip("/").endswith("/upload")
        body = json.dumps({} if upload else {"error": body_limit_sentence(self.max_body)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for key, value in headers:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def check_inputs(inputs: Sequence[Any], values: Sequence[Any], max_upload: int | None) -> None:
    """gr.Error with a sentence for a text box's value longer than MAX_TEXT_CHARS, or a pasted image (a data:
    URL) over the upload limit; called before Gradio copies the values into the session's state."""
    for block, value in zip(inputs, values):
        if isinstance(block, gr.Textbox) and isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise gr.Error(f"The text is longer than {MAX_TEXT_CHARS:,} characters ({len(value):,}); describe the "
                           "images in fewer words.", print_exception=False)
        url = value.get("url") if isinstance(value, dict) else None
        if max_upload is not None and isinstance(url, str) and url.startswith("data:") and len(url) > (
                max_upload + 2) // 3 * 4 + 100:  # base64 of max_upload bytes, and its "data:image/...;base64,"
            from ui.errors import upload_limit_sentence

            raise gr.Error(upload_limit_sentence(max_upload), print_exception=False)


@dataclass
class _Client:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0


def throttled_login(user: str, password: str) -> Callable:
    """Gradio's login check for one user name and password, slowed down after wrong ones, per client address:
    each wrong try waits LOGIN_FIRST_DELAY seconds, doubling up to LOGIN_MAX_DELAY, and one address's tries are
    answered one at a time (so guessing in parallel is no faster than guessing in turn). Another
    address is never kept waiting by them. A right login resets its address's delay. (Behind a reverse proxy
    every client has the proxy's address.)"""
    clients: OrderedDict[str, _Client] = OrderedDict()

    def client_of(address: str) -> _Client:
        if address not in clients:
            while len(clients) >= LOGIN_CLIENTS and _forget_idle(clients):
                pass
            clients[address] = _Client()
        clients.move_to_end(address)
        return clients[address]

    async def check(username: str, given: str) -> bool:  # a coroutine function: Gradio awaits it
        client = client_of(CLIENT_ADDRESS.get())
        async with client.lock:
            right = hmac.compare_digest(username.encode(), user.encode()) & hmac.compare_digest(
                given.encode(), password.encode())
            if right:
                client.failures = 0
                return True
            client.failures += 1
            await asyncio.sleep(min(LOGIN_MAX_DELAY, LOGIN_FIRST_DELAY * 2 ** (client.failures - 1)))
            return False

    return check


def _forget_idle(clients: OrderedDict[str, _Client]) -> bool:
    """Drop the least recently seen address that is not being answered; False when every one is."""
    for address, client in clients.items():
        if not client.lock.locked():
            del clients[address]
            return True
    return False
