"""`mammut search "QUERY" --index DIR` or `mammut search --image FILE --index DIR`: ranked images and captions.

A text query searches the images' latents and their file names, folders and captions (`--vectors-only`: the
latents alone); terms joined by ` + ` and ` - ` combine texts and image files: `"horse + stripes"`."""

from __future__ import annotations

import argparse
import json
import sys

from mammut_search.cli.options import DEVICE_HELP, device_option
from mammut_search.files import printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mammut_search.search import DEFAULT_K, RERANK_BY_DEFAULT

    parser.add_argument("query", nargs="?",
                        help="what to look for, in words (quote it); terms joined by ' + ' and ' - ' combine texts "
                             "and image files, e.g. 'beach.jpg - people + sunset'")
    parser.add_argument("--image", metavar="FILE", help="look for images like this one instead of a text query")
    parser.add_argument("--index", required=True, help="index directory (made by mammut index build)")
    parser.add_argument("-k", "--top-k", dest="k", type=int, default=DEFAULT_K,
                        help="how many images to show (default %(default)s)")
    parser.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                        help="re-rank the top candidates by the likelihood of the query given each image "
                             f"(text queries; default: {'on' if RERANK_BY_DEFAULT else 'off'})")
    parser.add_argument("--vectors-only", action="store_true",
                        help="search the images' latents only, not their file names, folders and captions")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the one the index was built with, "
                                             "else the bundled model)")
    parser.add_argument("--device", type=device_option, help=DEVICE_HELP)
    parser.add_argument("--json", action="store_true", help="print the whole answer as one JSON object")


def run(args: argparse.Namespace) -> int:
    from mammut_search.errors import UserError
    from mammut_search.search import Searcher

    if (args.query is None) == (args.image is None):
        raise UserError('give either a text query ("a red apple") or --image FILE, not both or neither')
    if args.image is not None and args.rerank:
        raise UserError("--rerank applies to text queries only")
    with Searcher.open(args.index, checkpoint=args.checkpoint, device=args.device) as searcher:
        if args.image is not None:
            results = searcher.search_image(args.image, args.k, with_caption=True)
        else:
            results = searcher.search_text(args.query, args.k, rerank=args.rerank, vectors_only=args.vectors_only)
    if args.json:
        print(json.dumps(results.to_dict(), ensure_ascii=False))
    else:
        print_table(results)
    return 0 if len(results) else 1


def print_table(results) -> None:
    """Notices on stderr; on stdout one line per hit: rank, score, path, caption and why it matched
    (tab-separated, each field on one line: control characters in file names and captions are shown escaped)."""
    if results.query_caption is not None:
        print(f"query image caption: {printable(results.query_caption)}", file=sys.stderr)
    for notice in results.notices:
        print(f"note: {printable(notice)}", file=sys.stderr)
    if not len(results):
        print("no results", file=sys.stderr)
    for hit in results:
        print(f"{hit.rank}\t{hit.score:.4f}\t{printable(hit.path)}\t{printable(hit.caption)}\t{printable(hit.why())}")
