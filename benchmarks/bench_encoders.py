"""What a stronger image encoder costs on a CPU: EfficientNet-Lite0/1/2 at several input sizes, the bare encoder
under ONNX Runtime (batch 32, 1 and 2 threads) and a photo index build with captions, in alternating rounds.

Each kind/size gets a checkpoint made from the bundled one: the bundled decoder, pool and latent weights (their
shapes do not depend on the kind: every Lite's head is 1280 wide and the grid is pooled to the same size), the
image encoder replaced by the kind's ImageNet weights (its classifier too, so the semantic token is meaningful)
at that input size. Nothing is trained: the captions are the bundled decoder reading features it never saw, so
their length (printed) is what matters for speed, not their words. The build is `build_index` over the
1024x768 photos of benchmarks/bench_photo_build.py, in a fresh process, as that benchmark times it; optionally
also the build of the code at a git revision with the bundled checkpoint (the budget: the build before the CPU
speed work).

    python benchmarks/bench_encoders.py [--encoders efficientnet_lite0:160 efficientnet_lite2:260 ...]
                                        [--images 384] [--rounds 2] [--baseline b636e0b]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_photo_build import OUT, REPO, BareEncoder, code_of, make_photos, timed_build  # noqa: E402

DEFAULT = ["efficientnet_lite0:160", "efficientnet_lite0:224", "efficientnet_lite1:240", "efficientnet_lite2:224",
           "efficientnet_lite2:260"]


def make_checkpoint(kind: str, size: int) -> Path:
    """The bundled checkpoint with its image encoder replaced by `kind`'s ImageNet weights at `size` px."""
    import torch

    from mammut_search.bundled import bundled_checkpoint_dir
    from mammut_search.inference import MammutModel, load_model
    from mammut_search.model.mammut import MaMMUT

    out = OUT / "encoders" / f"{kind}-{size}"
    if (out / "config.json").is_file():
        return out
    base = load_model(bundled_checkpoint_dir(), device="cpu")
    image = dataclasses.replace(base.config.image_encoder, kind=kind, image_size=size)
    config = dataclasses.replace(base.config, image_encoder=image, training={})
    net = MaMMUT(config, pretrained_encoder=True)
    state = {k: v for k, v in base.net.state_dict().items() if not k.startswith("image_encoder.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("image_encoder.") for k in missing), (missing, unexpected)
    MammutModel(net, base.tokenizer, device="cpu").save(out, dtype=torch.float16)
    return out


def caption_words(keep: Path) -> float:
    """Mean words per caption of a kept build."""
    return float(np.mean([len(c.split()) for c in np.load(keep)["captions"]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=DEFAULT, metavar="KIND:SIZE")
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", metavar="REVISION", help="also build with this revision's code, bundled model")
    parser.add_argument("--cache-dir", default=str(REPO / "data" / "cache"))
    args = parser.parse_args()

    import onnxruntime
    import torch

    from mammut_search.bundled import bundled_checkpoint_dir

    folder = make_photos(args.images, Path(args.cache_dir))
    runs = {name: (REPO, make_checkpoint(name.split(":")[0], int(name.split(":")[1]))) for name in args.encoders}
    if args.baseline:
        runs[f"{args.baseline} code, bundled"] = (code_of(args.baseline), bundled_checkpoint_dir())
    bare = {name: BareEncoder(checkpoint, folder, 32) for name, (code, checkpoint) in runs.items() if code == REPO}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {args.images} photos 1024x768 JPEG; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at start", flush=True)
    print("| round | encoder | bare 1 thread | bare 2 threads | build img/s, captions | words/caption | load |")
    print("|---|---|---|---|---|---|---|")
    builds: dict[str, list[float]] = {}
    for round_ in range(1, args.rounds + 1):
        for name, (code, checkpoint) in runs.items():
            rates = bare[name].rates() if name in bare else {}
            keep = OUT / f"encoders-{name.replace(':', '-').replace(' ', '-')}.npz"
            build = timed_build(code, checkpoint, folder, True, keep)
            builds.setdefault(name, []).append(build)
            print(f"| {round_} | {name} | {rates.get(1, float('nan')):.1f} | {rates.get(2, float('nan')):.1f} | "
                  f"{build:.1f} | {caption_words(keep):.1f} | {os.getloadavg()[0]:.1f} |", flush=True)
    for name, rates in builds.items():
        print(f"median build, {name}: {statistics.median(rates):.1f} images/s")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
