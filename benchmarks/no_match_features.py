"""Per-query statistics for choosing the "nothing matches" rule (benchmarks/no_match_rules.py compares the rules).
For every concept of a collection's lists and every calibration word (mammut_search.relevance), on the index:

- sims, ids: the query's TOP best similarities and their image ids;
- lifts: the decoder's likelihood lift of its LIFTED best candidates, log p(query | image) per token minus its
  median over the index's reference images (the re-ranking lift: a likelihood ratio);
- csls: the best cross-domain similarity local scaling score, 2 s(q, i) - r(i) - r(q), where r(i) is image i's
  mean similarity to its K nearest calibration words and r(q) the query's mean similarity to its K nearest
  images (Conneau et al. 2018, https://arxiv.org/abs/1710.04087: it discounts images near every text, "hubs");
- hub: the best similarity over the image's own level, max_i s(q, i) - r(i);
- imgpct: the share of calibration words less similar to the query's first image than the query is;
- logp: log p(query | first image) per token;
- capratio: logp minus log p(that image's generated caption | first image), per token;
- worded: whether the query's words are in some file name, folder or caption (such a query never gets the notice);
- right: whether the first image's true name (--captions, as the demo's captions.csv) shares a content word with
  the query.

    python benchmarks/no_match_features.py --collection data/cache/demo.index benchmarks/no_match_concepts.json \\
        --captions mammut_search/bundled/demo/captions.csv --out benchmarks/out/features-demo.npz
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

TOP = 50  # similarities kept per query
LIFTED = 5  # candidates whose likelihood lift is kept
K = 10  # neighbourhood of the CSLS scores, the paper's


def likelihoods(searcher, texts: list[str], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lifts (t LIFTED), log p(text | first image) (t), log p(its caption | first image) (t))."""
    import torch

    from mammut_search.rerank import likelihood_lifts

    gen, model = searcher.live.current, searcher.model
    lifts = np.array([likelihood_lifts(model, gen.store.tokens, text, row[:LIFTED], gen.reference_ids,
                                       searcher.encoder.lock) for text, row in zip(texts, ids)])
    captions = gen.store.ok_items.set_index("id")["caption"]
    tokens = torch.from_numpy(gen.store.tokens.rows(ids[:, 0].astype(np.int64)))
    with torch.no_grad():
        query = model.score_text_from_tokens(tokens, texts).double().numpy()
        caption = model.score_text_from_tokens(tokens, [captions[int(i)] for i in ids[:, 0]]).double().numpy()
    return lifts, query, caption


def statistics(searcher, texts: list[str], words: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics of `texts` on the searcher's index; `words` (w l) are the calibration words' latents and
    `images` (n l) every indexed image's."""
    from mammut_search import relevance

    latents = np.ascontiguousarray(relevance.encode_texts(searcher.model, texts), np.float32)
    sims, ids = searcher.store.vectors.search(latents, TOP)
    started = time.perf_counter()
    lifts, logp, caption = likelihoods(searcher, texts, ids)
    print(f"  {len(texts)} queries' likelihoods in {time.perf_counter() - started:.1f} s")
    every, to_words = latents @ images.T, images @ words.T  # t n, n w
    image_level = np.sort(to_words, axis=1)[:, -K:].mean(axis=1)
    query_level = np.sort(every, axis=1)[:, -K:].mean(axis=1)
    csls = (2 * every - image_level[None, :] - query_level[:, None]).max(axis=1)
    first = every.argmax(axis=1)
    imgpct = (to_words[first] < every.max(axis=1)[:, None]).mean(axis=1)
    return {"sims": sims, "ids": ids, "lifts": lifts, "csls": csls, "hub": (every - image_level[None, :]).max(axis=1),
            "imgpct": imgpct, "logp": logp, "capratio": logp - caption}


def right_first(searcher, texts: list[str], ids: np.ndarray, captions: Path) -> np.ndarray:
    """Whether each text's first image is named by a content word of the text."""
    from mammut_search.eval.domains import content_words

    with open(captions, newline="", encoding="utf-8") as f:
        name_of = {Path(image).name: name for image, name in csv.reader(f)}
    paths = searcher.store.ok_items.set_index("id")["path"]
    return np.array([bool(content_words(name_of[Path(paths[int(i)]).name]) & content_words(text))
                     for text, i in zip(texts, ids[:, 0])])


def main() -> None:
    from mammut_search import relevance
    from mammut_search.ranking import keyword_hits
    from mammut_search.search import Searcher

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", nargs=2, required=True, metavar=("INDEX", "CONCEPTS"))
    parser.add_argument("--captions", type=Path, required=True, help="CSV of image paths and their true names")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    index, concepts = args.collection[0], json.loads(Path(args.collection[1]).read_text())
    out = {}
    with Searcher.open(index, device="cpu") as searcher:
        calibration = relevance.calibration_words(searcher.model.tokenizer)
        words = relevance.encode_texts(searcher.model, calibration)
        images = searcher.store.vectors.reconstruct(searcher.store.vectors.ids())
        for kind, texts in (("absent", concepts["absent"]), ("present", concepts["present"]),
                            ("calib", calibration)):
            out.update({f"{kind}_{k}": v for k, v in statistics(searcher, texts, words, images).items()})
            out[f"{kind}_right"] = right_first(searcher, texts, out[f"{kind}_ids"], args.captions)
            out[f"{kind}_worded"] = np.array([bool(keyword_hits(searcher.live.current, t, 1)) for t in texts])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **out)
    print(f"{args.out}: {', '.join(f'{k} {v.shape}' for k, v in out.items())}")


if __name__ == "__main__":
    main()
