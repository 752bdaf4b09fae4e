"""Richer ImageNet class embeddings, measured and dropped: each class as the mean of MiniLM's "a photo of a
{lemma}." over its first four WordNet lemmas, plus half its nearest hypernym's bare name, against the one prompt
of its first lemma that the bundled checkpoint keeps.

    python benchmarks/class_embeddings.py [--checkpoint DIR]

The new class embeddings replace the checkpoint's everywhere they are read (the semantic token that the latent,
the attention pool and the decoder read, the query gate, and the images' semantic part of the retrieval vectors);
nothing is retrained. Prints, for each set of class embeddings, the ImageNet bridge alone and the checkpoint at
the fusion settings below, as markdown (the same sets and measure as photo_knowledge.py).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from photo_knowledge import by_domain, encode_sets, score_bridge, score_model, table, validation_sets
from mammut_search.bundled import bundled_checkpoint_dir
from mammut_search.eval.bridge import class_prompts
from mammut_search.inference import load_model
from mammut_search.model.minilm import MiniLMSentenceEncoder
from mammut_search.train.corpus.imagenet import imagenet_classes

LEMMAS = 4  # a class's first lemmas, averaged
UNSEEN = ("style:iconify-fxemoji", "objects", "photos")  # the sets the bundled checkpoint never trained on
HYPERNYM_WEIGHT = 0.5  # of its nearest hypernym's bare name, as first measured on the bridge at 160 px


def lemma_hypernym_embeddings(cache_dir: str) -> torch.Tensor:
    """(1000 384): unit norm of mean_lemmas(MiniLM("a photo of a {lemma}.")) + 0.5 MiniLM(hypernym)."""
    encoder = MiniLMSentenceEncoder()
    classes = imagenet_classes(cache_dir)
    lemmas = [c.lemmas[:LEMMAS] for c in classes]
    prompts = F.normalize(encoder.encode(class_prompts([name for names in lemmas for name in names]),
                                         progress=True).float(), dim=-1)
    means, start = [], 0
    for names in lemmas:
        means.append(prompts[start:start + len(names)].mean(dim=0))
        start += len(names)
    hypernyms = F.normalize(encoder.encode([(c.hypernyms or c.lemmas)[0] for c in classes], progress=False).float(),
                            dim=-1)
    return F.normalize(F.normalize(torch.stack(means), dim=-1) + HYPERNYM_WEIGHT * hypernyms, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(bundled_checkpoint_dir()))
    parser.add_argument("--manifest", default="data/cache/corpus/manifest.parquet")
    parser.add_argument("--cache-dir", default="data/cache",
                        help="where the corpus build keeps the ImageNet class list")
    parser.add_argument("--weights", nargs="*", type=float, default=[1.0, 1.25])
    parser.add_argument("--gates", nargs="*", type=float, default=[10.0, 20.0])
    parser.add_argument("--centers", nargs="*", type=float, default=[0.5, 0.6, 0.65])
    args = parser.parse_args()
    torch.set_num_threads(2)
    sets = {name: v for name, v in validation_sets(args.manifest).items() if name in UNSEEN}
    model = load_model(args.checkpoint, device="cpu")
    net = model.net
    features = encode_sets(model, sets)
    rows = []
    for label, embeddings in [("first lemma", net.class_embeddings.detach().clone()),
                              ("lemmas + hypernym", lemma_hypernym_embeddings(args.cache_dir))]:
        with torch.no_grad():
            net.class_embeddings.copy_(embeddings)
        rows.append((f"{label}: ImageNet bridge alone", score_bridge(model, sets, features)))
        rows += [(f"{label}: checkpoint, {setting}", per_set)
                 for setting, per_set in score_model(model, sets, features, args.weights, args.gates, args.centers)]
    print(table([(label, by_domain(per_set, styles_apart=True)) for label, per_set in rows]))


if __name__ == "__main__":
    main()
