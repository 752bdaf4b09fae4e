"""`mammut caption IMAGE...`: generate a caption for each image with a checkpoint; no index needed."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files to caption")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    from mammut_search.model.config import CAPTION_BEAM_WIDTH, CAPTION_MAX_LEN

    parser.add_argument("--beam-width", type=int, default=CAPTION_BEAM_WIDTH,
                        help="beam search width; 1 is greedy (default %(default)s, as indexes and the UI use)")
    parser.add_argument("--max-len", type=int, default=CAPTION_MAX_LEN,
                        help="longest caption in tokens (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")


def run(args: argparse.Namespace) -> int:
    from mammut_search.inference import load_model
    from mammut_search.errors import ImageLoadError

    model = load_model(args.checkpoint, device=args.device)
    failures = 0
    for path in args.images:
        try:
            pixels = model.preprocess_files([path])
        except ImageLoadError as e:
            print(f"error: {e}", file=sys.stderr)
            failures += 1
            continue
        caption = model.caption(pixels, beam_width=args.beam_width, max_len=args.max_len)[0]
        print(json.dumps({"path": path, "caption": caption}) if args.json else f"{path}\t{caption}")
    return 1 if failures else 0
