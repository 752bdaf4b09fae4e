"""`mammut ui --index DIR`: serve the browser interface (on 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import sys

from mammut_search.cli.options import DEVICE_HELP, device_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory (made by mammut index build)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default %(default)s: this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    parser.add_argument("--auth", metavar="USER:PASSWORD",
                        help="ask for this user name and password (or set MAMMUT_UI_AUTH)")
    parser.add_argument("--max-upload", default="10mb", help="largest image upload (default %(default)s)")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the one the index was built with, "
                                             "else the bundled model)")
    parser.add_argument("--device", type=device_option, help=DEVICE_HELP)


def run(args: argparse.Namespace) -> int:
    import os

    from mammut_search.search import Searcher

    configure_logging()
    auth = parse_auth(args.auth or os.environ.get("MAMMUT_UI_AUTH"))
    if auth is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without --auth: anyone who can reach this machine can search "
              "and see the indexed images", file=sys.stderr)
    searcher = Searcher.open(args.index, checkpoint=args.checkpoint, device=args.device)
    info = searcher.info()
    print(f"{info['index']}: {info['images']} images, model {info['checkpoint_sha256'][:12]}, "
          f"device {info['device']}", file=sys.stderr)

    from ui.app import launch

    launch(searcher, host=args.host, port=args.port, auth=auth, max_file_size=args.max_upload)
    return 0


def configure_logging() -> None:
    """Our progress and request messages on stderr; other libraries' only from warnings up."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks
    # faiss reports at INFO that it tried an AVX512 build before its AVX2 one: "Could not load library with
    # AVX512 support" reads like an error in a server log, and is not one
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """"user:password" -> (user, password); None stays None."""
    from mammut_search.errors import UserError

    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must look like USER:PASSWORD, with neither part empty")
    return user, password
