"""Which "nothing matches" rule, chosen on tuning lists only: every rule fires when a query's statistics fall
below a quantile p of the same statistics of the calibration words on the same index (and the query's words are
in no name or caption). For each rule, p is the one (of 0.5, 0.525, ..., 0.975) with the widest margin to the
target on every tuning list, the margin of a list being min(absent fires - 15, 3 - present fires), counted per
30 concepts; rules are ranked by that worst margin over the tuning lists, then by its mean. Held-out figures
(odd positions of the lists that have halves) are printed beside, never used.

    python benchmarks/no_match_features.py --collection INDEX CONCEPTS --captions CSV \\
        --out benchmarks/out/features-NAME.npz
    python benchmarks/no_match_rules.py --halves demo benchmarks/out/features-demo.npz \\
        --halves google benchmarks/out/features-google.npz \\
        --tuning fx benchmarks/out/features-fx.npz --tuning twitter benchmarks/out/features-twitter.npz

--halves: even positions tune, odd positions are held out; --tuning: every position tunes. A rule named "/u" is
calibrated on the calibration words whose words are in no name or caption of the index only. --curve RULE prints
one rule's tuning fires at every quantile instead, with how many flagged present concepts had a right first image.
"""

from __future__ import annotations

import argparse
from typing import Callable

import numpy as np

QUANTILES = np.round(np.arange(0.5, 0.976, 0.025), 3)
EVEN, ODD, ALL = slice(0, None, 2), slice(1, None, 2), slice(None)
STATISTICS: dict[str, Callable[[dict, str], np.ndarray]] = {
    "s1": lambda f, kind: f[f"{kind}_sims"][:, 0],  # the best similarity
    "gap10": lambda f, kind: f[f"{kind}_sims"][:, 0] - f[f"{kind}_sims"][:, :10].mean(axis=1),
    "gap2": lambda f, kind: f[f"{kind}_sims"][:, 0] - f[f"{kind}_sims"][:, 1],
    "z50": lambda f, kind: ((f[f"{kind}_sims"][:, 0] - f[f"{kind}_sims"].mean(axis=1))
                            / f[f"{kind}_sims"].std(axis=1)),
    "lift1": lambda f, kind: f[f"{kind}_lifts"][:, 0],  # likelihood ratio of the first image
    "liftmax": lambda f, kind: f[f"{kind}_lifts"].max(axis=1),  # best of the first 5
    "s1+0.1lift1": lambda f, kind: f[f"{kind}_sims"][:, 0] + 0.1 * f[f"{kind}_lifts"][:, 0],  # re-ranking's weight
    "s1+0.1liftmax": lambda f, kind: f[f"{kind}_sims"][:, 0] + 0.1 * f[f"{kind}_lifts"].max(axis=1),
    **{name: (lambda f, kind, name=name: f[f"{kind}_{name}"])
       for name in ("csls", "hub", "imgpct", "logp", "capratio")},
}


def calibration(f: dict, name: str, unworded: bool) -> np.ndarray:
    """A statistic of the calibration words; `unworded`: of those whose words are in no name or caption only."""
    return STATISTICS[name](f, "calib")[~f["calib_worded"]] if unworded else STATISTICS[name](f, "calib")


def below(*names: str, unworded: bool = False) -> Callable:
    """Fires when every named statistic is below its own quantile p of the calibration words'."""
    def rule(f: dict, kind: str, p: float) -> np.ndarray:
        return np.all([STATISTICS[n](f, kind) < np.quantile(calibration(f, n, unworded), p) for n in names], axis=0)
    return rule


def mean_rank(*names: str) -> Callable:
    """Fires when the mean of the statistics' ranks among the calibration words' (0..1) is below p."""
    def rule(f: dict, kind: str, p: float) -> np.ndarray:
        ranks = [np.searchsorted(np.sort(STATISTICS[n](f, "calib")), STATISTICS[n](f, kind), side="right")
                 / len(f["calib_sims"]) for n in names]
        return np.mean(ranks, axis=0) < p
    return rule


