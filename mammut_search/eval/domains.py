"""Generalisation across domains: retrieval and captions on each validation set of the corpus manifest.

Domains (splits of data/cache/corpus/manifest.parquet, none of them trained on):
    styles  = "val" + "val_unseen": the held-out emoji style, seen and unseen concepts together;
    objects = "val_objects": a held-out slice of OpenClipart title families (noisy titles: flags, symbols);
    photos  = "val_photos": real photos (scikit-image, scikit-learn, GCompris), validation only.

Per domain, with each image's main caption (the first of its captions):
- text->image R@k: a query per distinct main caption, the gallery every image of the domain, right answers
  every image carrying that main caption; ranks as in metrics.py (optimistic on ties).
- image->text R@1: each image against the distinct main captions; right = its own main caption.
- caption hit rate: share of images whose generated caption shares a content word with any of the image's
  captions. Content words: lower-case words (metrics.tokenize), stop words and template words ("picture",
  "photo", "drawing", "emoji", ...) removed, plurals stemmed by simple rules ("flies" -> "fly",
  "boxes" -> "box", "cats" -> "cat"; not "glass", "bus", "iris").
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mammut_search.eval.metrics import recall_from_ranks, retrieval_ranks, tokenize

DOMAINS = {"styles": ("val", "val_unseen"), "objects": ("val_objects",), "photos": ("val_photos",)}
# the emoji styles that the validation recipe (data/recipes/validation.toml) keeps out of training, each one a
# validation set of every image it has (seen and unseen concepts together); the styles domain is their mean. The
# bundled checkpoint keeps only FxEmoji out; `trained_styles` tells which of them a checkpoint saw.
HELD_OUT_STYLES = ("iconify-fxemoji", "openmoji-black", "iconify-emojione-monotone")
STOP_WORDS = frozenset(
    "a an the of with and or in on at to for by from is are it its this that these those his her their "
    "some one two three four over under up down into out off near next other another very s b w "
    # caption templates: they describe the picture, not its object
    "picture photo photograph image drawing icon emoji clip art line black white style".split())
Loader = Callable[[str], Image.Image]


def content_words(text: str) -> set[str]:
    """Lower-case words of a text, without stop or template words, plurals stemmed ("Two Cats." -> {"cat"})."""
    return {_singular(w) for w in tokenize(text) if w not in STOP_WORDS and not w.isdigit()}


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def caption_hits(generated: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """For each image, whether its generated caption shares a content word with any of its references (i) bool."""
    return np.array([bool(content_words(g) & set().union(*(content_words(r) for r in refs)))
                     for g, refs in zip(generated, references)], dtype=bool)


def domain_metrics(image_latents: torch.Tensor, main_captions: Sequence[str], text_latents_of: Callable,
                   *, generated: Sequence[str] | None = None, references: Sequence[Sequence[str]] | None = None,
                   ks: Iterable[int] = (1, 5, 10)) -> dict:
    """Metrics of one domain from its image latents (n l), each image's main caption, and a text encoder.

    `text_latents_of(texts) -> (t l)` encodes the distinct main captions; `generated` and `references`
    (each image's captions) give the caption hit rate when present."""
    ks = list(ks)
    texts = list(dict.fromkeys(main_captions))
    text_index = {t: i for i, t in enumerate(texts)}
    text_latents = text_latents_of(texts)
    targets = [set() for _ in texts]
    for image, caption in enumerate(main_captions):
        targets[text_index[caption]].add(image)
    t2i = recall_from_ranks(retrieval_ranks(text_latents, image_latents, targets), ks)
    i2t = recall_from_ranks(retrieval_ranks(image_latents, text_latents, [{text_index[c]} for c in main_captions]), [1])
    out = {"images": len(main_captions), "queries": len(texts), "t2i": t2i, "i2t": i2t}
    if generated is not None and references is not None:
        out["caption_hit"] = float(caption_hits(generated, references).mean()) if len(generated) else float("nan")
    return out


def evaluate_domain(model, frame: pd.DataFrame, *, images_root: str | Path | None = None,
                    ks: Iterable[int] = (1, 5, 10), captions: bool = True, batch_size: int = 32,
                    load: Loader | None = None) -> dict:
    """Metrics of a MammutModel on one validation frame (manifest rows: path, captions); unreadable images
    are left out and counted in "skipped"."""
    root = Path(images_root) if images_root is not None else None
    kept_rows, latents, generated, skipped = [], [], [], 0
    rows = list(frame.itertuples(index=False))
    for start in range(0, len(rows), batch_size):
        pixels, good = [], []
        for row in rows[start:start + batch_size]:
            path = str(Path(row.path) if root is None or Path(row.path).is_absolute() else root / row.path)
            try:  # the one image pipeline, unless the caller brings its own loader
                pixels.append(model.preprocess_files([path]) if load is None else model.preprocess([load(path)]))
                good.append(row)
            except Exception:  # an unreadable image is counted, not fatal
                skipped += 1
        if not pixels:
            continue
        features = model.image_features(torch.cat(pixels))
        latents.append(model.latents_from_features(features))
        if captions:
            generated += model.captions_from_features(features)
        kept_rows += good
    references = [list(r.captions) for r in kept_rows]
    image_latents = torch.cat(latents) if latents else torch.zeros(0, model.latent_dim)
    if not kept_rows:
        return {"images": 0, "queries": 0, "skipped": skipped}
    out = domain_metrics(image_latents, [refs[0] for refs in references], model.encode_text,
                         generated=generated if captions else None, references=references, ks=ks)
    out["skipped"] = skipped
    return out


def validation_sets(manifest: pd.DataFrame, styles: Sequence[str] | None = HELD_OUT_STYLES) -> dict[str, pd.DataFrame]:
    """The manifest's validation sets by name, each with rows: "style:NAME" for each of `styles` present (every
    image of that style; with none present, the val/val_unseen splits as "styles"), then objects and photos."""
    sets = {}
    present = [s for s in styles or () if "style" in manifest.columns and (manifest["style"] == s).any()]
    for style in present:
        sets[f"style:{style}"] = manifest[manifest["style"] == style]
    for domain, splits in DOMAINS.items():
        if domain == "styles" and present:
            continue
        sets[domain] = manifest[manifest["split"].isin(splits)]
    return {name: rows.reset_index(drop=True) for name, rows in sets.items() if len(rows)}


def evaluate_domains(model, manifest: pd.DataFrame, *, images_root: str | Path | None = None,
                     ks: Iterable[int] = (1, 5, 10), captions: bool = True, batch_size: int = 32,
                     styles: Sequence[str] | None = HELD_OUT_STYLES) -> dict[str, dict]:
    """{set: metrics} for every validation set of `validation_sets`, with the styles' mean as "styles"."""
    results = {name: evaluate_domain(model, rows, images_root=images_root, ks=ks, captions=captions,
                                     batch_size=batch_size)
               for name, rows in validation_sets(manifest, styles).items()}
    per_style = {name: r for name, r in results.items() if name.startswith("style:")}
    if not per_style:
        return results
    rest = {name: r for name, r in results.items() if name not in per_style}
    return {**per_style, "styles": mean_of(list(per_style.values())), **rest}


def mean_of(results: list[dict]) -> dict:
    """The unweighted mean of several sets' metrics (counts summed)."""
    out = {"images": sum(r["images"] for r in results), "queries": sum(r["queries"] for r in results)}
    for key in ("t2i", "i2t"):
        out[key] = {k: float(np.mean([r[key][k] for r in results])) for k in results[0][key]}
    if all("caption_hit" in r for r in results):
        out["caption_hit"] = float(np.mean([r["caption_hit"] for r in results]))
    return out


def trained_styles(training_card: dict) -> set[str]:
    """The styles a checkpoint was trained on, from its training card (`MammutConfig.training`; empty when it
    says nothing of them)."""
    return set(training_card.get("data", {}).get("styles_per_split", {}).get("train", []))


def format_domains_table(results: dict[str, dict], trained: set[str] = frozenset()) -> str:
    """A plain-text table: one row per domain, its counts, recall and caption hit rate. A style set whose style
    is in `trained` is marked: it measures a style the checkpoint saw (with concepts it may not have)."""
    ks = sorted({k for r in results.values() for k in r.get("t2i", {})}, key=lambda k: int(k[2:]))
    header = ["domain", "images", "queries"] + [f"t2i {k}" for k in ks] + ["i2t R@1", "caption hit"]
    lines = [header]
    for domain, r in results.items():
        hit = r.get("caption_hit")
        seen = domain.startswith("style:") and domain.removeprefix("style:") in trained
        lines.append([domain + (" (trained on)" if seen else ""), str(r["images"]), str(r["queries"])]
                     + [f"{r['t2i'][k]:.3f}" if "t2i" in r else "-" for k in ks]
                     + [f"{r['i2t']['R@1']:.3f}" if "i2t" in r else "-", "-" if hit is None else f"{hit:.3f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
