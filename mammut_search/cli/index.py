"""`mammut index build | update | info | duplicates`: make an index of image folders, keep it current, describe
it, list its near-duplicate images."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mammut_search.cli.options import DEVICE_HELP, device_option


INTERRUPTED = ("interrupted: the index is as it was; run the same command again to go on (images encoded so far "
               "are kept)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_interrupted=INTERRUPTED)  # what `mammut` says on Ctrl+C
    actions = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="index every image under some folders",
                               description="Index every image under FOLDERs into a new index directory. "
                                           "Run it again after an interruption: it resumes.")
    build.add_argument("roots", nargs="+", metavar="FOLDER", help="folders (or files) to index, recursively")
    build.add_argument("--out", required=True, help="index directory to create (or resume, or replace)")
    build.add_argument("--checkpoint", help="checkpoint directory (default: the bundled model)")
    build.add_argument("--no-captions", action="store_true", help="skip caption generation (faster)")
    build.add_argument("--distributed", action="store_true",
                       help="under torchrun: every rank encodes a share of the images, rank 0 writes the index")
    _add_run_arguments(build)

    update = actions.add_parser("update", help="pick up added, changed and deleted files",
                                description="Re-scan an index's folders: encode new and changed files, "
                                            "drop deleted ones; unchanged items keep their ids and vectors.")
    update.add_argument("index", help="index directory")
    update.add_argument("--checkpoint", help="checkpoint directory (default: the one the index was built with)")
    _add_run_arguments(update)

    info = actions.add_parser("info", help="describe an index: images, skipped files and why, model, size")
    info.add_argument("index", help="index directory")
    info.add_argument("--all", action="store_true", help="list every skipped file (default: the first 20)")
    info.add_argument("--json", action="store_true", help="print the manifest and skipped files as JSON")

    duplicates = actions.add_parser("duplicates", help="list groups of near-identical images (and byte copies)",
                                    description="Group the images whose stored latents are nearly the same (bursts, "
                                                "edits, re-saved copies) and the byte-identical copies; no image "
                                                "is decoded. Each group: one line per image, similarity to the "
                                                "first, 'copy' for the same bytes as another. Beyond 20,000 images "
                                                "the comparison is approximate (a FAISS inverted file): it takes "
                                                "seconds instead of minutes and may miss a rare pair.")
    duplicates.add_argument("index", help="index directory")
    duplicates.add_argument("--threshold", type=_similarity, default=None,
                            help="least cosine similarity of near-duplicates (default 0.95)")
    duplicates.add_argument("--json", action="store_true", help="print the groups as JSON")
    duplicates.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_option, help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=_positive,
                        help="images per model batch (default: chosen for the device and its memory)")
    parser.add_argument("--workers", type=_non_negative, default=None,
                        help="decoding processes; 0 decodes in this process (default: up to 8 beside a GPU; "
                             "on a CPU, inline on 2 cores, else a quarter of the cores)")
    parser.add_argument("--shard-size", type=_positive, default=1024,
                        help="images per checkpointed work shard (default 1024)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("index_builder", "mammut_search"):  # our progress messages, not every library's
        logging.getLogger(name).setLevel(logging.INFO)
    return {"build": _build, "update": _update, "info": _info, "duplicates": _duplicates}[args.index_command](args)


def _options(args: argparse.Namespace, captions: bool = True):
    from index_builder.build import BuildOptions

    return BuildOptions(batch_size=args.batch_size, workers=args.workers, captions=captions,
                        shard_size=args.shard_size, progress=not args.quiet)


def _build(args: argparse.Namespace) -> int:
    from index_builder.build import build_index
    from index_builder.distributed import build_index_distributed, rank_device

    from mammut_search.inference import load_model

    options = _options(args, captions=not args.no_captions)
    if args.distributed:
        model = load_model(args.checkpoint, device=args.device or rank_device())
        store = build_index_distributed(args.roots, args.out, model, checkpoint_dir=args.checkpoint, options=options)
    else:
        model = load_model(args.checkpoint, device=args.device)
        store = build_index(args.roots, args.out, model, checkpoint_dir=args.checkpoint, options=options)
    if store is not None:  # only rank 0 of a distributed build holds the result
        _print_summary(store)
    return 0


def _update(args: argparse.Namespace) -> int:
    from index_builder.build import update_index

    from mammut_search.inference import load_model
    from mammut_search.index.manifest import read_manifest, resolve_checkpoint

    checkpoint = resolve_checkpoint(read_manifest(args.index), args.checkpoint)
    model = load_model(checkpoint, device=args.device)
    store = update_index(args.index, model, checkpoint_dir=checkpoint, options=_options(args))
    _print_summary(store)
    return 0


def _print_summary(store) -> None:
    run = store.manifest.last_run
    rate = f", {run.encoded / run.seconds:.1f} images/s" if run.encoded and run.seconds else ""
    print(f"{store.directory}: {run.images} images indexed, {run.skipped} files skipped "
          f"({run.encoded} encoded, {run.resumed} resumed, {run.reused} reused, "
          f"{run.removed} removed) in {run.seconds:.1f} s{rate}")


def _info(args: argparse.Namespace) -> int:
    from mammut_search.index.manifest import readable, summary_rows
    from mammut_search.index.store import IndexStore
    from mammut_search.index.vectors import search_device

    store = IndexStore.open(args.index)
    skipped = store.items[store.items["status"] != "ok"]
    if args.json:
        listing = [{"path": readable(p), "reason": s} for p, s in zip(skipped["path"], skipped["status"])]
        print(json.dumps({"manifest": store.manifest.to_dict(), "search": search_device(),
                          "skipped_files": listing}, indent=2, sort_keys=True))
        return 0
    rows = summary_rows(store.directory, store.manifest, search=search_device(), size_bytes=store.size_bytes())
    width = max(len(label) for label, _ in rows) + 2
    print("\n".join(f"{label + ':':<{width}}{value}" for label, value in rows))
    if len(skipped):
        shown = skipped if args.all else skipped.head(20)
        print("skipped files:")
        for path, reason in zip(shown["path"], shown["status"]):
            print(f"  {readable(path)}: {reason}")
        if len(shown) < len(skipped):
            print(f"  ... {len(skipped) - len(shown)} more (mammut index info --all)")
    return 0


def _duplicates(args: argparse.Namespace) -> int:
    from mammut_search.index.duplicates import DUPLICATE_SIMILARITY, duplicate_groups
    from mammut_search.index.manifest import readable
    from mammut_search.index.store import IndexStore

    store = IndexStore.open(args.index)
    threshold = DUPLICATE_SIMILARITY if args.threshold is None else args.threshold
    groups = duplicate_groups(store, threshold, progress=not args.quiet)
    if args.json:
        print(json.dumps([{"ids": g.ids, "paths": [readable(store.path_of(i)) for i in g.ids], "copies": g.copies}
                          for g in groups], indent=2))
        return 0
    for number, group in enumerate(groups, start=1):
        first = store.vectors.reconstruct(group.ids[:1])[0]
        similarities = store.vectors.reconstruct(group.ids) @ first
        print(f"group {number}: {len(group.ids)} images")
        for item_id, similarity in zip(group.ids, similarities):
            copy = "\tcopy" if item_id in group.copies else ""
            print(f"  {similarity:.3f}\t{readable(store.path_of(item_id))}{copy}")
    print(f"{len(groups)} groups of near-duplicates (similarity at least {threshold}) among {store.manifest.count} "
          "images", file=sys.stderr)
    return 0


def _similarity(text: str) -> float:
    value = _number(float, text, "a cosine similarity, a number between -1 and 1")
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity lies between -1 and 1, got {text}")
    return value


def _positive(text: str) -> int:
    value = _number(int, text, "a whole number, at least 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = _number(int, text, "a whole number, 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _number(kind: type, text: str, expected: str):
    """`text` as an int or a float, or an argparse error saying what was expected (not the parser's name)."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
