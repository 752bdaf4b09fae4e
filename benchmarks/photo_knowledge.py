"""Photo knowledge across domains: the held-out emoji styles, OpenClipart objects and real photos, for the new
default, its levers, the previous default and the ImageNet bridge alone (no training), side by side.

    python benchmarks/photo_knowledge.py --checkpoint mammut_search/bundled/checkpoint [--previous OLD_CHECKPOINT]
        [--label NAME=CHECKPOINT ...] [--weights 0 0.5 1 2] [--gates 0 10] [--rerank]
        [--styles-apart] [--image-size 224]

Each image is decoded and encoded once per checkpoint; the fusion weight and the query gate only change how
the cached encoder tokens and the queries become retrieval vectors, so every setting of them is scored on the
same features (the setting with the best mean over domains is what the checkpoint should ship with). Text→image
recall with the main caption as the query (gallery: the whole set), captions: the share that name the object
(a content word shared with a reference). The styles domain is the mean of its styles. Prints a markdown table
and writes it to benchmarks/out/photo_knowledge-CHECKPOINT-SIZE.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mammut_search.bundled import bundled_checkpoint_dir
from mammut_search.eval.domains import caption_hits, domain_metrics
from mammut_search.eval.domains import validation_sets as domain_sets
from mammut_search.images import load_image
from mammut_search.inference import MammutModel, load_model
from mammut_search.search import RERANK_CANDIDATES, RERANK_WEIGHT
from mammut_search.train.data import read_manifest

OUT = Path(__file__).resolve().parent / "out" / "photo_knowledge.md"


def validation_sets(manifest: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{set: (image paths, each image's reference texts)}: each held-out style, objects, photos."""
    return {name: (list(rows["path"]), [list(c) for c in rows["captions"]])
            for name, rows in domain_sets(read_manifest(manifest)).items()}


@torch.no_grad()
def encode_sets(model: MammutModel, sets: dict, batch: int = 64) -> dict[str, torch.Tensor]:
    """Each set's encoder tokens (i j c), computed once."""
    out = {}
    for name, (paths, _) in sets.items():
        chunks = []
        for s in tqdm(range(0, len(paths), batch), desc=f"encoding {name}", leave=False):
            images = [load_image(p) for p in paths[s:s + batch]]
            chunks.append(model.image_features(model.preprocess(images)).float().cpu())
        out[name] = torch.cat(chunks)
    return out


def recall(image_latents: torch.Tensor, references: list[list[str]], encode_text) -> dict:
    return domain_metrics(image_latents, [r[0] for r in references], encode_text)["t2i"]


def by_domain(per_set: dict[str, dict], styles_apart: bool = False) -> dict[str, dict]:
    """Sets -> domains: the styles' mean (or, styles_apart, each style), objects, photos."""
    if styles_apart:
        return {k.removeprefix("style:"): v for k, v in per_set.items()}
    styles = [v for k, v in per_set.items() if k.startswith("style:")]
    out = {"styles": {k: float(np.mean([s[k] for s in styles])) for k in styles[0]}} if styles else {}
    out.update({k: v for k, v in per_set.items() if not k.startswith("style:")})
    return out


@torch.no_grad()
def score_model(model: MammutModel, sets: dict, features: dict, weights, gates,
                centers=(0.5,)) -> list[tuple[str, dict]]:
    """One row of per-set figures per fusion setting (just one for a model without the semantic token), plus
    captions."""
    net, rows = model.net, []
    settings = ([(w, g, c) for w in weights for g in (gates if w else [0.0]) for c in (centers if w and g else [0.5])]
                if net.config.semantic_dim else [(None, None, None)])
    hits = {}
    for name, (_, refs) in sets.items():
        captions = []
        for s in range(0, len(features[name]), 64):
            captions += model.captions_from_features(features[name][s:s + 64])
        hits[name] = float(caption_hits(captions, refs).mean())
    shipped = (net.config.fusion_weight, net.config.fusion_gate, net.config.fusion_gate_center)
    for w, g, c in settings:
        if w is not None:
            net.config.fusion_weight, net.config.fusion_gate, net.config.fusion_gate_center = w, g, c
        per_set = {n: {**recall(model.latents_from_features(f), sets[n][1], model.encode_text), "named": hits[n]}
                   for n, f in features.items()}
        label = "" if w is None else f"fusion {w:g}" + (f", gate {g:g} at {c:g}" if w and g else "")
        rows.append((label, per_set))
    net.config.fusion_weight, net.config.fusion_gate, net.config.fusion_gate_center = shipped
    return rows


@torch.no_grad()
def score_bridge(model: MammutModel, sets: dict, features: dict) -> dict:
    """The ImageNet bridge alone (mammut_search/eval/bridge.py) on the checkpoint's own classifier tokens and class
    embeddings: image = its top-10 classes' name embeddings (MiniLM), weighted; query = its MiniLM embedding; no
    training. Its caption: the most probable class's name."""
    from mammut_search.eval.bridge import ImageNetBridge
    from mammut_search.train.corpus.imagenet import imagenet_classes
    from mammut_search.model.minilm import MiniLMSentenceEncoder

    net = model.net
    bridge = ImageNetBridge(net.image_encoder.net, net.class_embeddings, MiniLMSentenceEncoder(),
                            top_k=net.config.semantic_top_k)
    names = [c.lemmas[0] for c in imagenet_classes()]
    per_set = {}
    for name, f in features.items():
        probabilities = net.image_encoder.class_logits(f[:, -1]).softmax(dim=-1)
        per_set[name] = recall(bridge.latents_from_features(probabilities), sets[name][1], bridge.encode_text)
        top1 = probabilities.argmax(dim=-1)
        per_set[name]["named"] = float(caption_hits([names[i] for i in top1], sets[name][1]).mean())
    return per_set


