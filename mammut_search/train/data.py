"""Training data: the manifest, the cache of encoder inputs and the batch sampler.

The manifest is any captioned set that `mammut_search.captioned` reads (the corpus this repo builds, a Karpathy
or COCO captions file, a table of image-caption pairs, a folder with .txt sidecars).
The image encoder's input to the trainable part is computed once per image, and cached (fp16):
frozen-encoder features (b j c) when the encoder is frozen, preprocessed pixels otherwise; in memory, or left on
disk and read per batch when it would not fit (`stream`). Batches are drawn
from a generator seeded by (seed, step), so the data order is a function of the step alone: resuming at a
step replays exactly the batches an uninterrupted run would have seen, on any number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from mammut_search.captioned import describe_problems, read_captioned
from mammut_search.errors import UserError
from mammut_search.files import printable
from mammut_search.inference import preprocess_images
from mammut_search.model.config import ImageEncoderConfig

MANIFEST_COLUMNS = ("path", "concept_id", "name", "captions", "split")
TRAIN_SPLIT = "train"
STREAM_MODES = ("auto", "memory", "disk")
MEMORY_SHARE = 0.5  # "auto" streams a cache larger than this share of the free memory (all local processes' copies)


# ----- manifest -----

def read_manifest(path: str | Path, *, images_root: str | Path | None = None) -> pd.DataFrame:
    """Any captioned set (see mammut_search.captioned) -> one row per image: path (absolute), captions (list),
    concept_id, name, split, and the source's other columns. Images without a split are training images.
    What reading left out is in `frame.attrs["data"]` (counts and examples), for the training card."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no manifest there; build the corpus with `mammut corpus build`, or set manifest "
                        "to a Karpathy or COCO captions JSON, a CSV/JSONL of image-caption pairs or a captioned folder")
    captioned = read_captioned(path, images_root=images_root)
    frame = captioned.frame.copy()
    frame["split"] = [s or TRAIN_SPLIT for s in frame["split"]]
    frame["concept_id"] = frame["concept_id"].astype(str)
    summary = captioned.summary()
    if captioned.problems:
        tqdm.write(f"{printable(path)}: left out {len(captioned.problems)} images or rows "
                   f"({describe_problems(captioned.problems, 3)})")
    frame.attrs["data"] = {k: summary[k] for k in ("format", "dataset", "images", "captions", "left_out",
                                                   "left_out_examples")}
    return frame


