"""`mammut corpus demo`: a small collection of validation-style (FxEmoji) images, with captions and attribution."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import pandas as pd

from mammut_search.errors import UserError
from mammut_search.train.corpus.sources import VALIDATION_STYLE

ATTRIBUTION = """# Demo collection: attribution

The images in `images/` are emoji from **Firefox OS Emoji (FxEmoji)** by Mozilla,
<https://github.com/mozilla/fxemoji>, licensed under the **Apache License 2.0**
(<https://mozilla.github.io/fxemoji/LICENSE.md>). They were taken from the npm package
`@iconify-json/fxemoji@1.2.2` (Iconify's packaging of the same icons), rendered from SVG to {size}×{size} PNG
on a white background by `mammut corpus demo`; nothing else was changed.

`captions.csv` gives each image's CLDR short name (Unicode CLDR data, as distributed in `openmoji@17.0.0`,
CC-BY-SA-4.0 for OpenMoji's data files; the names themselves come from Unicode CLDR, Unicode licence).

FxEmoji is the held-out validation style of the training corpus: no image of this style was trained on.
"""


def make_demo(cache_dir: Path | str, out_dir: Path | str, count: int = 300, size: int = 128) -> int:
    """Copy `count` FxEmoji images from the built corpus into out_dir/images with captions.csv; returns the count."""
    corpus_dir = Path(cache_dir) / "corpus"
    manifest_path = corpus_dir / "manifest.parquet"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: no corpus manifest; run `mammut corpus build` first")
    manifest = pd.read_parquet(manifest_path)
    rows = manifest[(manifest["style"] == VALIDATION_STYLE) & manifest["path"].str.startswith(f"images/{size}/")]
    if rows.empty:
        raise UserError(f"{manifest_path}: no {size} px {VALIDATION_STYLE} images; run `mammut corpus build "
                        f"--size {size} --sources {VALIDATION_STYLE}` first")
    # A fixed pseudo-random choice (by hash of the concept id), so the demo is the same on every machine.
    order = sorted(rows.itertuples(), key=lambda r: hashlib.sha256(r.concept_id.encode()).hexdigest())
    chosen = sorted(order[:count], key=lambda r: r.name)
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    with open(out_dir / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for r in chosen:
            file_name = f"{r.concept_id}.png"
            shutil.copyfile(corpus_dir / r.path, images_dir / file_name)
            writer.writerow([f"images/{file_name}", r.name])
    (out_dir / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(size=size), encoding="utf-8")
    return len(chosen)
