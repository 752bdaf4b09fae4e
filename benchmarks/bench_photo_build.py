"""Index build speed on camera-sized photos against the bare image encoder under ONNX Runtime, on a CPU.

Builds an index of N distinct 1024x768 JPEG photos with a checkpoint (captions on, then off) and, in the same
run, times the bare encoder backbone of the same kind and input size under ONNX Runtime (the runtime's
default options, 1 thread and PyTorch's thread count) on the same photos already decoded. A build's figure
is images / seconds of `build_index` (scan, sha256, decoding, encoder, latents, captions, shards, commit) in
a fresh process, the model loaded and warmed beforehand; its ratio is to the better bare-encoder figure timed
just before it. The table gives every build and the median ratios; builds of different code agree on
captions and latents or the last lines say where not.

The photos are made from real ones (scikit-image's and scikit-learn's sample photos and GCompris's photos,
fetched with pip / apt-get into data/cache): 4:3 crops at random places and scales, mirrored every other
pass, resized to 1024x768, written under benchmarks/out/ (git-ignored).

    python benchmarks/bench_photo_build.py                           # this tree, the bundled checkpoint
    python benchmarks/bench_photo_build.py --code b636e0b HEAD      # the code of commits instead, interleaved
    python benchmarks/bench_photo_build.py --code b636e0b=OLD_CHECKPOINT HEAD   # each with its own checkpoint
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CODE = Path(os.environ.get("MAMMUT_BENCH_CODE") or REPO)  # where a timed build imports the project from
sys.path.insert(0, str(CODE))

OUT = REPO / "benchmarks" / "out"
SIZE = (1024, 768)


def source_photos(cache_dir: Path) -> list:
    """The real photos the benchmark's photos are cut from, as RGB PIL images."""
    from PIL import Image

    from mammut_search.train.corpus import photos
    from mammut_search.train.corpus.fetch import fetch
    from mammut_search.train.corpus.sources import GCOMPRIS, SKIMAGE, SKLEARN

    found = photos.skimage_photos(fetch(SKIMAGE, cache_dir, ("skimage/data/",)), SKIMAGE.version)
    found += photos.sklearn_photos(fetch(SKLEARN, cache_dir, ("sklearn/datasets/images/",)), SKLEARN.version)
    try:
        found += photos.gcompris_photos(fetch(GCOMPRIS, cache_dir))
    except Exception as e:  # apt-get missing: the sample photos alone still give distinct crops
        print(f"GCompris photos unavailable ({e}); cutting from {len(found)} sample photos")
    return [Image.open(io.BytesIO(p.data)).convert("RGB") for p in found]


