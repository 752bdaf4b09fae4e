"""Ablations of the default recipe at a small, equal budget: joint vs contrastive-only vs captioning-only,
bidirectional vs causal contrastive pass, with vs without the pretrained text side (MiniLM embeddings and
distillation), with vs without the image latent's linear grid map, with vs without the word loss. Reuses the cached encoder features of the default recipe.

    python benchmarks/train_ablations.py [--steps 150] [--out runs/ablations] [--card data/checkpoints/default]

Prints a markdown table, writes runs/ablations/ablations.json, and adds the table to the checkpoint's card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mammut_search.train.loop import add_to_training_card, train
from mammut_search.train.recipe import load_config

VARIANTS = {
    "joint (default)": [],
    "contrastive only": ["model.caption_loss_weight=0.0"],
    "captioning only": ["model.contrastive_loss_weight=0.0", "distill_weight=0.0"],
    "causal contrastive pass": ["model.contrastive_mask='causal'"],
    "no pretrained text init": ["text_init=false", "distill_weight=0.0"],
    "image latent from the pool only": ["model.image_grid_latent=false"],
    "no word loss": ["word_weight=0.0"],
}


def row(name: str, card: dict) -> dict:
    v, u = card["validation"]["val"], card["validation"].get("val_unseen", {})
    c = card.get("captions", {})
    return {
        "variant": name,
        "seen t2i R@1": v["t2i_R@1"], "seen i2t R@1": v["i2t_R@1"], "seen sentence t2i R@1": v["t2i_sentence_R@1"],
        "unseen t2i R@5": u.get("t2i_R@5"),
        "seen exact-name captions": c.get("val", {}).get("exact_name"),
        "seen CIDEr-D": c.get("val", {}).get("CIDEr-D"),
        "unseen copied names": c.get("val_unseen", {}).get("copied_training_name"),
        "wall s": card["wall_time_s"],
    }


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="data/recipes/default.toml")
    parser.add_argument("--steps", type=int, default=150)
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
                                           f"save_every={args.steps}", "warmup_steps=20", *overrides])
        card = train(config, out / name.split(" (")[0].replace(" ", "-"))
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
