"""`mammut corpus build`: fetch every allowed source, render it, and write the manifest and its summary."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from mammut_search.errors import UserError
from mammut_search.train.corpus import collect, photos
from mammut_search.train.corpus.concepts import load_concepts
from mammut_search.train.corpus.fetch import fetch
from mammut_search.train.corpus.imagenet import imagenet_classes
from mammut_search.train.corpus.openclipart import parse_clipart
from mammut_search.train.corpus.render import render_job
from mammut_search.train.corpus.sources import (
    EMOJI_DATA, GCOMPRIS, ICONIFY_SETS, OPENMOJI, SKIMAGE, SKLEARN, SOURCES, check_allowed)
from mammut_search.train.corpus.splits import (
    HELDOUT_FRACTION, OBJECTS_FRACTION, VAL_PHOTOS, heldout_concepts, heldout_families)

MANIFEST_COLUMNS = ["path", "concept_id", "name", "captions", "style", "split", "source", "licence"]
OPENMOJI_MEMBERS = ("package/data/openmoji.json", "package/color/svg/", "package/black/svg/")
Fetcher = Callable[..., Path]  # fetch(package, cache_dir, members=()) -> unpacked folder


def _collectors(fetcher: Fetcher, cache_dir: Path) -> dict[str, Callable[[collect.Context], list[collect.Item]]]:
    """One function per source: fetch its package(s), then list its items."""

    def pkg(source: str, members: tuple[str, ...] = ()) -> Path:
        return fetcher(SOURCES[source].packages[0], cache_dir, members)

    out = {
        "google": lambda ctx: collect.vendor_png_items(
            ctx, pkg("google", ("package/img/google/64/",)), "google", SOURCES["google"].licence),
        "twitter": lambda ctx: collect.vendor_png_items(
            ctx, pkg("twitter", ("package/img/twitter/64/",)), "twitter", SOURCES["twitter"].licence),
        "openmoji": lambda ctx: collect.openmoji_items(ctx, pkg("openmoji", OPENMOJI_MEMBERS)),
        "noto-font": lambda ctx: collect.noto_font_items(ctx, pkg("noto-font")),
        "openclipart": lambda ctx: collect.openclipart_items(ctx, pkg("openclipart")),
    }
    for set_name, version in ICONIFY_SETS.items():
        name = f"iconify-{set_name}"
        out[name] = (lambda n, s, v: lambda ctx: collect.iconify_items(ctx, pkg(n), s, v))(name, set_name, version)
    return out


def build_corpus(
    cache_dir: Path | str = "data/cache",
    sources: list[str] | None = None,
    size: int = 128,
    workers: int | None = None,
    fetcher: Fetcher = fetch,
    heldout_fraction: float = HELDOUT_FRACTION,
    objects_fraction: float = OBJECTS_FRACTION,
    validation: bool = True,
) -> dict:
    """Fetch, render and index the corpus under cache_dir/corpus; returns the summary written beside it.

    With `validation`, the validation photos (split val_photos) are added too; see `build_validation_sets`.
    The ImageNet class names (cache_dir/imagenet/classes.json) are fetched too; see `imagenet.py`.
    """
    start = time.time()
    cache_dir = Path(cache_dir)
    sources = list(sources or SOURCES)
    for name in sources:
        check_allowed(name)
    if size < 16 or size > 1024:
        raise UserError(f"--size {size}: choose a size between 16 and 1024 px")
    corpus_dir = cache_dir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)

    # The concept list and its CLDR names are needed by every emoji source.
    emoji_json = fetcher(EMOJI_DATA, cache_dir, ("package/emoji.json",)) / "package" / "emoji.json"
    openmoji_root = fetcher(OPENMOJI, cache_dir, OPENMOJI_MEMBERS)
    concepts = load_concepts(emoji_json, openmoji_root / "package" / "data" / "openmoji.json")
    heldout = heldout_concepts(concepts, heldout_fraction)
    ctx = collect.Context(concepts, heldout, heldout_families(concepts, heldout_fraction), corpus_dir, size,
                          objects_fraction)

    items: list[collect.Item] = []
    failed: dict[str, str] = {}
    collectors = _collectors(fetcher, cache_dir)
    for name in sources:
        try:
            found = collectors[name](ctx)
            print(f"{name}: {len(found)} images to render", file=sys.stderr)
            items += found
        except Exception as e:  # one source failing is reported; the others go on
            failed[name] = f"{type(e).__name__}: {e}"
            print(f"warning: source {name} skipped: {failed[name]}", file=sys.stderr)

    errors = render_all(items, size, workers)
    rows = [it.row for it in items if it.job.out_path not in errors]
    if validation:
        photo_rows, photo_failed = validation_photos(cache_dir, fetcher)
        rows += photo_rows
        failed.update(photo_failed)
    failed.update(fetch_imagenet_classes(cache_dir, fetcher))
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    write_parquet(manifest, corpus_dir / "manifest.parquet")
    summary = summarise(manifest, size, failed, errors, len(concepts), len(heldout), time.time() - start)
    _write_text(corpus_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def validation_photos(cache_dir: Path, fetcher: Fetcher = fetch) -> tuple[list[dict], dict[str, str]]:
    """Fetch the photo packages, write their photos under corpus/images/photos; (manifest rows, failures).

    A package that cannot be fetched or read is reported and skipped; an unreadable photo is skipped."""
    cache_dir = Path(cache_dir)
    corpus_dir = cache_dir / "corpus"
    readers = {
        SKIMAGE.name: lambda: photos.skimage_photos(fetcher(SKIMAGE, cache_dir, ("skimage/data/",)), SKIMAGE.version),
        SKLEARN.name: lambda: photos.sklearn_photos(
            fetcher(SKLEARN, cache_dir, ("sklearn/datasets/images/",)), SKLEARN.version),
        GCOMPRIS.name: lambda: photos.gcompris_photos(fetcher(GCOMPRIS, cache_dir)),
    }
    rows: list[dict] = []
    failed: dict[str, str] = {}
    for name, read in readers.items():
        try:
            found = read()
        except Exception as e:  # one package failing is reported; the others go on
            failed[f"photos:{name}"] = f"{type(e).__name__}: {e}"
            print(f"warning: validation photos from {name} skipped: {failed[f'photos:{name}']}", file=sys.stderr)
            continue
        kept = 0
        for photo in found:
            row = photos.photo_row(photo)
            try:
                out = corpus_dir / row["path"]
                if not out.exists():
                    photos.save_photo(photo.data, out)
            except Exception as e:
                print(f"warning: {name}: {photo.key}: cannot read the photo ({e}); skipped", file=sys.stderr)
                continue
            rows.append(row)
            kept += 1
        print(f"{name}: {kept} validation photos", file=sys.stderr)
    return rows, failed


def fetch_imagenet_classes(cache_dir: Path, fetcher: Fetcher = fetch) -> dict[str, str]:
    """Write cache_dir/imagenet/classes.json; returns {"imagenet": reason} when it cannot be built, else {}."""
    try:
        classes = imagenet_classes(cache_dir, fetcher)
    except Exception as e:  # reported; the corpus itself is still usable
        print(f"warning: ImageNet classes not built: {type(e).__name__}: {e}", file=sys.stderr)
        return {"imagenet": f"{type(e).__name__}: {e}"}
    print(f"imagenet: {len(classes)} classes", file=sys.stderr)
    return {}


def resplit_objects(manifest: pd.DataFrame, clipart_root: Path, objects_fraction: float = OBJECTS_FRACTION) -> pd.DataFrame:
    """The manifest with every OpenClipart row's split and captions recomputed from its SVG (no re-rendering)."""
    svg_root = Path(clipart_root) / "usr" / "share" / "openclipart" / "svg"
    manifest = manifest.copy()
    for i in np.flatnonzero((manifest["style"] == "openclipart").to_numpy()):
        rel_id = str(manifest.at[i, "concept_id"]).removeprefix("openclipart/")
        path = svg_root / f"{rel_id}.svg"
        info = parse_clipart(path, svg_root) if path.is_file() else None
        if info is None:
            print(f"warning: {path}: missing or unreadable; its row keeps split {manifest.at[i, 'split']}",
                  file=sys.stderr)
            continue
        decided = collect.clipart_split(info, objects_fraction)
        manifest.at[i, "split"] = decided["split"]
        manifest.at[i, "captions"] = decided["captions"]
    return manifest


