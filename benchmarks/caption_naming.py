"""Captions that name the object, across domains: the held-out emoji styles, OpenClipart objects and real photos.
The decoder's own caption, the classifier's top class name alone, the product's captions (the class name where the
classifier is confident and its name agrees with the image: mammut_search/model/naming.py) and that rule's
neighbours, and the alternative of choosing between caption and class name by the decoder's likelihood.

    python benchmarks/caption_naming.py --checkpoint runs/lite1-240/best [--features FEATURES.pt] [--styles-apart]

"named": the share of images whose caption shares a content word with one of its references (the styles domain is
the mean of its styles unless --styles-apart). --features: a torch file {set: encoder tokens (i j c)} of this
checkpoint, to skip the image encoder. Also times the captions of a batch of 64 photos with and without the naming
step. Prints a markdown table and writes it to benchmarks/out/caption_naming-CHECKPOINT.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

import numpy as np
import torch

from mammut_search.eval.domains import caption_hits
from mammut_search.inference import MammutModel, load_model
from mammut_search.model.decoding import generate
from mammut_search.model.naming import (NAMING_CONFIDENCE, NAMING_MARGIN, class_name_agreement, class_names,
                                        named_classes)
from photo_knowledge import by_domain, encode_sets, validation_sets

OUT = Path(__file__).resolve().parent / "out" / "caption_naming.md"
CONFIDENCES = (0.1, 0.2, 0.3, 0.4)
MARGINS = (0.0, 0.05, 0.1, 0.15)
LIKELIHOOD_WEIGHTS = (0.0, 0.5, 1.0)  # of log p(class); the name's likelihood + weight * log p(class) vs the caption's


@torch.no_grad()
def candidates(model: MammutModel, features: torch.Tensor, batch: int = 64) -> dict:
    """Per image: the decoder's caption, the product's caption, the top class, its probability, its name's agreement
    gain over the caption, and both texts' length-normalised log-likelihoods."""
    out = {k: [] for k in ("decoder", "product", "top", "probability", "gain", "caption_ll", "name_ll")}
    for s in range(0, len(features), batch):
        f = features[s:s + batch]
        tokens = model.decoder_tokens(f)
        ids = generate(model.net, tokens)
        decoder = [model.tokenizer.decode(row) for row in ids.tolist()]
        top, probability, gain = class_name_agreement(model.net, model.tokenizer, f, ids)
        out["decoder"] += decoder
        out["product"] += model.captions_from_features(f, tokens=tokens)
        out["caption_ll"].append(model.score_text_from_tokens(tokens, decoder))
        out["name_ll"].append(model.score_text_from_tokens(tokens, [class_names()[i] for i in top.tolist()]))
        for key, value in (("top", top), ("probability", probability), ("gain", gain)):
            out[key].append(value)
    return {k: (torch.cat(v) if isinstance(v[0], torch.Tensor) else v) for k, v in out.items()}


def _named(per_set: dict, refs: dict, choose, styles_apart: bool = False) -> dict:
    """{domain: {"named": share}} of the captions `choose(candidates) -> list of str` gives."""
    rows = {n: {"named": float(caption_hits(choose(c), refs[n]).mean())} for n, c in per_set.items()}
    return by_domain(rows, styles_apart)


def rule(confidence: float, margin: float):
    """The naming rule at another setting."""
    def choose(c: dict) -> list[str]:
        take = (c["probability"] >= confidence) & (c["gain"] >= -margin)
        return [class_names()[t] if k else d for d, t, k in zip(c["decoder"], c["top"].tolist(), take.tolist())]
    return choose


def by_likelihood(weight: float):
    """The class name where its log-likelihood + weight * log p(class) beats the decoder caption's."""
    def choose(c: dict) -> list[str]:
        take = c["name_ll"] + weight * c["probability"].log() > c["caption_ll"]
        return [class_names()[t] if k else d for d, t, k in zip(c["decoder"], c["top"].tolist(), take.tolist())]
    return choose


def rows_of(per_set: dict, refs: dict, styles_apart: bool = False) -> list[tuple[str, dict]]:
    shipped = f"confidence {NAMING_CONFIDENCE:g}, margin {NAMING_MARGIN:g}"
    named = functools.partial(_named, styles_apart=styles_apart)
    rows = [("decoder alone", named(per_set, refs, lambda c: c["decoder"])),
            ("classifier top-1 name alone", named(per_set, refs, lambda c: [class_names()[t] for t in c["top"]])),
            (f"**product: name if {shipped}**", named(per_set, refs, lambda c: c["product"]))]
    rows += [(f"name if confidence {p:g}, margin {m:g}", named(per_set, refs, rule(p, m)))
             for p in CONFIDENCES for m in MARGINS]
    rows += [(f"name if likelihood wins, weight {w:g}", named(per_set, refs, by_likelihood(w)))
             for w in LIKELIHOOD_WEIGHTS]
    return rows


@torch.no_grad()
def cost(model: MammutModel, features: torch.Tensor, repeats: int = 25) -> tuple[float, float, float]:
    """Best-of-`repeats` ms per image of a batch, the three alternated: the decoder's captions alone, the
    product's captions (the decoder tokens given, as an index build gives them), and the naming step alone."""
    tokens = model.decoder_tokens(features)
    ids = generate(model.net, tokens)
    calls = (lambda: [model.tokenizer.decode(r) for r in generate(model.net, tokens).tolist()],
             lambda: model.captions_from_features(features, tokens=tokens),
             lambda: named_classes(model.net, model.tokenizer, features, ids))
    times = [[] for _ in calls]
    for _ in range(repeats):
        for call, spent in zip(calls, times):
            start = time.perf_counter()
            call()
            spent.append(time.perf_counter() - start)
    alone, product, naming = (min(t) * 1000 / len(features) for t in times)
    return alone, product, naming


def table(rows: list[tuple[str, dict]]) -> str:
    domains = list(rows[0][1])
    head = ["captions"] + [f"{d} named" for d in domains] + ["mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows:
        values = [r[d]["named"] for d in domains]
        lines.append(f"| {label} | " + " | ".join(f"{v:.1%}" for v in values) + f" | {np.mean(values):.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--features", default="", help="cached encoder tokens {set: (i j c)} of this checkpoint")
    parser.add_argument("--manifest", default="data/cache/corpus/manifest.parquet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--styles-apart", action="store_true", help="a column per held-out style, not their mean")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = validation_sets(args.manifest)
    model = load_model(args.checkpoint, device="cpu")
    features = torch.load(args.features) if args.features else encode_sets(model, sets)
    per_set = {n: candidates(model, f) for n, f in features.items()}
    text = table(rows_of(per_set, {n: refs for n, (_, refs) in sets.items()}, args.styles_apart))
    load = os.getloadavg()[0]
    alone, product, naming = cost(model, features["photos"][:64])
    text += (f"\n\nCaptions of 64 photos, {args.threads} threads, load average {load:.2f} before / "
             f"{os.getloadavg()[0]:.2f} after, best of 25: decoder alone {alone:.2f} ms/image, with the naming step "
             f"{product:.2f} ms/image; the naming step alone {naming:.2f} ms/image.")
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_name(f"{OUT.stem}-{Path(args.checkpoint).name}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