@torch.no_grad()
def rerank_recall(model: MammutModel, features: torch.Tensor, references: list[list[str]], *,
                  candidates: int = RERANK_CANDIDATES, weight: float = RERANK_WEIGHT, reference_images: int = 16,
                  ks=(1, 5, 10)) -> dict:
    """Text->image recall with the Searcher's re-ranking: the best `candidates` by vector similarity re-scored
    by similarity + weight * (log p(query | image) per token - its median over a few reference images)."""
    latents = model.latents_from_features(features)
    main = [r[0] for r in references]
    texts = list(dict.fromkeys(main))
    queries = model.encode_text(texts)
    similarity = queries @ latents.t()  # (t i)
    rng = np.random.default_rng(0)
    refs = torch.from_numpy(rng.choice(len(features), min(reference_images, len(features)), replace=False))
    hits = {k: 0 for k in ks}
    for t, text in enumerate(tqdm(texts, desc="re-ranking", leave=False)):
        order = similarity[t].argsort(descending=True)
        top = order[:candidates]
        pool = torch.cat([top, refs])
        scores = model.score_text_from_features(features[pool], [text] * len(pool)).double()
        lifts = scores[:len(top)] - scores[len(top):].median()
        combined = similarity[t][top].double() + weight * lifts
        reranked = torch.cat([top[combined.argsort(descending=True)], order[candidates:]])
        right = {i for i, m in enumerate(main) if m == text}
        rank = next(r for r, i in enumerate(reranked.tolist()) if i in right)
        for k in ks:
            hits[k] += rank < k
    return {f"R@{k}": hits[k] / len(texts) for k in ks}


def mean_score(domains: dict) -> float:
    return float(np.mean([(d["R@1"] + d["R@5"]) / 2 for d in domains.values()]))


def table(rows: list[tuple[str, dict]]) -> str:
    domains = list(rows[0][1])
    head = ["system"] + [f"{d} {k}" for d in domains for k in ("R@1", "R@5", "named")] + ["mean (R@1+R@5)/2"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in rows:
        cells = [label]
        for d in domains:
            named = r[d].get("named")
            cells += [f"{r[d]['R@1']:.3f}", f"{r[d]['R@5']:.3f}", "–" if named is None else f"{named:.0%}"]
        lines.append("| " + " | ".join(cells + [f"{mean_score(r):.3f}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(bundled_checkpoint_dir()))
    parser.add_argument("--previous", default="", help="the previous default checkpoint, for its row")
    parser.add_argument("--label", nargs="*", default=[], metavar="NAME=CHECKPOINT", help="more rows (levers)")
    parser.add_argument("--manifest", default="data/cache/corpus/manifest.parquet")
    parser.add_argument("--weights", nargs="*", type=float, default=[0.0, 0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--gates", nargs="*", type=float, default=[0.0, 10.0])
    parser.add_argument("--centers", nargs="*", type=float, default=[0.5], help="the query gate's centre")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rerank", action="store_true", help="also score the Searcher's re-ranking")
    parser.add_argument("--styles-apart", action="store_true", help="a column per held-out style, not their mean")
    parser.add_argument("--image-size", type=int, default=0, help="feed the checkpoint's encoder this input size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = validation_sets(args.manifest)
    print({k: len(v[0]) for k, v in sets.items()})
    rows = []
    model = load_model(args.checkpoint, device="cpu")
    if args.image_size:  # the grid is pooled to a fixed size, so another input size needs no other weights
        model.net.config.image_encoder.image_size = args.image_size
    features = encode_sets(model, sets)
    if model.net.config.semantic_dim:
        rows.append(("ImageNet bridge alone (no training)", score_bridge(model, sets, features)))
    rows += [(f"new default, {label}" if label else "new default", r)
             for label, r in score_model(model, sets, features, args.weights, args.gates, args.centers)]
    for item in args.label + ([f"previous default={args.previous}"] if args.previous else []):
        name, _, path = item.partition("=")
        other = load_model(path, device="cpu")
        for label, r in score_model(other, sets, encode_sets(other, sets), [other.config.fusion_weight],
                                    [other.config.fusion_gate], [other.config.fusion_gate_center]):
            rows.append((f"{name}, {label}" if label else name, r))
    if args.rerank:
        per_set = {n: {**rerank_recall(model, f, sets[n][1])} for n, f in features.items()}
        rows.append(("new default, re-ranked (top 50 by log p(query | image))", per_set))
    text = table([(label, by_domain(per_set, args.styles_apart)) for label, per_set in rows])
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_name(f"{OUT.stem}-{Path(args.checkpoint).name}-{args.image_size or 'native'}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
