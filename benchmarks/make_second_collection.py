"""A second collection for validating the "nothing matches" notice: 300 Google-style emoji (64 px PNGs of
`emoji-datasource-google@16.0.0`, names from `emoji-datasource@16.0.0`'s emoji.json; fetch both with
`npm pack` and untar them into DIR), with concept lists: 60 names of emoji in it and 60 of emoji not in it
(sharing no content word with any name in it, nor with the demo's tuning lists); even positions tune, odd
positions (the first 30 of each kind drawn) are held out.

    python benchmarks/make_second_collection.py --packages DIR --out data/cache/google-collection

Its concepts.json is benchmarks/no_match_concepts_google.json. Files are named by code point, as in the demo,
so that the keyword index cannot give the answers away; captions.csv gives each image's true name.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
from pathlib import Path

SIZE, LISTED, SEED = 300, 30, 0  # LISTED held-out concepts of each kind, and as many more to tune on
HERE = Path(__file__).resolve().parent


def interleave(tuning: list[str], held_out: list[str]) -> list[str]:
    """Tuning concepts at even positions, held-out ones at odd positions (as in no_match_concepts.json)."""
    return [name for pair in zip(tuning, held_out) for name in pair]


def write_collection(out: Path, files: list[tuple[Path, str, str]], about: str, present: list[str],
                     absent: list[str]) -> None:
    """Each (source image, file name, true name) copied into OUT/images; OUT/captions.csv with each image's true
    name, as the demo's captions.csv (for telling right results); OUT/concepts.json with the concept lists."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for source, file_name, _ in files:
        shutil.copy(source, images / file_name)
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "caption")] + [(f"images/{file}", name) for _, file, name in files])
    (out / "concepts.json").write_text(json.dumps({"about": about, "present": present, "absent": absent},
                                                  indent=1) + "\n")
    print(f"{len(files)} images in {images}; {len(present)} present and {len(absent)} absent concepts")


def main() -> None:
    from mammut_search.eval.domains import content_words

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=Path, required=True, help="folder holding emoji.json and package/img")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    demo = json.loads((HERE / "no_match_concepts.json").read_text())
    tuned = set().union(*(content_words(q) for q in demo["present"][0::2] + demo["absent"][0::2]))
    entries = [e for e in json.loads((args.packages / "emoji.json").read_text())
               if e.get("has_img_google") and e["category"] not in ("Flags", "Component") and e.get("name")]
    entries = [e for e in entries if (args.packages / "package/img/google/64" / e["image"]).exists()
               and content_words(e["name"].lower()) and not content_words(e["name"].lower()) & tuned]
    rng = random.Random(SEED)
    rng.shuffle(entries)
    chosen, rest = entries[:SIZE], entries[SIZE:]
    inside = set().union(*(content_words(e["name"].lower()) for e in chosen))
    present = [e["name"].lower() for e in chosen[:2 * LISTED]]
    absent = [e["name"].lower() for e in rest if not content_words(e["name"].lower()) & inside][:2 * LISTED]
    present, absent = (interleave(names[LISTED:], names[:LISTED]) for names in (present, absent))
    about = ("Names of Google emoji in the second collection (present) and not in it (absent), for the 'nothing "
             "matches' notice: even positions tune its quantile, odd positions test it.")
    files = [(args.packages / "package/img/google/64" / e["image"], e["image"], e["name"].lower()) for e in chosen]
    write_collection(args.out, files, about, present, absent)


if __name__ == "__main__":
    main()
