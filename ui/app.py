"""The browser interface: a Gradio Blocks app over a `Searcher`. It holds no search logic of its own.

What reaches the browser: thumbnails of indexed images, made here through the safe loader and handed to
Gradio as PIL images (Gradio serves its own copies from its cache). No request names a file of the
collection, so no path taken from a request ever reaches the file system; the index and the collection's
folders are on Gradio's block list as well.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import gradio as gr
from PIL import Image

from mammut_search.errors import ImageLoadError, UserError
from mammut_search.query import QueryTerm, parse_arithmetic
from mammut_search.search import SearchResults, Searcher
from ui.errors import SERVER_ERROR, SentenceErrors, speak_plainly, upload_limit_sentence
from ui.guard import RequestLimits, body_limit, throttled_login

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # only this machine, unless told otherwise
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD = "10mb"
SLIDER_MAX_K = 48
THUMBNAIL_SIDE = 320
THUMBNAIL_CACHE = 512  # thumbnails kept in memory (at most ~300 kB each)
MARKDOWN_SPECIALS = set("\\`*_{}[]()<>#+-.!|~")

CSS = """
#message p { margin: 0.3em 0; }
"""


def upload_box(max_bytes: int | None, **kwargs) -> gr.Image:
    """An image box whose upload reaches the handler undecoded: the path of the file in Gradio's upload folder
    (whose size Gradio's upload route limits), or the bytes of a pasted `data:` URL, held to the same limit.
    Gradio would decode either itself, with every format Pillow knows and no pixel cap; here the only decoding is
    the safe loader's, in the Searcher. A refusal is handed on as a UserError for the handler to show.
    (The instance's preprocess is replaced rather than subclassing gr.Image: Gradio writes a .pyi file beside
    the source of every component subclass.)"""
    box = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload) -> str | bytes | UserError | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            try:
                return data_url_bytes(payload.url, max_bytes)
            except UserError as e:
                return e
        return payload.path

    box.preprocess = preprocess
    return box


def data_url_bytes(url: str, max_bytes: int | None) -> bytes:
    """The bytes of a base64 `data:` URL; UserError for another kind, or more than `max_bytes` (checked on the
    encoded length before decoding anything)."""
    import base64
    import binascii

    header, comma, body = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise UserError("the pasted image is not a base64 data: URL; upload the image file instead")
    if max_bytes is not None and len(body) > (max_bytes + 2) // 3 * 4:
        raise UserError(upload_limit_sentence(max_bytes))
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("the pasted image is damaged (not valid base64); upload the image file instead") from None


def build_app(searcher: Searcher | None, *, index_error: str = "",
              max_upload: str | int | None = DEFAULT_MAX_UPLOAD) -> gr.Blocks:
    """The Blocks app for `searcher`; with no searcher, a page that says why (`index_error`)."""
    with gr.Blocks(title="mammut-search", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("# mammut-search\nFind images by describing them, or by showing a similar one.")
        if searcher is None:
            gr.Markdown(f"**No index is open.** {index_error}", elem_id="message")
            return app
        with gr.Row(equal_height=True):
            query = gr.Textbox(label="Describe the images you want", placeholder="a red apple", scale=5,
                               elem_id="query", autofocus=True, submit_btn=False, lines=1, max_lines=1)
            search = gr.Button("Search", variant="primary", scale=1, elem_id="search-button")
        k, image_weight, rerank, vectors_only = search_options(searcher.rerank_default)
        message = gr.Markdown(elem_id="message")
        results = gr.Gallery(label="Results", columns=6, height="auto", object_fit="contain",
                             allow_preview=True, elem_id="results")
        result_ids = gr.State([])

        gr.Markdown("### Search by image\nUpload an image, or click any result: its caption and the "
                    "nearest images of the collection appear here.")
        with gr.Row():
            upload = upload_box(upload_bytes(max_upload), label="Image", sources=["upload", "clipboard"],
                                height=260, elem_id="upload", scale=1)
            with gr.Column(scale=3):
                detail = gr.Markdown(elem_id="detail")
                similar = gr.Gallery(label="Nearest images", columns=6, height="auto", object_fit="contain",
                                     elem_id="similar")
        similar_ids = gr.State([])

        with gr.Accordion("About this index", open=False, elem_id="about"):
            gr.Markdown(about_markdown(searcher.info(private=True)))

        def on_search(text: str, top_k: float, use_rerank: bool, pictures_only: bool = False, image=None,
                      weight: float = 0.0) -> tuple[list, str, list[int]]:
            return search_text(searcher, text, top_k, use_rerank, pictures_only, image, weight)

        def on_select(ids: list[int], top_k: float, evt: gr.SelectData) -> tuple[str, list, list[int], None]:
            return *show_item(searcher, ids, top_k, evt.index), None  # the detail is now the clicked image's

        def on_upload(path: str | None, top_k: float) -> tuple[str, list, list[int]]:
            return search_image(searcher, path, top_k)

        search_outputs = [results, message, result_ids]
        search_inputs = [query, k, rerank, vectors_only, upload, image_weight]
        query.submit(on_search, search_inputs, search_outputs, api_name="search")
        search.click(on_search, search_inputs, search_outputs, api_name="search_button",
                     api_visibility="undocumented")
        detail_outputs = [detail, similar, similar_ids]
        results.select(on_select, [result_ids, k], [*detail_outputs, upload], api_visibility="private")
        similar.select(on_select, [similar_ids, k], [*detail_outputs, upload], api_visibility="private")
        upload.upload(on_upload, [upload, k], detail_outputs, api_name="search_by_image")
        upload.clear(lambda: ("", [], []), None, detail_outputs, api_visibility="private")
    return app


def search_options(rerank_default: bool) -> tuple[gr.Slider, gr.Slider, gr.Checkbox, gr.Checkbox]:
    """The row under the query: how many results, the uploaded image's weight, re-ranking, pictures only."""
    with gr.Row():
        k = gr.Slider(1, SLIDER_MAX_K, value=min(12, SLIDER_MAX_K), step=1, label="How many results",
                      elem_id="top-k")
        image_weight = gr.Slider(-1, 1, value=0, step=0.1, elem_id="image-weight",
                                 label="Add the image below to the words (or search by it alone), with this weight (negative: away from it)")
        with gr.Column():
            rerank = gr.Checkbox(value=rerank_default, elem_id="rerank",
                                 label="Re-rank with the caption decoder (likelihood of your words given each image)")
            vectors_only = gr.Checkbox(value=False, elem_id="vectors-only",
                                       label="Pictures only (leave file names, folders and captions out)")
    return k, image_weight, rerank, vectors_only


# ----- event handlers: each returns a message instead of raising, so the page never shows a traceback -----

def _never_raises(empty: Callable[[str], tuple]) -> Callable:
    """Turn UserError into its message and any other error into a generic one (logged with its traceback)."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapped(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except UserError as e:
                text = str(e)
                return empty(f"⚠️ {text[:1].upper()}{text[1:]}")
            except Exception:
                log.exception("error in %s", handler.__name__)
                return empty(f"⚠️ {SERVER_ERROR}")

        return wrapped

    return decorate


@_never_raises(lambda text: ([], text, []))
def search_text(searcher: Searcher, query: str, k: float, rerank: bool, vectors_only: bool = False,
                image: str | bytes | UserError | None = None, weight: float = 0.0) -> tuple[list, str, list[int]]:
    """Text query, plus the uploaded image when its weight is not 0 -> (gallery of thumbnails with captions and
    scores, message, ids of the shown images). Terms typed with ` + ` and ` - ` are words only here: a browser
    never names a file of the server. With no words, the uploaded image with its weight is the whole query."""
    words = str(query or "").strip()
    if isinstance(image, UserError) and weight:
        raise image
    if not words and not (image and weight):
        return [], "Type a few words first, for example *a red apple*.", []
    if image and weight:
        terms = [QueryTerm(text=t.text, weight=t.weight) for t in parse_arithmetic(query, files=False) or []]
        terms = terms or ([QueryTerm(text=query)] if words else [])
        upload = QueryTerm(image=image, weight=weight, name="the uploaded image")  # not the server's copy's path
        with uploaded_image():
            answer = searcher.search_terms(terms + [upload], k, vectors_only=bool(vectors_only))
    else:
        answer = searcher.search_text(query, k, rerank=bool(rerank), vectors_only=bool(vectors_only), files=False)
    return gallery(searcher, answer), summary(answer), answer.ids


@_never_raises(lambda text: (text, [], []))
def show_item(searcher: Searcher, ids: list[int], k: float, index: Any) -> tuple[str, list, list[int]]:
    """A click on the shown image number `index` -> (its caption and file, its nearest images, their ids)."""
    if not isinstance(index, int) or not 0 <= index < len(ids):
        raise UserError("that image is no longer on the page; search again")
    item = searcher.item(ids[index])
    answer, twins = searcher.similar(item["id"], k), searcher.duplicates(item["id"])
    names = ", ".join(markdown_text(_file_name(hit.path)) for hit in twins.hits[:10])
    more = f" and {len(twins) - 10} more" if len(twins) > 10 else ""
    text = (f"**Caption:** {markdown_text(item['caption']) or '(none)'}  \n"
            f"**File:** {markdown_text(_file_name(item['path']))} "
            f"({item['width']}×{item['height']})  \n"
            f"**Near-duplicates:** {names + more if len(twins) else 'none'}  \n{len(answer)} nearest images:")
    return text, gallery(searcher, answer), answer.ids


@_never_raises(lambda text: (text, [], []))
def search_image(searcher: Searcher, upload: str | bytes | UserError | None, k: float) -> tuple[str, list, list[int]]:
    """An uploaded image (a file in Gradio's upload folder, or the bytes of a pasted image) -> (its caption,
    nearest images, their ids). Errors speak of "the uploaded image", never of the server's copy of it."""
    if isinstance(upload, UserError):
        raise upload
    if not upload:
        return "", [], []
    with uploaded_image():
        answer = searcher.search_image(upload, k, with_caption=True)
    text = f"**Caption:** {markdown_text(answer.query_caption)}  \n{len(answer)} nearest images:"
    return text, gallery(searcher, answer), answer.ids


@contextlib.contextmanager
def uploaded_image() -> Iterator[None]:
    """Errors of loading an uploaded image speak of "the uploaded image", never of the server's copy of it."""
    try:
        yield
    except ImageLoadError as e:
        reason = getattr(e, "reason", None) or "it cannot be read as an image"
        raise UserError(f"the uploaded image cannot be used: {reason}") from None


def gallery(searcher: Searcher, answer: SearchResults) -> list[tuple[Image.Image, str]]:
    """(thumbnail, "caption · score") per hit, thumbnails made through the safe loader."""

    def one(hit) -> tuple[Image.Image, str]:
        try:
            picture, note = thumbnail(searcher, hit.id), ""
        except UserError as e:  # the file changed or went away since it was indexed
            log.warning("cannot show %s", e)
            picture = Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (200, 200, 200))
            note = " (not shown: the file changed or went away since it was indexed)"
        why = f" · {', '.join(hit.name_words + hit.caption_words)}" if hit.name_words or hit.caption_words else ""
        return picture, f"{hit.caption or '(no caption)'} · {hit.score:.3f}{why}{note}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, answer.hits))


