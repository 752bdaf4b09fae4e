"""The `mammut` command line: one subcommand per job. It only parses arguments and calls the Python APIs.

Each subcommand lives in its own module (imported only when used) with `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mammut_search import __version__

SUBCOMMANDS = {
    "index": ("build, update or inspect an image index (index build | update | info | duplicates)", "index"),
    "search": ("search an index with a text query or an image", "search"),
    "caption": ("write a caption for each image (no index needed)", "caption"),
    "eval": ("recall@k both ways and caption quality on a captioned collection", "eval"),
    "convert": ("turn another format's weights (open_clip MaMMUT: LAION's openMaMMUT) into a checkpoint", "convert"),
    "train": ("train a MaMMUT checkpoint", "train"),
    "corpus": ("fetch and render the offline training corpus and the demo collection", "corpus"),
    "ui": ("start the browser interface for an index", "ui"),
    "demo": ("index the bundled demo collection (once, into the user's cache) and serve the browser UI", "demo"),
}


def build_parser(load_modules: set[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the modules of `load_modules` subcommands are imported (all when None)."""
    parser = argparse.ArgumentParser(
        prog="mammut",
        description="Search image collections with MaMMUT: one model that retrieves images and captions them.",
    )
    parser.add_argument("--version", action="version", version=f"mammut-search {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, module_name) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if load_modules is None or name in load_modules:
            module = _module(module_name)
            if module is None:
                sub_parser.set_defaults(_unavailable=name)
            else:
                module.add_arguments(sub_parser)
                sub_parser.set_defaults(_run=module.run)
    return parser


def _module(name: str):
    try:
        return importlib.import_module(f"mammut_search.cli.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"mammut_search.cli.{name}":
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mammut` console script."""
    code = _run(sys.argv[1:] if argv is None else argv)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_rank(code)
    return code


def _leave_rank(code: int) -> None:
    """A torchrun rank whose command has finished exits without interpreter finalization: there, gloo's threads
    can still abort the process ("terminate called without an active exception") after the process group was
    destroyed, and torchrun would report a finished rank as failed."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(argv: list[str]) -> int:
    from mammut_search.errors import UserError

    wanted = {a for a in argv if a in SUBCOMMANDS}
    parser = build_parser(wanted)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_unavailable", None):
        print(f"error: '{args.command}' is not available in this version", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C: one line, no traceback; a subcommand may say what became of its work
        print(getattr(args, "_interrupted", "interrupted"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
