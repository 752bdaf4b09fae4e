"""The Python API that the CLI, the UI, the index builder and users call: `load_model` -> `MammutModel`, and the
one image pipeline that turns an image into model input:

    file ─safe loader (JPEG decoded at reduced scale)─▶ RGB ─square_pixels─▶ uint8 (H W 3) ─pixels_tensor─▶ (b 3 H W)

Indexing, re-ranking, image queries, evaluation and training all go through these functions, so one file gives
the same model input whichever path reads it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from mammut_search import cpu_encoder
from mammut_search.bundled import bundled_checkpoint_dir
from mammut_search.images import load_image_with_size, to_rgb
from mammut_search.model.checkpoint import load_checkpoint, save_checkpoint
from mammut_search.model.config import CAPTION_BEAM_WIDTH, CAPTION_MAX_LEN, ImageEncoderConfig, MammutConfig
from mammut_search.model.decoding import generate, score_texts
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.naming import named_classes
from mammut_search.model.retrieval import image_retrieval_vectors, query_retrieval_vectors, query_sentences
from mammut_search.model.tokenizer import Tokenizer

ImageBatch = Sequence[Image.Image] | torch.Tensor

# Large images are reduced (box filter, or a JPEG's DCT scaling) by powers of two while both sides stay at least
# this many times the input size, then resized bicubic. Our own encoders: 1, which decodes a camera-sized JPEG at
# 1/4 or 1/8 scale (the retrieval and captions it was checked for are in benchmarks/RESULTS.md). open_clip
# checkpoints: 2, which keeps their input within a few grey levels of open_clip's own transform.
REDUCING_GAP = 1
OPEN_CLIP_REDUCING_GAP = 2


# ----- the one image pipeline -----

def load_square(path: str | os.PathLike, config: ImageEncoderConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file -> its encoder square, uint8 (H W 3), and the (width, height) of the full upright image.

    The safe loader decodes a JPEG at the smallest scale that keeps `decode_side`; ImageLoadError if unsafe.
    """
    image, size = load_image_with_size(path, min_side=decode_side(config))
    return square_pixels(image, config), size


def preprocess_images(images: Sequence[Image.Image], config: ImageEncoderConfig) -> torch.Tensor:
    """PIL images of any mode -> normalised pixels (b 3 H W)."""
    return pixels_tensor([square_pixels(image, config) for image in images], config)


def decode_side(config: ImageEncoderConfig) -> int:
    """The smallest side an image needs for this encoder: preprocessing box-reduces larger images by powers
    of two down to it, and the safe loader may decode JPEGs straight at that scale (`min_side`)."""
    gap = OPEN_CLIP_REDUCING_GAP if getattr(config, "centre_crop", False) else REDUCING_GAP
    return gap * config.image_size


def square_pixels(image: Image.Image, config: ImageEncoderConfig) -> np.ndarray:
    """One PIL image -> the encoder's input square as uint8 pixels (H W 3), before normalisation.

    Any mode is converted to RGB (transparency onto the configured background). A large image is first reduced
    by the largest power of two that keeps both sides ≥ `decode_side` (as the safe loader's JPEG draft decoding
    does, so both give nearly the same pixels), then resized bicubic to fit the square with its aspect kept,
    and centred on the background colour; for an open_clip checkpoint, resized and cut to the centre square
    as open_clip does.
    """
    size = config.image_size
    rgb = image if image.mode == "RGB" else to_rgb(image, tuple(config.background))
    factor = power_of_two_reduction(rgb.size, decode_side(config))
    if factor > 1:
        rgb = rgb.reduce(factor)
    if getattr(config, "centre_crop", False):  # open_clip checkpoints; our own encoders see the whole image
        return centre_crop_pixels(rgb, size)
    scale = size / max(rgb.size)
    w, h = max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))
    if (w, h) != rgb.size:
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    if (w, h) == (size, size):
        return np.asarray(rgb)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = config.background
    left, top = (size - w) // 2, (size - h) // 2
    canvas[top:top + h, left:left + w] = np.asarray(rgb)
    return canvas


def centre_crop_pixels(rgb: Image.Image, size: int) -> np.ndarray:
    """open_clip's preprocessing: the shortest side resized (bicubic) to `size`, the longer in proportion
    (rounded down), then the centre square cut (offsets rounded) -> uint8 (size size 3)."""
    w, h = rgb.size
    resized = (size, max(size, int(size * h / w))) if w <= h else (max(size, int(size * w / h)), size)
    if resized != rgb.size:
        rgb = rgb.resize(resized, Image.Resampling.BICUBIC)
    left, top = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
    return np.asarray(rgb.crop((left, top, left + size, top + size)))


