"""`mammut eval`: recall@k both ways, caption quality and the approximate index's cost on captioned images."""

from __future__ import annotations

import argparse
import sys

from mammut_search.cli.options import DEVICE_HELP, device_option

CONVENTIONS_HELP = """\
inputs (--captions): a Karpathy split JSON (dataset_coco.json, dataset_flickr30k.json), COCO captions JSON
  (captions_val2017.json; images beside it or in ../val2017/), a CSV/TSV/JSONL/parquet of image,caption rows
  (several rows per image, or a list of captions; optional split and concept_id columns), or a folder of
  images with NAME.txt beside each (one caption per line; subfolders train/val/test are splits).
  Missing image files and images without a caption are listed and left out, and so are image paths that
  lead outside the images root and links in a folder that lead outside it (--allow-outside-root reads them).
standard protocol (a Karpathy file; as in CLIP_benchmark and the papers' COCO 5k / Flickr30k 1k test):
  the test split, the first 5 captions of each image, every caption its own query: text->image ranks the
  caption's own image among all test images; image->text ranks the image's own captions among all test
  captions (an identical text of another image is a wrong answer; its tie does not count against the right
  one). CLIP_benchmark keeps every caption (25,010 for COCO 5k); 5 per image (25,000) is what papers use.
  COCO captions JSON: the same on the whole file. Other inputs: every caption, identical caption texts
  merged (below). Override with --split, --captions-per-image and --per-caption / --distinct-texts.
scoring (as in CLIP_benchmark):
  rank of the right item = 1 + number of items scored strictly higher than it (ties are optimistic);
  a hit at k means rank <= k.
  text->image recall@k: share of captions whose image is among the top k images; with distinct texts,
    when several images carry the identical caption text, any of them counts.
  image->text recall@k: share of images with at least one of their captions among the top k captions
    (distinct caption texts, or every caption under the standard protocol).
  BLEU-4 (corpus, closest reference length) and CIDEr-D (coco-caption, document frequencies over the
    references of the evaluated set) compare each image's generated caption with its evaluated captions.
  --index: text->image recall through the index (approximate) beside exact search over the index's
    vectors; the gallery is the whole index, eval images are matched to index items by path.
outputs (--out DIR): report.json, captions.csv (rank of the right image per caption),
  images.csv (rank per image, generated caption), recall_curve.png.
Unreadable or missing images are listed and left out."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = CONVENTIONS_HELP
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", metavar="FILE_OR_DIR",
                        help="Karpathy or COCO captions JSON, CSV/TSV/JSONL of image-caption pairs, or a folder "
                             "of images with NAME.txt captions (see below)")
    source.add_argument("--folder", metavar="DIR", help="images with a same-name .txt caption file beside them")
    source.add_argument("--domains", nargs="?", const="data/cache/corpus/manifest.parquet", metavar="MANIFEST",
                        help="generalisation: retrieval and caption hit rate on the corpus's validation sets "
                             "(styles, objects, photos; see mammut_search/eval/domains.py; default MANIFEST: "
                             "data/cache/corpus/manifest.parquet)")
    parser.add_argument("--images-root", metavar="DIR",
                        help="folder that relative image paths start from (default: the captions file's folder)")
    parser.add_argument("--split", help="evaluate this split only ('all': every split; default: test for a "
                                        "Karpathy file, everything otherwise)")
    parser.add_argument("--captions-per-image", type=_positive, metavar="N",
                        help="first N captions of each image (default: 5 for Karpathy/COCO files, all otherwise)")
    texts = parser.add_mutually_exclusive_group()
    texts.add_argument("--per-caption", dest="per_caption", action="store_true", default=None,
                       help="every caption its own query and gallery text (default for Karpathy/COCO files)")
    texts.add_argument("--distinct-texts", dest="per_caption", action="store_false",
                       help="identical caption texts are one text, right for all their images (default otherwise)")
    parser.add_argument("--image-column", help="image path column (default: image/path/file/filename)")
    parser.add_argument("--caption-column", help="caption column (default: caption/text)")
    parser.add_argument("--group-column", help="rank each caption only among the images of its group")
    parser.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--index", metavar="DIR", help="also measure recall through this index")
    parser.add_argument("-k", type=_positive, nargs="+", default=[1, 5, 10], metavar="K", help="recall@k cut-offs (default 1 5 10)")
    parser.add_argument("--out", metavar="DIR", help="write report.json, CSVs and the recall curve here (checked "
                                                     "before the evaluation starts)")
    parser.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read image paths that lead outside the images root (absolute or ../), and links "
                             "in a folder that lead outside it; they are listed either way")
    parser.add_argument("--no-captions", action="store_true", help="skip caption generation and BLEU/CIDEr")
    from mammut_search.cli.caption import add_decoding_arguments

    add_decoding_arguments(parser, "as indexes use")
    parser.add_argument("--device", type=device_option, help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=_positive, help="images per batch (default: chosen for the device)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from mammut_search.captioned import read_captioned
    from mammut_search.errors import UserError
    from mammut_search.eval.evaluation import check_report_folder, evaluate_captioned, format_table, write_report
    from mammut_search.inference import load_model

    if args.domains:
        return _run_domains(args)
    if args.group_column and args.folder:
        raise UserError("--group-column needs --captions (a folder has no group column)")
    if args.out:
        check_report_folder(args.out, overwrite=args.overwrite)  # before an hour of work, not after
    source = args.folder or args.captions
    captioned = read_captioned(source, images_root=args.images_root, image_column=args.image_column,
                               caption_column=args.caption_column, allow_outside=args.allow_outside_root)
    inputs = {"folder": args.folder} if args.folder else {"captions": args.captions, "images_root": args.images_root}
    model = load_model(args.checkpoint, device=args.device)
    store = None
    if args.index:
        from mammut_search.index.store import IndexStore

        store = IndexStore.open(args.index, model=model if model.checkpoint_sha256 else None)
        inputs["index"] = args.index
    result = evaluate_captioned(captioned, model, split=args.split, captions_per_image=args.captions_per_image,
                                per_caption=args.per_caption, group_column=args.group_column, ks=args.k,
                                captions=not args.no_captions, beam_width=args.beam_width, max_len=args.max_len,
                                index=store, batch_size=args.batch_size, progress=not args.quiet)
    print(format_table(result))
    if args.out:
        paths = write_report(result, args.out, inputs=inputs, overwrite=args.overwrite)
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    else:
        print("\n(pass --out DIR to write report.json, per-caption ranks and the recall curve)", file=sys.stderr)
    return 0


def _run_domains(args: argparse.Namespace) -> int:
    from mammut_search.eval.domains import evaluate_domains, format_domains_table, trained_styles
    from mammut_search.inference import load_model
    from mammut_search.train.data import read_manifest

    manifest = read_manifest(args.domains)
    model = load_model(args.checkpoint, device=args.device)
    results = evaluate_domains(model, manifest, ks=args.k, captions=not args.no_captions,
                               batch_size=args.batch_size or 32)
    if not results:
        print(f"{args.domains}: no validation splits (val, val_unseen, val_objects, val_photos); "
              "run `mammut corpus build --only validation`", file=sys.stderr)
        return 1
    print(format_domains_table(results, trained_styles(model.config.training)))
    return 0