RULES = {**{name: below(name) for name in STATISTICS},
         "s1 & gap10": below("s1", "gap10"), "s1 & lift1": below("s1", "lift1"),
         "s1 & liftmax": below("s1", "liftmax"), "s1 & csls": below("s1", "csls"),
         "s1 & capratio": below("s1", "capratio"), "s1 & gap10 & lift1": below("s1", "gap10", "lift1"),
         "mean rank(s1, lift1)": mean_rank("s1", "lift1"), "mean rank(s1, liftmax)": mean_rank("s1", "liftmax"),
         "mean rank(s1, gap10)": mean_rank("s1", "gap10"),
         "mean rank(s1, capratio)": mean_rank("s1", "capratio"), "s1 & hub": below("s1", "hub"),
         "s1 & imgpct": below("s1", "imgpct"), "s1 & logp": below("s1", "logp"), "hub & lift1": below("hub", "lift1"),
         "csls & lift1": below("csls", "lift1"), "mean rank(s1, hub)": mean_rank("s1", "hub"),
         # calibrated on the words found in no name or caption only
         **{f"{' & '.join(names)} /u": below(*names, unworded=True) for names in
            (("s1",), ("csls",), ("gap10",), ("s1", "gap10"), ("s1", "csls"), ("s1", "lift1"))}}


def fires(f: dict, rule: Callable, p: float, half: slice) -> tuple[int, int, int]:
    """(absent fires, present fires, concepts of each kind) on one half of a collection's lists."""
    counts = [int((rule(f, kind, p) & ~f[f"{kind}_worded"])[half].sum()) for kind in ("absent", "present")]
    return counts[0], counts[1], len(f["absent_worded"][half])


def margin(counts: tuple[int, int, int]) -> float:
    """How far one list's fires are inside the target, per 30 concepts (negative: outside)."""
    absent, present, n = counts
    return min(absent * 30 / n - 15, 3 - present * 30 / n)


def choose(rule: Callable, tuning: list[tuple[dict, slice]]) -> tuple[tuple[float, float], float]:
    """((worst margin, mean margin), p) of the rule's best p on the tuning lists."""
    def key(p: float) -> tuple[float, float]:
        margins = [margin(fires(f, rule, p, half)) for f, half in tuning]
        return min(margins), float(np.mean(margins))
    best = max(QUANTILES, key=key)
    return key(best), float(best)


def curve(name: str, collections: list[tuple[str, dict, bool]]) -> None:
    """One rule's tuning fires at every quantile: absent / present (of which over a right first image)."""
    rule = RULES[name]
    print(f"{name}: quantile | " + " | ".join(n for n, _, _ in collections) + "   (tuning lists)")
    for p in QUANTILES:
        cells = []
        for _, f, halves in collections:
            half = EVEN if halves else ALL
            present = (rule(f, "present", p) & ~f["present_worded"])[half]
            right = (present & f["present_right"][half]).sum()
            cells.append(f"{fires(f, rule, p, half)[0]} / {present.sum()} ({right})")
        print(f"{p:.3f} | " + " | ".join(cells))


def report(collections: list[tuple[str, dict, bool]]) -> None:
    tuning = [(f, EVEN if halves else ALL) for _, f, halves in collections]
    print("rule | p | worst / mean margin | tuning: " + ", ".join(n for n, _, _ in collections)
          + " | held out: " + ", ".join(n for n, _, halves in collections if halves) + "   (absent / present fires)")
    rows = []
    for name, rule in RULES.items():
        (worst, mean), p = choose(rule, tuning)
        tuned = [fires(f, rule, p, half) for f, half in tuning]
        held = [fires(f, rule, p, ODD) for _, f, halves in collections if halves]
        cells = [", ".join(f"{a} / {b}" for a, b, _ in group) for group in (tuned, held)]
        rows.append(((worst, mean), f"{name} | {p:.3f} | {worst:+.2f} / {mean:+.2f} | {cells[0]} | {cells[1]}"))
    for _, row in sorted(rows, key=lambda r: r[0], reverse=True):
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--halves", nargs=2, action="append", default=[], metavar=("NAME", "FEATURES"))
    parser.add_argument("--tuning", nargs=2, action="append", default=[], metavar=("NAME", "FEATURES"))
    parser.add_argument("--curve", choices=list(RULES))
    args = parser.parse_args()
    collections = ([(name, dict(np.load(path)), True) for name, path in args.halves]
                   + [(name, dict(np.load(path)), False) for name, path in args.tuning])
    curve(args.curve, collections) if args.curve else report(collections)


if __name__ == "__main__":
    main()
