"""The encode pipeline: decode images in worker processes, run the image encoder once per image, and turn
its tokens into a latent (for FAISS) and, in the same pass, the decoder's image tokens (stored, for re-ranking)
and a caption (for the items table)."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mammut_search.errors import ImageLoadError
from mammut_search.images import load_image_and_sha256
from mammut_search.inference import decode_side, pixels_tensor, square_pixels
from mammut_search.model.config import CAPTION_BEAM_WIDTH, CAPTION_MAX_LEN, ImageEncoderConfig

log = logging.getLogger(__name__)


# The file's bytes changed between hashing and decoding; its row is retried by the next update.
CHANGED = "unreadable (changed while it was being indexed; run mammut index update)"


@dataclass
class EncodeJob:
    """One distinct image content to encode: its sha256 and one path holding those bytes."""

    sha256: str
    path: str


@dataclass
class Encoded:
    """What the model made of one image content; `latent` is None unless status is "ok"."""

    sha256: str
    status: str  # "ok" or why the file was skipped
    width: int = 0
    height: int = 0
    caption: str = ""
    latent: np.ndarray | None = None
    tokens: np.ndarray | None = None  # the decoder's image tokens (q d), float16, for re-ranking


class DecodeDataset(Dataset):
    """Decodes one job: the safe loader, then the encoder's preprocessing up to uint8 pixels (runs in DataLoader
    workers, or in the main process with `workers=0`)."""

    def __init__(self, jobs: Sequence[EncodeJob], config: ImageEncoderConfig):
        self.jobs = list(jobs)
        self.config = config

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict:
        job = self.jobs[i]
        try:
            image, size, sha256 = load_image_and_sha256(job.path, min_side=decode_side(self.config))
            if sha256 != job.sha256:  # rewritten since it was hashed: these pixels are not those bytes
                return {"job": job, "status": CHANGED}
            pixels = square_pixels(image, self.config)
        except ImageLoadError as e:
            return {"job": job, "status": skip_reason(e, job.path)}
        except Exception as e:  # a decoder bug on one odd file must not stop a million-image build
            log.warning("%s: unexpected error while decoding (%r)", job.path, e)
            return {"job": job, "status": f"cannot decode ({type(e).__name__}: {e})"}
        return {"job": job, "status": "ok", "pixels": pixels, "size": size}


def skip_reason(error: Exception, path: str) -> str:
    """The reason of an ImageLoadError without the leading "path: " (the items row has the path already)."""
    if getattr(error, "reason", None):
        return error.reason
    message = str(error)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def collate(samples: list[dict], config: ImageEncoderConfig) -> dict:
    """Decoded samples -> {"samples": the samples without pixels, "pixels": (b 3 H W) of the ok ones or None},
    normalised as a whole batch."""
    pixels = [s.pop("pixels") for s in samples if s["status"] == "ok"]
    return {"samples": samples, "pixels": pixels_tensor(pixels, config) if pixels else None}


def encode(model, jobs: Sequence[EncodeJob], *, batch_size: int = 64, workers: int = 1, captions: bool = True,
           beam_width: int = CAPTION_BEAM_WIDTH, caption_max_len: int = CAPTION_MAX_LEN) -> Iterator[list[Encoded]]:
    """Batch by batch, one Encoded per job. Decoding (workers > 0: in worker processes) overlaps the model, and
    starts now: what the caller does before it asks for the first batch overlaps the first images' decoding."""
    if not jobs:
        return iter(())
    return _encoded(model, _loader(model, jobs, batch_size, workers), captions, beam_width, caption_max_len)


def _loader(model, jobs: Sequence[EncodeJob], batch_size: int, workers: int):
    """The decoded batches of the jobs, their decoding started."""
    on_cuda = model.device.type == "cuda"
    config = model.config.image_encoder
    loader = DataLoader(
        DecodeDataset(jobs, config), batch_sampler=ramped_batches(len(jobs), batch_size), num_workers=workers,
        collate_fn=functools.partial(collate, config=config), pin_memory=on_cuda,
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False, worker_init_fn=_decoding_worker,
    )
    return _started(loader)


def _encoded(model, batches, captions: bool, beam_width: int, caption_max_len: int) -> Iterator[list[Encoded]]:
    """The model's results of decoded batches."""
    for batch in batches:
        samples, pixels = batch["samples"], batch["pixels"]
        latents, tokens, texts = None, None, None
        if pixels is not None:
            features = model.image_features(pixels)  # pinned by the loader on a GPU: copied asynchronously
            latents = model.latents_from_features(features).numpy().astype(np.float32, copy=False)
            decoder_tokens = model.decoder_tokens(features)
            tokens = decoder_tokens.to(torch.float16).cpu().numpy()
            if captions:
                texts = model.captions_from_features(features, beam_width=beam_width, max_len=caption_max_len,
                                                     tokens=decoder_tokens)
        yield list(_results(samples, latents, tokens, texts))


def ramped_batches(count: int, batch_size: int) -> list[list[int]]:
    """Job indices in order, in batches of `batch_size` after a few smaller first ones (1/8 of it, doubling):
    the model starts as soon as a few images are decoded instead of waiting idle for a whole batch."""
    batches, start, size = [], 0, max(1, batch_size // 8)
    while start < count:
        batches.append(list(range(start, min(start + size, count))))
        start, size = start + size, min(batch_size, size * 2)
    return batches


def _started(loader: DataLoader):
    """iter(loader), its decoding processes started with Ctrl+C held back (they ignore it from their first
    instruction on; see _decoding_worker); one pressed meanwhile reaches this process right after."""
    if loader.num_workers == 0:
        return iter(loader)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _decoding_worker(worker_id: int) -> None:
    """Set up a decoding process. Ctrl+C (which signals the whole process group) is the main process's to
    handle: it stops and shuts its workers down in order. And a hand-over of a decoded batch that the main
    process abandoned when Ctrl+C came is no error: multiprocessing's helper thread would print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    sys.excepthook = lambda kind, error, trace: log.debug("decoding worker %d: %s", worker_id, error)


def _results(samples: list[dict], latents: np.ndarray | None, tokens: np.ndarray | None,
             texts: list[str] | None) -> Iterator[Encoded]:
    k = 0
    for s in samples:
        job = s["job"]
        if s["status"] != "ok":
            yield Encoded(job.sha256, s["status"])
            continue
        width, height = s["size"]
        yield Encoded(job.sha256, "ok", int(width), int(height), texts[k] if texts else "", latents[k], tokens[k])
        k += 1
