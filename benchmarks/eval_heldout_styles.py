"""Unseen concepts in the training styles: a larger, less noisy read of how a checkpoint generalises to concepts
it never trained on than the validation style's 68 images.

For each training style, the gallery is that style's images of the held-out concepts (split
"heldout_concepts", never trained on) and the queries are those concepts' names; prints text->image R@1/R@5
averaged over the styles.

    python benchmarks/eval_heldout_styles.py CHECKPOINT [CHECKPOINT ...] [--manifest data/cache/corpus/manifest.parquet]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mammut_search.eval import metrics
from mammut_search.model.checkpoint import load_checkpoint
from mammut_search.inference import preprocess_images
from mammut_search.model.retrieval import image_retrieval_vectors
from mammut_search.train.data import open_image, read_manifest
from mammut_search.train.validation import text_latents


@torch.no_grad()
def heldout_recall(checkpoint: str, manifest: str, batch: int = 128) -> dict[str, float]:
    net, tokenizer, _ = load_checkpoint(checkpoint)
    net = net.float().eval()
    frame = read_manifest(manifest)
    rows = frame[frame["split"] == "heldout_concepts"].reset_index(drop=True)
    latents = torch.cat([
        image_retrieval_vectors(net, net.image_features(preprocess_images(
            [open_image(p) for p in rows["path"][s:s + batch]], net.config.image_encoder))).float()
        for s in range(0, len(rows), batch)])
    recalls = []
    for _, style in rows.groupby("style"):
        concepts = list(dict.fromkeys(style["concept_id"]))
        names = [str(style.loc[style["concept_id"] == c, "name"].iloc[0]) for c in concepts]
        targets = [set(np.flatnonzero(style["concept_id"].to_numpy() == c)) for c in concepts]
        recalls.append(metrics.recall_at_k(text_latents(net, tokenizer, names, "cpu"),
                                           latents[style.index.to_numpy()], targets, (1, 5)))
    return {k: float(np.mean([r[k] for r in recalls])) for k in ("R@1", "R@5")} | {"styles": len(recalls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--manifest", default="data/cache/corpus/manifest.parquet")
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        r = heldout_recall(checkpoint, args.manifest)
        print(f"{checkpoint}: held-out concepts in {r['styles']} training styles, "
              f"text->image R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f}", flush=True)


if __name__ == "__main__":
    main()