@functools.lru_cache(maxsize=THUMBNAIL_CACHE)
def thumbnail(searcher: Searcher, item_id: int) -> Image.Image:
    """An indexed image shrunk to THUMBNAIL_SIDE, kept for the next searches (decoding a photo costs more
    than the search itself)."""
    return searcher.load_item_image(item_id, max_side=THUMBNAIL_SIDE)


def summary(answer: SearchResults) -> str:
    """The one-paragraph message above the gallery."""
    lines = []
    if not len(answer):
        lines.append("No results.")
    else:
        how = "re-ranked by likelihood" if answer.reranked else "by similarity"
        how += " and by the words of names, folders and captions" if answer.hybrid else ""
        lines.append(f"{len(answer)} images for *{markdown_text(answer.query)}*, {how}.")
    for notice in answer.notices:
        lines.append(f"⚠️ {markdown_text(notice[0].upper() + notice[1:])}.")
    return "  \n".join(lines)


def about_markdown(info: dict[str, Any]) -> str:
    """The "about this index" panel: the index summary (Searcher.info) as a two-column table."""
    rows = [(name.capitalize(), markdown_text(value)) for name, value in info["summary"]]
    return "\n".join(["| Item | Value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def markdown_text(text: str) -> str:
    """Text shown literally inside Markdown (a query, a caption, a file name): markup characters escaped."""
    return "".join("\\" + c if c in MARKDOWN_SPECIALS else c for c in text)


def _file_name(path: str) -> str:
    from mammut_search.index.store import readable

    return readable(os.path.basename(os.path.normpath(path)) or path)


# ----- serving -----

def upload_bytes(size: str | int | None) -> int | None:
    """"10mb", "200kb" or a number of bytes -> bytes (Gradio's reading of max_file_size)."""
    from gradio.utils import _parse_file_size

    return _parse_file_size(size)


def launch(searcher: Searcher | None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           auth: tuple[str, str] | None = None, max_file_size: str | int = DEFAULT_MAX_UPLOAD,
           index_error: str = "", block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Serve the app; `block=False` returns at once (for tests; call `.close()` on the result). Every failure
    reaches the page as a sentence (ui.errors); show_error stays off, so no exception's own text ever does."""
    from starlette.middleware import Middleware

    app = build_app(searcher, index_error=index_error, max_upload=max_file_size)
    app.queue(default_concurrency_limit=4)
    max_upload = upload_bytes(max_file_size)
    speak_plainly(app, max_upload=max_upload)
    blocked = blocked_paths(searcher) if searcher is not None else []
    try:
        app.launch(server_name=host, server_port=port, auth=throttled_login(*auth) if auth else None,
                   max_file_size=max_file_size, blocked_paths=blocked, allowed_paths=[], ssr_mode=False,
                   show_error=False, quiet=True, prevent_thread_lock=True, footer_links=[], inbrowser=False,
                   share=False, css=CSS,
                   app_kwargs={"middleware": [Middleware(SentenceErrors, max_upload=max_upload),
                                              Middleware(RequestLimits, max_body=body_limit(max_upload))]})
    except OSError as e:  # Gradio's words for a port in use or an address not of this machine
        raise UserError(f"cannot serve on {host}:{port} ({str(e).split('.')[0]}); choose another --port "
                        "or --host") from None
    if not quiet:
        print(f"mammut-search is serving {app.local_url} (open it in a browser; Ctrl+C stops)", flush=True)
    if block:
        app.block_thread()
    return app


def blocked_paths(searcher: Searcher) -> list[str]:
    """Defence in depth: Gradio itself must never hand out the index or the collection's originals. A folder
    holding Gradio's own cache (say an indexed /tmp) cannot be blocked without blocking the thumbnails."""
    from gradio.route_utils import DEFAULT_TEMP_DIR

    cache = os.path.realpath(DEFAULT_TEMP_DIR)
    candidates = [str(searcher.store.directory.resolve()), *(os.path.realpath(r) for r in searcher.info()["roots"])]
    return [p for p in candidates if os.path.commonpath([cache, p]) != p]
