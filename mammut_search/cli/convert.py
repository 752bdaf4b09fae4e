"""`mammut convert open-clip WEIGHTS --config CONFIG --out DIR`: LAION's openMaMMUT (open_clip MaMMUT weights)
as a checkpoint directory that every other command reads."""

from __future__ import annotations

import argparse

HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HUB_CONFIG = "open_clip_config.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_subparsers(dest="convert_format", metavar="FORMAT", required=True)
    open_clip = formats.add_parser(
        "open-clip", help="open_clip MaMMUT weights (LAION's openMaMMUT) -> a checkpoint directory",
        description="Convert open_clip MaMMUT weights, such as LAION's openMaMMUT-ViT-L-14, into a checkpoint "
                    "directory (config.json, model.safetensors, tokenizer.json) for index build, search, caption, "
                    "eval and the UI. Nothing is downloaded unless --from-hub is given.")
    open_clip.set_defaults(_interrupted="interrupted: the output folder may hold a partial checkpoint (it has no "
                                        "config.json, so nothing loads it); delete it and convert again")
    open_clip.add_argument("weights", nargs="?", metavar="WEIGHTS",
                           help="open_clip_model.safetensors or open_clip_pytorch_model.bin (read without "
                                "running code)")
    open_clip.add_argument("--config", metavar="CONFIG_JSON",
                           help="the hub's open_clip_config.json, or a model config such as mammut_ViT-L-14.json")
    open_clip.add_argument("--out", required=True, metavar="CHECKPOINT_DIR", help="new checkpoint directory")
    open_clip.add_argument("--bpe-vocab", metavar="PATH",
                           help="bpe_simple_vocab_16e6.txt.gz (default: the one in an installed open-clip-torch; "
                                "`pip install --no-deps open-clip-torch` brings it)")
    open_clip.add_argument("--from-hub", metavar="REPO",
                           help="download WEIGHTS and CONFIG_JSON once from this Hugging Face hub repository, e.g. "
                                "laion/openMaMMUT-ViT-L-14-DataComp-1.4B-s12.8B-b180K (needs huggingface_hub)")


def run(args: argparse.Namespace) -> int:
    from mammut_search.errors import UserError
    from mammut_search.model.open_clip_convert import convert_open_clip

    weights, config = args.weights, args.config
    if args.from_hub:
        if weights or config:
            raise UserError("give either --from-hub REPO or WEIGHTS with --config, not both")
        weights, config = download_from_hub(args.from_hub)
    elif not (weights and config):
        raise UserError("give WEIGHTS and --config CONFIG_JSON (or --from-hub REPO)")
    print(f"converting {weights} with {config} ...", flush=True)
    sha = convert_open_clip(weights, config, args.out, vocab_file=args.bpe_vocab)
    print(f"wrote {args.out} (identity {sha[:12]}); use it with --checkpoint {args.out}")
    return 0


def download_from_hub(repo: str) -> tuple[str, str]:
    """(weights path, config path) of a hub repository, downloaded once into the hub's own cache."""
    from mammut_search.errors import UserError

    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError("--from-hub needs huggingface_hub (pip install huggingface_hub); or download "
                        f"{HUB_WEIGHTS[0]} and {HUB_CONFIG} yourself and give their paths") from None
    try:
        config = hf_hub_download(repo, HUB_CONFIG)
        for name in HUB_WEIGHTS:
            try:
                return hf_hub_download(repo, name), config
            except Exception as e:  # the hub raises its own types; a missing file is one of them
                missing = e
        raise missing
    except Exception as e:
        raise UserError(f"{repo}: download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None
