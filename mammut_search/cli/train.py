"""`mammut train [--config RECIPE.toml] [--set key=value ...] [--out RUN_DIR | --resume RUN_DIR] [--overwrite]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_OUT = "runs/default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `mammut train`."""
    parser.add_argument("--config", help="TOML recipe (e.g. data/recipes/coco.toml); without it, the bundled "
                        "checkpoint's recipe (data/recipes/default.toml), or with --resume the run's own")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (TOML value; dotted keys for tables: model.dim=384); "
                        "repeatable")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped "
                        "(it is written there, nowhere else)")
    parser.add_argument("--out", metavar="RUN_DIR",
                        help=f"run directory (last/, best/, log.jsonl; default {DEFAULT_OUT}); it must hold no run yet")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in --out, and let the recipe's export replace a checkpoint")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe (the whole model spelled out) and exit")


def run(args: argparse.Namespace) -> int:
    """Resolve the recipe and train."""
    from mammut_search.errors import UserError
    from mammut_search.train.loop import train
    from mammut_search.train.run_folder import run_recipe, run_root
    from mammut_search.train.recipe import load_config

    if args.resume is not None and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: give one of them")
    # resuming without a recipe: the run's own recipe, with any overrides
    base = run_recipe(args.resume).to_dict() if args.config is None and args.resume is not None else None
    config = load_config(args.config, args.overrides, base=base)
    if args.print_config:
        print(json.dumps(config.resolved(), indent=2))
        return 0
    out = args.out or (str(run_root(Path(args.resume))) if args.resume is not None else DEFAULT_OUT)
    card = train(config, out, resume=args.resume, overwrite=args.overwrite)
    if card:
        print(f"done: {card['steps']} steps in {card['wall_time_s'] / 60:.1f} min; best checkpoint in {out}/best"
              + (f", exported to {config.export}" if config.export else ""))
    return 0