def power_of_two_reduction(image_size: tuple[int, int], side: int) -> int:
    """The largest power of two k with both sides of `image_size` ≥ k * side (1 for small images)."""
    fits = min(image_size) // side
    return 1 << (fits.bit_length() - 1) if fits > 1 else 1


def pixels_tensor(squares: Sequence[np.ndarray], config: ImageEncoderConfig) -> torch.Tensor:
    """uint8 squares, each (H W 3) -> the encoder's normalised float input (b 3 H W)."""
    if not len(squares):
        return torch.empty(0, 3, config.image_size, config.image_size)
    return normalise_pixels(torch.from_numpy(np.stack(squares)), config)


def normalise_pixels(pixels: torch.Tensor, config: ImageEncoderConfig) -> torch.Tensor:
    """uint8 pixels (b H W 3) -> the encoder's normalised float input (b 3 H W), one batch at a time."""
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return pixels.permute(0, 3, 1, 2).contiguous().float().div_(255.0).sub_(mean).div_(std)


# Encoder input pixels a batch may hold (bigger inputs give smaller batches): on a GPU per 16 GiB of its memory,
# so that a batch fits the device it runs on; and a cap for tiny inputs, whose cost is then the caption decoder's.
_BATCH_PIXELS = {"cuda": 256 * 224 * 224, "cpu": 32 * 224 * 224}
_MAX_BATCH = {"cuda": 1024, "cpu": 128}
_GPU_MEMORY_UNIT = 16 * 2 ** 30


