"""Calibrate and test the "nothing matches" notice on an index of the demo collection.

    mammut index build mammut_search/bundled/demo/images --out /tmp/demo.index
    python benchmarks/calibrate_no_match.py --index /tmp/demo.index

60 concepts named in the demo's captions (present) and 60 emoji concepts that are not in it (absent; both in
no_match_concepts.json), each split in two halves by position: the margin is set on the calibration halves (the second-lowest score of a
present concept there, so at most 1 of its 30 fires), then the notice is counted on the held-out halves. For the
present concepts it also says whether the first result is right (its caption in --captions shares a content word
with the query): a notice over a wrong first result is what the notice is for.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

CONCEPTS = json.loads((Path(__file__).resolve().parent / "no_match_concepts.json").read_text())
PRESENT, ABSENT = CONCEPTS["present"], CONCEPTS["absent"]


def main() -> None:
    from mammut_search.bundled import demo_dir
    from mammut_search.eval.domains import content_words
    from mammut_search.search import NO_MATCH_MARGIN, Searcher

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--captions", default=str(demo_dir() / "captions.csv"), help="the demo's image,caption table")
    args = parser.parse_args()
    with open(args.captions, newline="") as f:
        by_name = {Path(image).name: caption for image, caption in csv.reader(f)}  # image file name -> caption
    score, right = {}, {}
    with Searcher.open(args.index, device="cpu") as searcher:
        for q in PRESENT + ABSENT:
            results = searcher.search_text(q, 1, rerank=False)
            score[q] = results.match
            first = by_name.get(Path(results[0].path).name, "") if len(results) else ""
            right[q] = bool(content_words(first) & content_words(q))
    present, absent = np.array([score[q] for q in PRESENT]), np.array([score[q] for q in ABSENT])
    margin = float(np.sort(present[0::2])[1])
    print(f"calibrated margin {margin:.4f} (in use: {NO_MATCH_MARGIN})")
    for name, cut in (("calibrated", margin), ("in use", NO_MATCH_MARGIN)):
        for half, label in ((slice(0, None, 2), "calibration"), (slice(1, None, 2), "held-out")):
            print(f"{name:10s} {label:11s}: fires for {int((absent[half] < cut).sum())}/30 absent, "
                  f"{int((present[half] < cut).sum())}/30 present")
    print("absent, not flagged (in use):", ", ".join(q for q in ABSENT if score[q] >= NO_MATCH_MARGIN))
    flagged = [q for q in PRESENT if score[q] < NO_MATCH_MARGIN]
    print("present, flagged (in use):", ", ".join(f"{q} (first result {'right' if right[q] else 'wrong'})"
                                                  for q in flagged))
    print(f"present concepts whose first result is right: {sum(right[q] for q in PRESENT)}/60, of them flagged: "
          f"{sum(right[q] for q in flagged)}")


if __name__ == "__main__":
    main()
