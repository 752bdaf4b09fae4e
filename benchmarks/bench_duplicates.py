"""Near-duplicates: where to put the similarity threshold, and what listing the groups costs.

    python benchmarks/bench_duplicates.py [--index data/cache/demo.index] [--images 60] [--items 100000]

Edits of indexed images (resized to half, JPEG at quality 60, 6 % cropped off each side, 15 % brighter, a 4-frame
"burst" shifted by 3 px) are encoded by the index's model and compared with their originals' stored latents;
distinct images are each indexed image and its nearest other one. A threshold should take nearly every edit and
almost no distinct pair. Then `duplicate_groups` (FAISS range search) timed on --items random unit vectors with
planted near-copies, exact and as it runs at that size (approximate beyond EXACT_UP_TO).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THRESHOLDS = (0.85, 0.9, 0.93, 0.95, 0.97, 0.99)


def edits(picture: Image.Image) -> dict[str, Image.Image]:
    w, h = picture.size
    jpeg = io.BytesIO()
    picture.convert("RGB").save(jpeg, "JPEG", quality=60)
    shifted = Image.new("RGB", (w, h), (255, 255, 255))
    shifted.paste(picture.convert("RGB"), (3, 3))
    return {"half size": picture.resize((w // 2, h // 2)), "jpeg 60": Image.open(io.BytesIO(jpeg.getvalue())),
            "cropped 6%": picture.crop((w * 6 // 100, h * 6 // 100, w * 94 // 100, h * 94 // 100)),
            "brighter 15%": ImageEnhance.Brightness(picture.convert("RGB")).enhance(1.15), "shifted 3 px": shifted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="an index whose images are edited (leave out to time the listing only)")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=640, help="width of the timed vectors (the bundled model's)")
    args = parser.parse_args()
    if args.index:
        threshold_table(args.index, args.images)
    time_listing(args.items, args.dim)


def threshold_table(index: str, images: int) -> None:
    from mammut_search.search import Searcher

    with Searcher.open(index, device="cpu") as searcher:
        ids = searcher.store.ok_items["id"].to_numpy(np.int64)
        stored = searcher.store.vectors.reconstruct(ids)
        nearest_other = np.sort(stored @ stored.T, axis=1)[:, -2]
        by_edit: dict[str, list[float]] = {}
        for item_id, latent in zip(ids[:images], stored[:images]):
            for name, edited in edits(searcher.load_item_image(int(item_id))).items():
                vector = searcher.model.encode_image(searcher.model.preprocess([edited.convert("RGB")]))[0].numpy()
                by_edit.setdefault(name, []).append(float(vector @ latent))
    print(f"{index}: {len(ids)} images, {images} of them edited\n")
    print("| threshold | " + " | ".join(by_edit) + " | distinct nearest pairs |")
    print("|---|" + "---|" * (len(by_edit) + 1))
    for t in THRESHOLDS:
        cells = [f"{np.mean(np.array(v) >= t):.2f}" for v in by_edit.values()]
        print(f"| {t} | " + " | ".join(cells) + f" | {np.mean(nearest_other >= t):.3f} |")
    print("\n(share of edits found at each threshold; last column: share of images whose nearest other image "
          "is above it)\n")


def time_listing(items: int, dim: int) -> None:
    """`duplicate_groups` over `items` random unit vectors, 1 % of them planted near-copies of others (cosine
    about 0.96), exact and as the listing runs at that size; the share of planted pairs each groups."""
    from mammut_search.index import duplicates
    from mammut_search.index.vectors.ann import build_vector_index

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(items, dim)).astype(np.float32)
    copies = rng.choice(items, 2 * (items // 100), replace=False).reshape(2, -1)
    vectors[copies[1]] = vectors[copies[0]] + 0.3 * rng.normal(size=(copies.shape[1], dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = SimpleNamespace(  # the two things duplicate_groups reads
        ok_items=pd.DataFrame({"id": np.arange(items), "sha256": [""] * items}),
        vectors=build_vector_index(vectors, np.arange(items, dtype=np.int64)))
    planted = np.median(np.sum(vectors[copies[0]] * vectors[copies[1]], axis=1))
    print(f"{items} vectors ({dim}-d), {copies.shape[1]} planted pairs (median cosine {planted:.3f}):")
    default_limit = duplicates.EXACT_UP_TO
    for name, limit in (("exact", items), ("as listed", default_limit)):
        duplicates.EXACT_UP_TO = limit
        start = time.perf_counter()
        groups = duplicates.duplicate_groups(store)
        seconds = time.perf_counter() - start
        group_of = {i: n for n, g in enumerate(groups) for i in g.ids}
        found = np.mean([a in group_of and group_of.get(a) == group_of.get(b) for a, b in copies.T])
        print(f"  {name}: {seconds:.1f} s, {len(groups)} groups, planted pairs grouped {found:.4f}")
    duplicates.EXACT_UP_TO = default_limit


if __name__ == "__main__":
    main()
