"""Ablations of the default recipe at a small, equal budget, one row per lever: the semantic token (ImageNet
classifier x class-name embeddings), the label-only examples, OpenClipart in training, the word loss, the
pretrained text side. Validation as in training: the held-out styles (their mean), objects and photos.
Reuses the cached encoder features of the default recipe.

    python benchmarks/train_ablations.py [--steps 400] [--out runs/ablations] [--card mammut_search/bundled/checkpoint]

Prints a markdown table, writes runs/ablations/ablations.json, and adds the table to the checkpoint's card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mammut_search.train.validation import domain_of
from mammut_search.train.loop import add_to_training_card, train
from mammut_search.train.recipe import load_config

VARIANTS = {
    "default recipe": [],
    "no label-only examples": ["label_weight=0.0"],
    "no semantic token": ["model.semantic_dim=0", "model.fusion_weight=0.0", "label_weight=0.0"],
    "no OpenClipart": ["style_shares={}", "exclude_styles=['openmoji-color', 'iconify-twemoji', 'iconify-noto', "
                       "'openclipart']"],
    "no word loss": ["word_weight=0.0"],
    "no pretrained text init": ["text_init=false", "distill_weight=0.0", "model.fusion_weight=0.0"],
}


def row(name: str, card: dict) -> dict:
    """Per domain: text->image R@1 and R@5 (the styles' mean) and the captions that name the object."""
    validation, captions = card["validation"], card.get("captions", {})
    out: dict = {"variant": name}
    domains: dict[str, list[str]] = {}
    for split in validation:
        domains.setdefault(domain_of(split), []).append(split)
    for domain, splits in domains.items():
        label = domain.removeprefix("val_")
        for key in ("t2i_R@1", "t2i_R@5"):
            out[f"{label} {key.replace('_', ' ')}"] = sum(validation[s][key] for s in splits) / len(splits)
        named = [captions[s]["names_object"] for s in splits if s in captions]
        out[f"{label} named"] = sum(named) / len(named) if named else None
    out["wall s"] = card["wall_time_s"]
    return out


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="data/recipes/default.toml")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--card", default="", help="checkpoint whose training card gets the table")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    results_path = out / "ablations.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {r["variant"] for r in rows}
    for name, overrides in VARIANTS.items():
        if name in done or (args.only and name not in args.only):
            continue
        config = load_config(args.recipe, [f"steps={args.steps}", "export=''", f"eval_every={args.steps}",
                                           f"save_every={args.steps}", "warmup_steps=20", "max_minutes=0", *overrides])
        # a variant not in the results file did not finish: its folder is started again
        card = train(config, out / name.split(" (")[0].replace(" ", "-"), overwrite=True)
        rows.append(row(name, card))
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(rows, indent=2))
        print(markdown(rows), flush=True)
    table = {"budget": f"{args.steps} steps of batch {load_config(args.recipe).batch_size}, same seed and data",
             "rows": rows}
    if args.card:
        add_to_training_card(args.card, "ablations", table)
    print(markdown(rows))


if __name__ == "__main__":
    main()
