"""`mammut train --config RECIPE.toml [--set key=value ...] [--resume RUN_DIR] [--out RUN_DIR]`."""

from __future__ import annotations

import argparse
import json

DEFAULT_OUT = "runs/default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `mammut train`."""
    parser.add_argument("--config", help="TOML recipe (e.g. data/recipes/default.toml); with --resume, optional")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting (TOML value; dotted keys for tables: model.dim=384); repeatable")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")
    parser.add_argument("--out", metavar="RUN_DIR", help=f"run directory (last/, best/, log.jsonl; default {DEFAULT_OUT})")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")


def run(args: argparse.Namespace) -> int:
    """Resolve the recipe and train."""
    from mammut_search.errors import UserError
    from mammut_search.train.loop import run_recipe, train
    from mammut_search.train.recipe import load_config

    if args.config is None and args.resume is None:
        raise UserError("give a recipe with --config (e.g. data/recipes/default.toml) or a run to --resume")
    # resuming without a recipe: the run's own recipe, with any overrides
    base = run_recipe(args.resume).to_dict() if args.config is None else None
    config = load_config(args.config, args.overrides, base=base)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    out = args.out or args.resume or DEFAULT_OUT
    card = train(config, out, resume=args.resume)
    if card:
        print(f"done: {card['steps']} steps in {card['wall_time_s'] / 60:.1f} min; best checkpoint in {out}/best"
              + (f", exported to {config.export}" if config.export else ""))
    return 0
