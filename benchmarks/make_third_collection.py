"""Collections for tuning the "nothing matches" rule only, with concept lists written for them: 80 names of
emoji in the collection (present) and 80 names of emoji not in it (absent: sharing no content word with any name
in it). No concept shares a content word with the held-out halves of the demo's or the second collection's
lists, so tuning on them tells nothing about those. Every position tunes; nothing of them is held out.

- fxemoji: 300 FxEmoji (the demo's style, which no checkpoint trains on) that are not in the demo;
- twitter: 300 Twemoji 64 px PNGs (emoji-datasource-twitter@16.0.0, a trained-on style, like the second
  collection's Google emoji).

    mammut corpus build --sources iconify-fxemoji --size 128 --cache-dir CACHE
    python benchmarks/make_third_collection.py --corpus CACHE --out data/cache/fx-collection
    python benchmarks/make_third_collection.py --corpus CACHE --twitter TWITTER --out data/cache/twitter-collection
    mammut index build data/cache/fx-collection/images --out data/cache/fx.index

CACHE/corpus/manifest.parquet gives the rendered FxEmoji and their CLDR names; CACHE/sources/emoji-datasource@16.0.0
the names of every emoji (the absent lists); TWITTER is the unpacked emoji-datasource-twitter@16.0.0 (holding
package/img/twitter/64). Files are named by code point, as in the demo; captions.csv gives each image's true name.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SIZE, LISTED, SEED = 300, 80, 0
HERE = Path(__file__).resolve().parent
HELD_OUT = ("no_match_concepts.json", "no_match_concepts_google.json")


def held_out_words() -> set[str]:
    """The content words of the odd (held-out) positions of the other collections' lists."""
    from mammut_search.eval.domains import content_words

    words: set[str] = set()
    for name in HELD_OUT:
        lists = json.loads((HERE / name).read_text())
        for kind in ("present", "absent"):
            words |= set().union(*(content_words(q) for q in lists[kind][1::2]))
    return words


def fxemoji_rows(corpus: Path) -> list:
    """The rendered FxEmoji not in the demo, in a fixed pseudo-random order."""
    import pandas as pd

    from mammut_search.bundled import demo_dir
    from mammut_search.train.corpus.sources import VALIDATION_STYLE

    demo = {p.stem for p in (demo_dir() / "images").iterdir()}
    rows = pd.read_parquet(corpus / "corpus" / "manifest.parquet")
    rows = rows[(rows["style"] == VALIDATION_STYLE) & ~rows["concept_id"].isin(demo)].sort_values("concept_id")
    rows = list(rows.itertuples())
    random.Random(SEED).shuffle(rows)
    return rows


def twitter_rows(emoji: list[dict], twitter: Path) -> list:
    """Twemoji (no flags or skin-tone components), in a fixed pseudo-random order, as (name, file, path)."""
    rows = [(e["name"], e["image"], twitter / "package/img/twitter/64" / e["image"]) for e in emoji
            if e.get("has_img_twitter") and e.get("name") and e["category"] not in ("Flags", "Component")]
    rows = sorted(r for r in rows if r[2].exists())
    random.Random(SEED).shuffle(rows)
    return rows


def main() -> None:
    from make_second_collection import write_collection
    from mammut_search.eval.domains import content_words

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="the cache folder of `mammut corpus build`")
    parser.add_argument("--twitter", type=Path, help="the unpacked emoji-datasource-twitter (default: FxEmoji)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    banned = held_out_words()
    emoji = json.loads((args.corpus / "sources" / "emoji-datasource@16.0.0" / "package" / "emoji.json").read_text())
    chosen = (twitter_rows(emoji, args.twitter) if args.twitter else
              [(r.name, f"{r.concept_id}.png", args.corpus / "corpus" / r.path) for r in fxemoji_rows(args.corpus)])
    chosen = chosen[:SIZE]
    inside = set().union(*(content_words(name.lower()) for name, _, _ in chosen))
    present = [name.lower() for name, _, _ in chosen if content_words(name.lower())
               and not content_words(name.lower()) & banned][:LISTED]
    names = sorted({e["name"].lower() for e in emoji if e.get("name") and e["category"] not in ("Flags", "Component")})
    random.Random(SEED).shuffle(names)
    absent = [n for n in names if content_words(n) and not content_words(n) & (inside | banned)][:LISTED]
    about = ("Names of emoji in this tuning collection (present) and of emoji not in it (absent), for tuning the "
             "'nothing matches' rule: every position tunes.")
    write_collection(args.out, [(path, file_name, name.lower()) for name, file_name, path in chosen], about,
                     present, absent)


if __name__ == "__main__":
    main()
