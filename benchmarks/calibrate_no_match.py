"""How the "nothing matches" notice does on an index, with the cutoff calibrated on that index.

    mammut index build mammut_search/bundled/demo/images --out data/cache/demo.index
    python benchmarks/calibrate_no_match.py --index data/cache/demo.index                    # the demo's lists
    python benchmarks/calibrate_no_match.py --index data/cache/demo.index --tune              # choose QUANTILE
    python benchmarks/calibrate_no_match.py --index G.index --concepts benchmarks/no_match_concepts_google.json --half all

Concept lists: `present` names things in the collection, `absent` things not in it. The demo's lists
(no_match_concepts.json) are split by position: even positions tune (`--tune` shows the fires at each quantile
of the calibration words' matches there), odd positions are held out. A second collection's lists
(benchmarks/make_second_collection.py) are all held out (`--half all`). Without --tune it counts how often the
notice fires as the product decides it (the index's stored cutoff, hybrid search on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
QUANTILES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98)


def calibration_matches(searcher) -> np.ndarray:
    """The matches of the calibration words on the searcher's index (what the cutoff is a quantile of)."""
    from mammut_search import relevance
    from mammut_search.ranking import nearest

    gen = searcher.live.current
    words = relevance.calibration_words(searcher.model.tokenizer)
    latents = relevance.encode_texts(searcher.model, words)
    return np.array([searcher.relevance.match(gen.store.vectors, *nearest(gen, row[None], relevance.CANDIDATES))
                     for row in latents])


def main() -> None:
    from mammut_search.search import Searcher

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--concepts", type=Path, default=HERE / "no_match_concepts.json")
    parser.add_argument("--half", choices=["tune", "held-out", "all"], default="held-out")
    parser.add_argument("--tune", action="store_true", help="fires at each quantile, on the tuning halves")
    args = parser.parse_args()
    concepts = json.loads(args.concepts.read_text())
    half = {"tune": slice(0, None, 2), "held-out": slice(1, None, 2), "all": slice(None)}["tune" if args.tune else args.half]
    present, absent = concepts["present"][half], concepts["absent"][half]
    with Searcher.open(args.index, device="cpu") as searcher:
        answers = {q: searcher.search_text(q, 1) for q in present + absent}
        if args.tune:
            from mammut_search.ranking import keyword_hits

            worded = {q for q in answers if keyword_hits(searcher.live.current, q, 1)}
            matches = calibration_matches(searcher)
            for quantile in QUANTILES:
                cut = float(np.quantile(matches, quantile))
                fires = {name: sum(answers[q].match < cut and q not in worded for q in group)
                         for name, group in (("absent", absent), ("present", present))}
                print(f"quantile {quantile:.2f} (cutoff {cut:.4f}): fires for {fires['absent']}/{len(absent)} absent, "
                      f"{fires['present']}/{len(present)} present")
            return
        cutoff = searcher.store.manifest.relevance.get("cutoff")
    print(f"{args.index}: cutoff {cutoff} (stored in the manifest); {args.half} lists of {args.concepts.name}")
    for name, group in (("absent", absent), ("present", present)):
        fired = [q for q in group if answers[q].nothing_matches]
        print(f"notice fires for {len(fired)}/{len(group)} {name}" + (f": {', '.join(fired)}" if name == "present" else ""))


if __name__ == "__main__":
    main()
