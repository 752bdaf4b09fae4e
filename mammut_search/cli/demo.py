"""`mammut demo [--port N]`: index the bundled demo collection into the user's cache folder (once) and serve it
in the browser interface, as `mammut ui` would."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from index_builder.demo import demo_index

    from mammut_search.cli import ui

    ui.configure_logging()  # the build's progress lines, then the UI's
    index = demo_index()
    ui_parser = argparse.ArgumentParser(prog="mammut ui")
    ui.add_arguments(ui_parser)  # every other setting keeps `mammut ui`'s default
    return ui.run(ui_parser.parse_args(["--index", str(index), "--port", str(args.port)]))
