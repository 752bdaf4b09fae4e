"""Near-duplicates: where to put the similarity threshold, and what listing the groups costs.

    python benchmarks/bench_duplicates.py --index data/cache/demo.index [--images 60] [--items 100000]

Edits of indexed images (resized to half, JPEG at quality 60, 6 % cropped off each side, 15 % brighter, a 4-frame
"burst" shifted by 3 px) are encoded by the index's model and compared with their originals' stored latents;
distinct images are each indexed image and its nearest other one. A threshold should take nearly every edit and
almost no distinct pair. Then `duplicate_groups` (FAISS range search) timed on --items random unit vectors.
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
    from mammut_search.index.duplicates import duplicate_groups
    from mammut_search.index.vectors.ann import build_vector_index
    from mammut_search.search import Searcher

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    with Searcher.open(args.index, device="cpu") as searcher:
        ids = searcher.store.ok_items["id"].to_numpy(np.int64)
        stored = searcher.store.vectors.reconstruct(ids)
        nearest_other = np.sort(stored @ stored.T, axis=1)[:, -2]
        by_edit: dict[str, list[float]] = {}
        for item_id, latent in zip(ids[:args.images], stored[:args.images]):
            for name, edited in edits(searcher.load_item_image(int(item_id))).items():
                vector = searcher.model.encode_image(searcher.model.preprocess([edited.convert("RGB")]))[0].numpy()
                by_edit.setdefault(name, []).append(float(vector @ latent))
    print(f"{args.index}: {len(ids)} images, {args.images} of them edited\n")
    print("| threshold | " + " | ".join(by_edit) + " | distinct nearest pairs |")
    print("|---|" + "---|" * (len(by_edit) + 1))
    for t in THRESHOLDS:
        cells = [f"{np.mean(np.array(v) >= t):.2f}" for v in by_edit.values()]
        print(f"| {t} | " + " | ".join(cells) + f" | {np.mean(nearest_other >= t):.3f} |")
    print("\n(share of edits found at each threshold; last column: share of images whose nearest other image "
          "is above it)\n")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.items, stored.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    store = SimpleNamespace(  # the two things duplicate_groups reads
        ok_items=pd.DataFrame({"id": np.arange(args.items), "sha256": [""] * args.items}),
        vectors=build_vector_index(vectors, np.arange(args.items, dtype=np.int64)))
    start = time.perf_counter()
    duplicate_groups(store)
    print(f"duplicate_groups over {args.items} vectors ({stored.shape[1]}-d): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
