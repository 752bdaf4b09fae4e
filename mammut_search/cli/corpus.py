"""`mammut corpus build | demo`: fetch and render the offline training corpus; make the demo collection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `build` and `demo` sub-subcommands."""
    from mammut_search.train.corpus.sources import SOURCES

    sub = parser.add_subparsers(dest="corpus_command", metavar="{build,demo}", required=True)
    build = sub.add_parser("build", help="fetch, render and index the corpus under CACHE_DIR/corpus")
    build.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="default: data/cache")
    build.add_argument("--sources", nargs="+", metavar="SOURCE",
                       help=f"default: all of {', '.join(SOURCES)}")
    build.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    build.add_argument("--workers", type=int, default=None, help="render processes (default: all CPU cores)")
    build.add_argument("--only", choices=["validation", "imagenet"],
                       help="validation: only (re)build the validation sets of an existing corpus: re-split "
                            "OpenClipart into train/val_objects and fetch the val_photos photos; nothing re-rendered. "
                            "imagenet: only fetch the ImageNet class names into CACHE_DIR/imagenet/classes.json")
    demo = sub.add_parser("demo", help="copy validation-style images from the built corpus into a demo folder")
    demo.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="default: data/cache")
    demo.add_argument("--out", type=Path, default=Path("data/demo"),
                      help="default: data/demo (to ship it, copy it over mammut_search/bundled/demo)")
    demo.add_argument("--count", type=int, default=300, help="number of images (default 300)")


def run(args: argparse.Namespace) -> int:
    """Run `corpus build` or `corpus demo`."""
    if args.corpus_command == "build" and args.only == "validation":
        from mammut_search.train.corpus.build import build_validation_sets

        summary = build_validation_sets(args.cache_dir)
        print(json.dumps({k: summary[k] for k in ("images", "per_split", "validation_failed_sources")}, indent=2))
        print(f"manifest: {Path(args.cache_dir) / 'corpus' / 'manifest.parquet'}")
        return 1 if summary["validation_failed_sources"] else 0
    if args.corpus_command == "build" and args.only == "imagenet":
        from mammut_search.train.corpus.imagenet import imagenet_classes

        classes = imagenet_classes(args.cache_dir)
        print(f"{len(classes)} classes in {Path(args.cache_dir) / 'imagenet' / 'classes.json'}")
        return 0
    if args.corpus_command == "build":
        from mammut_search.train.corpus.build import build_corpus

        summary = build_corpus(args.cache_dir, args.sources, args.size, args.workers)
        print(json.dumps({k: summary[k] for k in ("images", "per_split", "failed_sources", "seconds")}, indent=2))
        print(f"manifest: {Path(args.cache_dir) / 'corpus' / 'manifest.parquet'}")
        return 1 if summary["failed_sources"] else 0
    from mammut_search.train.corpus.demo import make_demo

    written = make_demo(args.cache_dir, args.out, args.count)
    print(f"{written} images in {args.out / 'images'}; captions in {args.out / 'captions.csv'}")
    return 0