def make_photos(count: int, cache_dir: Path) -> Path:
    """`count` distinct 1024x768 JPEGs (quality 90) under benchmarks/out/photos-1024x768-COUNT."""
    import numpy as np
    from PIL import Image, ImageOps

    folder = OUT / f"photos-{SIZE[0]}x{SIZE[1]}-{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = source_photos(cache_dir)
    rng = np.random.default_rng(0)
    for i in range(count):
        source = sources[i % len(sources)]
        width, height = source.size
        box_w = min(width, height * 4 / 3) * rng.uniform(0.6, 1.0)  # a 4:3 box, 60-100 % of the largest
        box_h = box_w * 3 / 4
        left, top = rng.uniform(0, width - box_w), rng.uniform(0, height - box_h)
        photo = source.resize(SIZE, Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h))
        if (i // len(sources)) % 2:
            photo = ImageOps.mirror(photo)
        photo.save(folder / f"photo-{i:05d}.jpg", "JPEG", quality=90)
    return folder


class BareEncoder:
    """The encoder's backbone alone under ONNX Runtime (sessions with the runtime's default options, 1 thread
    and PyTorch's thread count), on the photos already decoded and preprocessed, in batches of the build's size
    run as the build's encoder runs them."""

    def __init__(self, checkpoint: Path, folder: Path, batch_size: int):
        import numpy as np
        import onnxruntime
        import torch

        from mammut_search.cpu_encoder import cpu_encoder
        from mammut_search.inference import load_model

        model = load_model(checkpoint, device="cpu")
        encoder = cpu_encoder(model.net)
        if encoder is None:
            raise SystemExit("ONNX Runtime does not run this encoder here; see the line above")
        pixels = model.preprocess_files(sorted(folder.glob("*.jpg"))).numpy()
        self.count, self.batch_size = len(pixels), batch_size
        self.batches = [np.ascontiguousarray(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
        self.sessions = {}
        for threads in sorted({1, torch.get_num_threads()}):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            self.sessions[threads] = onnxruntime.InferenceSession(encoder.graph, options,
                                                                  providers=["CPUExecutionProvider"])

    def rates(self) -> dict[int, float]:
        """threads -> images/s, now. Each batch in the runs the build's encoder makes of it (a few images per
        thread; one run per batch for code from before those runs), so that both run the encoder alike."""
        from mammut_search import cpu_encoder

        rates = {}
        for threads, session in self.sessions.items():
            step = getattr(cpu_encoder, "IMAGES_PER_THREAD", self.batch_size) * threads
            session.run(None, {"pixels": self.batches[0][:step]})  # warm-up
            start = time.perf_counter()
            for batch in self.batches:
                for i in range(0, len(batch), step):
                    session.run(None, {"pixels": batch[i:i + step]})
            rates[threads] = self.count / (time.perf_counter() - start)
        return rates


def timed_build(code: Path, checkpoint: Path, folder: Path, captions: bool, keep: Path) -> float:
    """Images/s of one `build_index` run with the project at `code`, in a fresh process; its captions and
    latents are kept in `keep` (.npz)."""
    env = {**os.environ, "MAMMUT_BENCH_CODE": str(code)}
    command = [sys.executable, __file__, "--child", str(folder), "--checkpoint", str(checkpoint),
               "--captions", "on" if captions else "off", "--keep", str(keep)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"build with {code} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["images"] / result["seconds"]


def child_build(folder: Path, checkpoint: Path, captions: bool, keep: Path) -> None:
    """(In the child process) load the model, warm its encoder up, time build_index, print the result and
    keep the index's captions and latents by file name."""
    import numpy as np
    import torch

    from index_builder.build import BuildOptions, build_index
    from mammut_search.inference import load_model

    model = load_model(checkpoint, device="cpu")
    size = model.config.image_encoder.image_size
    model.encode_image(torch.zeros(1, 3, size, size))  # an exported encoder is loaded (or made) here, untimed
    out = OUT / f"index-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    store = build_index([folder], out, model, options=BuildOptions(captions=captions, progress=False))
    seconds = time.perf_counter() - start
    images = int(store.manifest.count)
    items = store.items.sort_values("path")
    np.savez(keep, names=np.array([Path(p).name for p in items["path"]], dtype=str),
             captions=np.array(items["caption"].tolist(), dtype=str),
             latents=store.vectors.reconstruct(items["id"].to_numpy(np.int64)))
    shutil.rmtree(out)
    print(json.dumps({"images": images, "seconds": seconds}))


def kept(name: str) -> Path:
    """Where the captions and latents of the last captions-on build of `name` are kept."""
    return OUT / f"latest-on-{''.join(c if c.isalnum() else '-' for c in name)}.npz"


def agreement(a: Path, b: Path) -> str:
    """How far two builds of the same photos agree: identical captions, and the cosine of their latents."""
    import numpy as np

    x, y = np.load(a), np.load(b)
    assert (x["names"] == y["names"]).all()
    same = int((x["captions"] == y["captions"]).sum())
    cosine = (x["latents"] * y["latents"]).sum(axis=1)  # unit vectors
    return (f"identical captions {same}/{len(cosine)}, latent cosine min {cosine.min():.6f} "
            f"(mean {cosine.mean():.6f})")


def code_of(revision: str) -> Path:
    """The project's files at a git revision, unpacked under benchmarks/out/code-REVISION."""
    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    folder = OUT / f"code-{commit}"
    if not (folder / "mammut_search").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "mammut_search", "index_builder"], cwd=REPO,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def code_and_checkpoint(item: str, default: Path) -> tuple[str, tuple[Path, Path]]:
    """"REVISION[=CHECKPOINT]" -> (its name, (the project's files at the revision, the checkpoint its builds use));
    a checkpoint other than the bundled one times that model's builds (their ratios are to the bundled one's bare
    encoder)."""
    revision, _, other = item.partition("=")
    name = f"{revision} ({Path(other).name})" if other else revision
    return name, (code_of(revision), Path(other) if other else default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled one)")
    parser.add_argument("--images", type=int, default=384, help="photos to index (default 384)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--code", nargs="+", metavar="REVISION[=CHECKPOINT]",
                        help="time the builds of the code at these git revisions (default: this working tree), "
                             "each with the given checkpoint or --checkpoint's")
    parser.add_argument("--cache-dir", default=str(REPO / "data" / "cache"), help="where photo packages go")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--captions", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--keep", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_build(Path(args.child), Path(args.checkpoint), args.captions == "on", Path(args.keep))

    import onnxruntime
    import torch

    from mammut_search.bundled import bundled_checkpoint_dir
    from mammut_search.inference import auto_batch_size, load_model

    checkpoint = Path(args.checkpoint) if args.checkpoint else bundled_checkpoint_dir()
    folder = make_photos(args.images, Path(args.cache_dir))
    model = load_model(checkpoint, device="cpu")
    encoder, batch = model.config.image_encoder, auto_batch_size(model)
    codes = dict(code_and_checkpoint(item, checkpoint) for item in args.code) if args.code else {
        "this tree": (REPO, checkpoint)}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads; {encoder.kind} at "
          f"{encoder.image_size} px, batch {batch}; {args.images} photos 1024x768 JPEG; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    bare = BareEncoder(checkpoint, folder, batch)
    threads = list(bare.sessions)
    print("| round | code | captions | " + " | ".join(f"bare encoder, {t} thread{'s' * (t > 1)}" for t in threads)
          + " | build img/s | ratio to the best bare |")
    print("|---" * (5 + len(threads)) + "|")
    ratios: dict[tuple[str, bool], list[float]] = {}
    for round_ in range(1, args.rounds + 1):
        for name, (code, code_checkpoint) in codes.items():
            for captions in (True, False):
                rates = bare.rates()  # just before the build, so both see the same load
                build = timed_build(code, code_checkpoint, folder, captions,
                                    keep=kept(name) if captions else OUT / "latest-off.npz")
                ratio = build / max(rates.values())
                ratios.setdefault((name, captions), []).append(ratio)
                print(f"| {round_} | {name} | {'on' if captions else 'off'} | "
                      + " | ".join(f"{rates[t]:.1f}" for t in threads) + f" | {build:.1f} | {ratio:.2f} |", flush=True)
    for name in codes:
        print(f"median ratio, {name}: captions on {statistics.median(ratios[name, True]):.2f}, "
              f"captions off {statistics.median(ratios[name, False]):.2f}")
    first, *others = codes
    for name in others:
        if codes[name][1] == codes[first][1]:  # captions and latents of other checkpoints differ anyway
            print(f"{name} against {first}: {agreement(kept(first), kept(name))}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
