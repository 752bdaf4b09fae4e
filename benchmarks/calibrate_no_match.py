"""How the "nothing matches" notice does on indexes, each with the cutoff calibrated on itself.

    mammut index build mammut_search/bundled/demo/images --out data/cache/demo.index
    python benchmarks/make_second_collection.py --packages DIR --out data/cache/google-collection
    mammut index build data/cache/google-collection/images --out data/cache/google.index
    python benchmarks/calibrate_no_match.py --tune \\
        --collection data/cache/demo.index benchmarks/no_match_concepts.json \\
        --collection data/cache/google.index benchmarks/no_match_concepts_google.json \\
        --tuning data/cache/fx.index data/cache/fx-collection/concepts.json \\
        --tuning data/cache/twitter.index data/cache/twitter-collection/concepts.json    # choose QUANTILE
    python benchmarks/calibrate_no_match.py --collection ... --collection ...               # held-out halves

Concept lists: `present` names things in the collection, `absent` things not in it. Even positions tune (every
position of a --tuning collection, benchmarks/make_third_collection.py): `--tune` shows the fires at each quantile
of the calibration words' matches on the tuning lists, per collection and their mean per 30 concepts of a list
(QUANTILE: the widest worst margin to the target over the lists, benchmarks/RESULTS.md). Odd positions are held out:
without --tune it counts how often the notice fires as the product decides it (the index's stored cutoff, hybrid
search on, so a query whose words are in some file name, folder or caption never gets the notice).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

QUANTILES = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
HALVES = {"tune": slice(0, None, 2), "held-out": slice(1, None, 2), "all": slice(None)}


def calibration_matches(searcher) -> np.ndarray:
    """The matches of the calibration words on the searcher's index (what the cutoff is a quantile of)."""
    from mammut_search import relevance

    latents = relevance.encode_texts(searcher.model, relevance.calibration_words(searcher.model.tokenizer))
    scores, _ = searcher.store.vectors.search(np.ascontiguousarray(latents, np.float32), 1)
    return scores[:, 0]


def tuning_fires(index: str, concepts: dict, half: slice) -> np.ndarray:
    """(absent fires, present fires, worded absent, worded present) at each of QUANTILES, on the `half` of
    each list that tunes."""
    from mammut_search.ranking import keyword_hits
    from mammut_search.search import Searcher

    with Searcher.open(index, device="cpu") as searcher:
        groups = [concepts[name][half] for name in ("absent", "present")]
        answers = {q: searcher.search_text(q, 1, rerank=False) for group in groups for q in group}
        worded = {q for q in answers if keyword_hits(searcher.live.current, q, 1)}
        cuts = np.quantile(calibration_matches(searcher), QUANTILES)
    fires = [[sum(answers[q].match < cut and q not in worded for q in group) for group in groups] for cut in cuts]
    return np.array([row + [len(worded & set(g)) for g in groups] for row in fires])


def tune(collections: list[tuple[str, Path, slice]]) -> None:
    """Fires at each quantile on every collection's tuning lists, their mean per 30 concepts of a list, and the worst
    margin to the target over the lists."""
    tables, per_30 = [], []
    for index, concepts, half in collections:
        lists = json.loads(concepts.read_text())
        tables.append(tuning_fires(index, lists, half))
        sizes = [len(lists[name][half]) for name in ("absent", "present")]
        per_30.append(tables[-1][:, :2] * 30 / np.array(sizes))
        print(f"{index} ({concepts.name}, {sizes[0]} absent and {sizes[1]} present tune): words in names or "
              f"captions for {tables[-1][0, 2]} absent, {tables[-1][0, 3]} present")
    mean = np.mean(per_30, axis=0)
    # a list's margin to the target (>= 15 absent, <= 3 present fires of 30); the worst over the lists decides
    worst = np.min([np.minimum(t[:, 0] - 15, 3 - t[:, 1]) for t in per_30], axis=0)
    print("quantile | " + " | ".join(Path(i).name for i, _, _ in collections)
          + " | mean per 30   (absent / present fires) | worst margin")
    for row, quantile in enumerate(QUANTILES):
        cells = [f"{t[row, 0]} / {t[row, 1]}" for t in tables] + [f"{mean[row, 0]:.1f} / {mean[row, 1]:.1f}",
                                                                  f"{worst[row]:+.1f}"]
        print(f"{quantile:.2f} | " + " | ".join(cells))
    print(f"QUANTILE: {QUANTILES[int(np.argmax(worst))]} (the widest worst margin)")


def held_out(index: str, concepts: Path, half: str) -> None:
    from mammut_search.search import Searcher

    lists = json.loads(concepts.read_text())
    with Searcher.open(index, device="cpu") as searcher:
        print(f"{index}: cutoff {searcher.store.manifest.relevance.get('cutoff')} (stored in the manifest); "
              f"{half} lists of {concepts.name}")
        for name in ("absent", "present"):
            group = lists[name][HALVES[half]]
            fired = [q for q in group if searcher.search_text(q, 1, rerank=False).nothing_matches]
            print(f"  notice fires for {len(fired)}/{len(group)} {name}: {', '.join(fired)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", nargs=2, action="append", required=True, metavar=("INDEX", "CONCEPTS"),
                        help="an index and its concept lists (JSON with `present` and `absent`); repeatable")
    parser.add_argument("--tuning", nargs=2, action="append", default=[], metavar=("INDEX", "CONCEPTS"),
                        help="with --tune: an index and lists of which every position tunes; repeatable")
    parser.add_argument("--half", choices=list(HALVES), default="held-out")
    parser.add_argument("--tune", action="store_true", help="fires at each quantile, on the tuning halves")
    args = parser.parse_args()
    collections = [(index, Path(concepts)) for index, concepts in args.collection]
    if args.tune:
        tune([(i, c, HALVES["tune"]) for i, c in collections]
             + [(i, Path(c), HALVES["all"]) for i, c in args.tuning])
        return
    for index, concepts in collections:
        held_out(index, concepts, args.half)


if __name__ == "__main__":
    main()