def sentence_query(name: str) -> str:
    """A concept name as a sentence query: "octopus" -> "A picture of an octopus."."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"A picture of {article} {name}."


# ----- images -----

def open_image(path: str) -> Image.Image:
    """Image file of the corpus -> RGB on white through the safe loader (the one every path uses); raises
    ValueError naming the file when it cannot be read."""
    from mammut_search.errors import ImageLoadError
    from mammut_search.images import load_image

    try:
        return load_image(path)
    except ImageLoadError as e:  # every decoder error means the same thing here: skip this image
        raise ValueError(f"{path}: cannot read image ({getattr(e, 'reason', e)})") from None


# ----- the cache of encoder inputs -----

@dataclass
class InputCache:
    """Encoder inputs for every image: (images, ...) fp16, and which images could be read."""

    inputs: torch.Tensor  # (i j c) features, or (i 3 H W) pixels
    ok: np.ndarray  # (i) bool

    in_memory = True

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """(b) image indices -> float32 inputs (b ...)."""
        return self.inputs[images].float()

    def subset(self, keep: np.ndarray) -> "InputCache":
        """Only the images where `keep` (i) is true, renumbered 0..k-1."""
        return InputCache(self.inputs[torch.from_numpy(keep)], np.ones(int(keep.sum()), bool))


@dataclass
class DiskInputCache:
    """The same, left on disk: one fp16 .npy per image in the store, read when a batch asks for it."""

    entries: list[Path]
    ok: np.ndarray  # (i) bool
    in_memory = False

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """(b) image indices -> float32 inputs (b ...), read by a few threads (file reads release the GIL)."""
        files = [self.entries[i] for i in images.tolist()]
        return torch.from_numpy(np.stack(list(_readers().map(np.load, files)))).float()

    def subset(self, keep: np.ndarray) -> "DiskInputCache":
        """Only the images where `keep` (i) is true, renumbered 0..k-1."""
        return DiskInputCache([self.entries[i] for i in np.flatnonzero(keep)], np.ones(int(keep.sum()), bool))


_READERS: ThreadPoolExecutor | None = None


def _readers() -> ThreadPoolExecutor:
    global _READERS
    if _READERS is None:
        _READERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cache-reader")
    return _READERS


def cache_bytes_per_image(image_config: ImageEncoderConfig, cached_features: bool) -> int:
    """Bytes one cached image takes: fp16 features (tokens x width) of a frozen encoder, else fp16 pixels."""
    if cached_features:
        return 2 * image_config.num_tokens * image_config.feature_dim
    return 2 * 3 * image_config.image_size ** 2


def stream_from_disk(mode: str, cache_bytes: int) -> bool:
    """Whether the training cache stays on disk: "disk", "memory", or "auto" = when every process of this machine
    holding its copy would take more than MEMORY_SHARE of the free memory."""
    if mode not in STREAM_MODES:
        raise UserError(f"stream must be one of {', '.join(STREAM_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "disk"
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on Linux: keep the cache in memory as before
        return False
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return cache_bytes * local_processes > MEMORY_SHARE * free


def _entry(store: Path, path: str) -> Path:
    """Where one image's encoded input lives: named by the image path (the "|0|" is the key caches were
    written under when they also held augmented views; kept, so that they stay valid)."""
    key = hashlib.sha256(f"{Path(path).absolute()}|0|".encode()).hexdigest()[:24]
    return store / key[:2] / f"{key}.npy"


def build_input_cache(paths: Sequence[str], encode: Callable[[list[Image.Image]], torch.Tensor], *,
                      store: Path | None = None, batch_size: int = 64, progress: bool = True,
                      in_memory: bool = True) -> InputCache | DiskInputCache:
    """Run `encode` (PIL images -> tensor (b ...)) over every image that `store` does not hold yet, keeping one
    fp16 .npy per image there (so extraction resumes, and runs and recipes sharing an encoder share the work);
    then stack them in memory, or (`in_memory` false) leave them there to be read per batch. Unreadable images
    are reported once and marked not ok."""
    if not in_memory and store is None:
        raise ValueError("a cache streamed from disk needs a store folder")
    ok = np.ones(len(paths), dtype=bool)
    done: dict[int, np.ndarray] = {}
    todo = []
    for i, path in enumerate(paths):
        entry = _entry(store, path) if store is not None else None
        if entry is not None and entry.is_file():
            if in_memory:
                done[i] = np.load(entry)
        elif entry is not None and entry.with_suffix(".bad").is_file():
            ok[i] = False
        else:
            todo.append(i)
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc="encoding training images", unit="img",
               disable=not progress or not todo)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        for i, row in encode_chunk([paths[i] for i in chunk], encode, store).items():
            if row is None:
                ok[chunk[i]] = False
            elif in_memory:
                done[chunk[i]] = row
        bar.update(len(chunk))
    bar.close()
    if not in_memory:
        return DiskInputCache([_entry(store, p) for p in paths], ok)
    shape = next(iter(done.values())).shape if done else (1,)
    inputs = np.zeros((len(paths), *shape), dtype=np.float16)
    for i, row in done.items():
        inputs[i] = row
    return InputCache(torch.from_numpy(inputs), ok)


def encode_chunk(paths: list[str], encode: Callable[[list[Image.Image]], torch.Tensor],
                 store: Path | None) -> dict[int, np.ndarray | None]:
    """Encode a few images: {position in `paths`: fp16 row, or None when the image cannot be read}; each row
    (and each failure, as a .bad note) is also kept in `store`."""
    images, readable, rows = [], [], {}
    for i, path in enumerate(paths):
        try:
            images.append(open_image(path))
            readable.append(i)
        except ValueError as e:
            tqdm.write(f"skipped: {e}")
            rows[i] = None
            if store is not None:
                bad = _entry(store, path).with_suffix(".bad")
                bad.parent.mkdir(parents=True, exist_ok=True)
                bad.write_text(str(e))
    if images:
        with torch.no_grad():
            encoded = encode(images).to(torch.float16).cpu().numpy()
        for i, row in zip(readable, encoded):
            rows[i] = row
            if store is not None:
                entry = _entry(store, paths[i])
                entry.parent.mkdir(parents=True, exist_ok=True)
                # a cache, rebuilt if lost: renamed into place (ranks may encode the same image) but not
                # fsynced like the project's files (atomic.py), which would cost two syncs an image
                tmp = entry.with_suffix(f".tmp-{os.getpid()}.npy")
                np.save(tmp, row)
                tmp.replace(entry)
    return rows


def pixel_encoder(image_config) -> Callable[[list[Image.Image]], torch.Tensor]:
    """Encode = preprocess only (the whole encoder trains, so it runs in the training loop)."""
    return lambda images: preprocess_images(images, image_config)


def cache_key(*parts) -> str:
    """A short stable hash of whatever determines a cache's content."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----- batches -----

@dataclass
class Batch:
    images: torch.Tensor  # (b) row of the manifest
    captions: list[int]  # (b) index of the contrastive caption in the caption table
    groups: torch.Tensor  # (b) concept index: same concept = positives


class ConceptBalancedSampler:
    """Global batches of `images_per_concept` images of each of batch/images_per_concept concepts drawn
    uniformly (concepts, not images, are balanced), and a random caption of each image.

    Batch `step` depends only on (seed, step); rank r of w takes rows r::w of it (a distributed sampler
    without state)."""

    def __init__(self, concept_images: list[np.ndarray], image_captions: list[np.ndarray], image_concept: np.ndarray,
                 *, batch_size: int, images_per_concept: int = 1, seed: int = 0,
                 concept_weights: np.ndarray | None = None):
        self.concept_images = concept_images
        # probability of drawing each concept (uniform when None)
        self.p = None if concept_weights is None else concept_weights / concept_weights.sum()
        self.image_captions = image_captions
        self.image_concept = image_concept
        self.batch_size, self.per_concept, self.seed = batch_size, images_per_concept, seed

    def global_batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        n_concepts = -(-self.batch_size // self.per_concept)
        replace = n_concepts > (len(self.concept_images) if self.p is None else int((self.p > 0).sum()))
        concepts = rng.choice(len(self.concept_images), n_concepts, replace=replace, p=self.p)
        images = []
        for c in concepts:
            pool = self.concept_images[c]
            images.extend(rng.choice(pool, self.per_concept, replace=self.per_concept > len(pool)))
        images = np.array(images[: self.batch_size])
        captions = [int(rng.choice(self.image_captions[i])) for i in images]
        return Batch(torch.from_numpy(images), captions, torch.from_numpy(self.image_concept[images]))

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Batch:
        full = self.global_batch(step)
        rows = slice(rank, None, world_size)
        return Batch(full.images[rows], full.captions[rows], full.groups[rows])
