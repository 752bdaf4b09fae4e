"""`mammut caption IMAGE...`: generate a caption for each image with a checkpoint; no index needed."""

from __future__ import annotations

import argparse
import json
import sys

from mammut_search.cli.options import DEVICE_HELP, device_option

# Decoding bounds: the cost grows with beam width x length. One image with the bundled model on a 2-core CPU:
# beam 64 held 441 MB (as beam 1 does), beam 256 540 MB; beam 100,000 exhausted 24 GB. Captions are trained
# up to 32 tokens; 128 leaves room for any checkpoint without letting a typo run for minutes.
MAX_BEAM_WIDTH = 64
MAX_CAPTION_LEN = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files to caption")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--device", type=device_option, help=DEVICE_HELP)
    add_decoding_arguments(parser, "as indexes and the UI use")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")


def add_decoding_arguments(parser: argparse.ArgumentParser, default_note: str) -> None:
    """--beam-width and --max-len, bounded (MAX_BEAM_WIDTH, MAX_CAPTION_LEN) before anything is loaded."""
    from mammut_search.model.config import CAPTION_BEAM_WIDTH, CAPTION_MAX_LEN

    parser.add_argument("--beam-width", type=bounded_int(1, MAX_BEAM_WIDTH), default=CAPTION_BEAM_WIDTH,
                        metavar="N", help=f"beam search width, 1 to {MAX_BEAM_WIDTH}; 1 is greedy "
                                          f"(default %(default)s, {default_note})")
    parser.add_argument("--max-len", type=bounded_int(2, MAX_CAPTION_LEN), default=CAPTION_MAX_LEN, metavar="N",
                        help=f"longest caption in tokens, the start token included, 2 to {MAX_CAPTION_LEN} "
                             "(default %(default)s)")


def bounded_int(low: int, high: int):
    """An argparse type: a whole number from `low` to `high`, or a sentence saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a whole number from {low} to {high}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    from mammut_search.files import printable
    from mammut_search.inference import load_model
    from mammut_search.errors import ImageLoadError

    model = load_model(args.checkpoint, device=args.device)
    failures = 0
    for path in args.images:
        try:
            pixels = model.preprocess_files([path])
        except ImageLoadError as e:
            print(f"error: {printable(str(e))}", file=sys.stderr)
            failures += 1
            continue
        caption = model.caption(pixels, beam_width=args.beam_width, max_len=args.max_len)[0]
        # a file name, or a caption of byte-level tokens, may hold terminal escapes: shown escaped
        print(json.dumps({"path": path, "caption": caption}) if args.json
              else f"{printable(path)}\t{printable(caption)}")
    return 1 if failures else 0