def build_validation_sets(cache_dir: Path | str = "data/cache", fetcher: Fetcher = fetch,
                          objects_fraction: float = OBJECTS_FRACTION) -> dict:
    """Add the validation sets to an existing corpus without re-rendering it: re-split OpenClipart into train
    and val_objects, and replace the val_photos rows. Writes the manifest and summary; returns the summary."""
    cache_dir = Path(cache_dir)
    corpus_dir = cache_dir / "corpus"
    path = corpus_dir / "manifest.parquet"
    if path.is_file():
        manifest = pd.read_parquet(path)
    else:
        manifest = pd.DataFrame(columns=MANIFEST_COLUMNS)
        corpus_dir.mkdir(parents=True, exist_ok=True)
    manifest = manifest[manifest["split"] != VAL_PHOTOS].reset_index(drop=True)
    failed: dict[str, str] = {}
    if (manifest["style"] == "openclipart").any():
        try:
            manifest = resplit_objects(manifest, fetcher(SOURCES["openclipart"].packages[0], cache_dir),
                                       objects_fraction)
        except Exception as e:
            failed["openclipart"] = f"{type(e).__name__}: {e}"
            print(f"warning: OpenClipart not re-split: {failed['openclipart']}", file=sys.stderr)
    photo_rows, photo_failed = validation_photos(cache_dir, fetcher)
    failed.update(photo_failed)
    manifest = pd.concat([manifest, pd.DataFrame(photo_rows, columns=MANIFEST_COLUMNS)], ignore_index=True)
    write_parquet(manifest, path)
    summary_path = corpus_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    counts = summarise(manifest, summary.get("size", 0), {}, {}, 0, 0, 0.0)
    summary.update({k: counts[k] for k in ("images", "per_split", "per_style")})
    summary["validation_failed_sources"] = failed
    _write_text(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def render_all(items: list[collect.Item], size: int, workers: int | None) -> dict[str, str]:
    """Render every item in a process pool; returns {out_path: reason} for the images that failed."""
    errors: dict[str, str] = {}
    jobs = [it.job for it in items]
    workers = workers or max(1, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="rendering", unit="img")
    if workers == 1:
        results = (render_job(j, size) for j in jobs)
        for path, err in results:
            if err:
                errors[path] = err
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for path, err in pool.map(render_job, jobs, [size] * len(jobs), chunksize=32):
                if err:
                    errors[path] = err
                bar.update()
    bar.close()
    return errors


def summarise(manifest: pd.DataFrame, size: int, failed: dict[str, str], errors: dict[str, str],
              n_concepts: int, n_heldout: int, seconds: float) -> dict:
    """Counts per style and split, failures, and how long it took."""
    per_style = {
        style: {split: int(n) for split, n in group["split"].value_counts().sort_index().items()}
        for style, group in manifest.groupby("style")
    }
    return {
        "size": size,
        "images": int(len(manifest)),
        "per_split": {k: int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "per_style": per_style,
        "emoji_concepts": n_concepts,
        "heldout_concepts": n_heldout,
        "failed_sources": failed,
        "render_failures": len(errors),
        "render_failure_reasons": dict(Counter(e.split(":")[0] for e in errors.values()).most_common()),
        "seconds": round(seconds, 1),
    }


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a temp file renamed over the old manifest."""
    tmp = path.with_suffix(".tmp.parquet")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