def auto_batch_size(model: "MammutModel") -> int:
    """Images per model batch for the model's device and input size (the memory of the GPU it runs on)."""
    size = model.config.image_encoder.image_size
    kind = "cuda" if model.device.type == "cuda" else "cpu"
    pixels = _BATCH_PIXELS[kind]
    if kind == "cuda":
        memory = torch.cuda.get_device_properties(model.device).total_memory
        pixels = int(pixels * memory / _GPU_MEMORY_UNIT)
    return max(1, min(_MAX_BATCH[kind], pixels // (size * size)))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor onto `device`: asynchronously (non_blocking) when it sits in pinned memory, the only case where
    the copy really overlaps and the source is safe to reuse; a plain copy otherwise."""
    return tensor.to(device, non_blocking=tensor.is_pinned())


def default_device() -> torch.device:
    """CUDA when available, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def missing_gpu(device: torch.device) -> str | None:
    """Why a CUDA `device` cannot be used on this machine (no GPU, or fewer than its index), or None."""
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "this machine has no CUDA GPU (torch sees none)"
    if (device.index or 0) >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA GPU(s)"
    return None


def bf16_on_cuda(device: torch.device):
    """The autocast context for running the model: bf16 on a GPU, none on a CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class MammutModel:
    """A MaMMUT network with its tokenizer and preprocessing: latents for retrieval, captions, likelihoods.

    Every method takes a batch and returns CPU tensors or Python values; work runs on `device`
    (bf16 autocast on CUDA). Latents are the projected, unit-norm contrastive latents.
    """

    def __init__(self, net: MaMMUT, tokenizer: Tokenizer, *, device: str | torch.device | None = None, sha256: str = ""):
        self.device = torch.device(device) if device is not None else default_device()
        self.net = net.to(self.device).eval()
        self.tokenizer = tokenizer
        self.checkpoint_sha256 = sha256

    @property
    def config(self) -> MammutConfig:
        return self.net.config

    @property
    def latent_dim(self) -> int:
        return self.config.retrieval_dim

    def _autocast(self):
        return bf16_on_cuda(self.device)

    # ----- images -----

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised pixels (b 3 H W) on the CPU (safe to call in worker processes)."""
        return self._staged(preprocess_images(list(images), self.config.image_encoder))

    def preprocess_files(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """Image files through the one pipeline -> normalised pixels (b 3 H W); ImageLoadError names a bad file."""
        config = self.config.image_encoder
        return self._staged(pixels_tensor([load_square(path, config)[0] for path in paths], config))

    def _staged(self, batch: torch.Tensor) -> torch.Tensor:
        """A CPU batch for a model on a GPU goes into pinned memory, so that its copy to the GPU is asynchronous."""
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def _pixels(self, images: ImageBatch) -> torch.Tensor:
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        return to_device(pixels, self.device)

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> image encoder tokens (b j c), kept on the model's device (on a CPU through ONNX
        Runtime where it runs: mammut_search.cpu_encoder)."""
        with self._autocast():
            return cpu_encoder.image_features(self.net, to_device(pixels, self.device))

    @torch.no_grad()
    def latents_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """image tokens (b j c) -> unit-norm retrieval vectors of the images (b r), float32 on the CPU."""
        with self._autocast():
            return image_retrieval_vectors(self.net, features).float().cpu()

    @torch.no_grad()
    def decoder_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """image encoder tokens (b j c) -> the decoder's pooled image tokens (b q d), on the model's device: all
        that captioning and re-ranking read of an image (an index stores them, so re-ranking decodes no image)."""
        with self._autocast():
            return self.net.pool_image(features)[1]

    @torch.no_grad()
    def score_text_from_tokens(self, tokens: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """decoder image tokens (b q d) and b texts -> length-normalised log p(text_i | image_i) (b)."""
        if len(texts) != tokens.shape[0]:
            raise ValueError(f"score_text needs one text per image, got {len(texts)} texts for {tokens.shape[0]}")
        ids = self.tokenizer.encode(list(texts), self.config.max_text_len).to(self.device)
        with self._autocast():
            return score_texts(self.net, to_device(tokens, self.device), ids).float().cpu()

    @torch.no_grad()
    def captions_from_features(self, features: torch.Tensor, *, beam_width: int = CAPTION_BEAM_WIDTH,
                               max_len: int = CAPTION_MAX_LEN, tokens: torch.Tensor | None = None) -> list[str]:
        """image encoder tokens (b j c) -> one caption per image: the decoder's, or, with the semantic token,
        the classifier's top class name where it is confident and agrees with the image (model.naming).
        `tokens`: the images' decoder tokens (b q d) when the caller has them already."""
        tokens = self.decoder_tokens(features) if tokens is None else to_device(tokens, self.device)
        with self._autocast():
            ids = generate(self.net, tokens, beam_width=beam_width, max_len=max_len)
            names = ([None] * len(ids) if not getattr(self.config, "semantic_dim", 0) else
                     named_classes(self.net, self.tokenizer, to_device(features, self.device), ids))
        return [name or self.tokenizer.decode(row) for name, row in zip(names, ids.tolist())]

    def score_text_from_features(self, features: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """image encoder tokens (b j c) and b texts -> length-normalised log p(text_i | image_i) (b)."""
        return self.score_text_from_tokens(self.decoder_tokens(features), texts)

    def encode_image(self, images: ImageBatch) -> torch.Tensor:
        """PIL images or pixels (b 3 H W) -> unit-norm retrieval vectors of the images (b r): what an index stores."""
        return self.latents_from_features(self.image_features(self._pixels(images)))

    def caption(self, images: ImageBatch, *, beam_width: int = CAPTION_BEAM_WIDTH,
                max_len: int = CAPTION_MAX_LEN) -> list[str]:
        """PIL images or pixels -> one generated caption per image."""
        features = self.image_features(self._pixels(images))
        return self.captions_from_features(features, beam_width=beam_width, max_len=max_len)

    def score_text(self, images: ImageBatch, texts: Sequence[str]) -> torch.Tensor:
        """Pairs of images and texts -> length-normalised log p(text | image) (b)."""
        return self.score_text_from_features(self.image_features(self._pixels(images)), texts)

    # ----- text -----

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> unit-norm retrieval vectors of the queries (b r), from the decoder's contrastive pass."""
        ids = self.tokenizer.encode(list(texts), self.config.max_text_len).to(self.device)
        sentences = query_sentences(self.net, texts)
        with self._autocast():
            return query_retrieval_vectors(self.net, ids, sentences).float().cpu()

    def save(self, directory: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        """Write a checkpoint directory; remembers and returns its sha256."""
        self.checkpoint_sha256 = save_checkpoint(directory, self.net, self.tokenizer, dtype=dtype)
        return self.checkpoint_sha256


def load_model(checkpoint_dir: str | Path | None = None, device: str | torch.device | None = None) -> MammutModel:
    """Load a checkpoint directory (default: the bundled one) onto `device` (default: CUDA if available)."""
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else bundled_checkpoint_dir()
    net, tokenizer, sha = load_checkpoint(directory)
    return MammutModel(net, tokenizer, device=device, sha256=sha)
