"""The Python API that the CLI, the UI, the index builder and users call: `load_model` -> `MammutModel`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from mammut_search.model.checkpoint import load_checkpoint, save_checkpoint
from mammut_search.model.config import MammutConfig
from mammut_search.model.decoding import generate, score_texts
from mammut_search.model.image_encoders import preprocess_images
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.tokenizer import Tokenizer

ImageBatch = Sequence[Image.Image] | torch.Tensor


def default_device() -> torch.device:
    """CUDA when available, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        return self.config.dim_latents

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ----- images -----

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised pixels (b 3 H W) on the CPU (safe to call in worker processes)."""
        return preprocess_images(list(images), self.config.image_encoder)

    def _pixels(self, images: ImageBatch) -> torch.Tensor:
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        return pixels.to(self.device, non_blocking=True)

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> image encoder tokens (b j c), kept on the model's device."""
        with self._autocast():
            return self.net.image_features(pixels.to(self.device, non_blocking=True))

    @torch.no_grad()
    def latents_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """image tokens (b j c) -> unit-norm image latents (b l), float32 on the CPU."""
        with self._autocast():
            return self.net.image_latents(features).float().cpu()

    @torch.no_grad()
    def captions_from_features(self, features: torch.Tensor, *, beam_width: int = 1, max_len: int = 24) -> list[str]:
        """image tokens (b j c) -> one generated caption per image."""
        with self._autocast():
            _, image_tokens = self.net.pool_image(features)
            ids = generate(self.net, image_tokens, beam_width=beam_width, max_len=max_len)
        return [self.tokenizer.decode(row) for row in ids.tolist()]

    @torch.no_grad()
    def score_text_from_features(self, features: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """image tokens (b j c) and b texts -> length-normalised log p(text_i | image_i) (b)."""
        if len(texts) != features.shape[0]:
            raise ValueError(f"score_text needs one text per image, got {len(texts)} texts for {features.shape[0]}")
        ids = self.tokenizer.encode(list(texts), self.config.max_text_len).to(self.device)
        with self._autocast():
            _, image_tokens = self.net.pool_image(features)
            return score_texts(self.net, image_tokens, ids).float().cpu()

    def encode_image(self, images: ImageBatch) -> torch.Tensor:
        """PIL images or pixels (b 3 H W) -> unit-norm image latents (b l)."""
        return self.latents_from_features(self.image_features(self._pixels(images)))

    def caption(self, images: ImageBatch, *, beam_width: int = 1, max_len: int = 24) -> list[str]:
        """PIL images or pixels -> one generated caption per image."""
        features = self.image_features(self._pixels(images))
        return self.captions_from_features(features, beam_width=beam_width, max_len=max_len)

    def score_text(self, images: ImageBatch, texts: Sequence[str]) -> torch.Tensor:
        """Pairs of images and texts -> length-normalised log p(text | image) (b)."""
        return self.score_text_from_features(self.image_features(self._pixels(images)), texts)

    # ----- text -----

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> unit-norm text latents (b l) from the decoder's contrastive pass (CLS token)."""
        ids = self.tokenizer.encode(list(texts), self.config.max_text_len).to(self.device)
        with self._autocast():
            return self.net.text_latents(ids).float().cpu()

    def save(self, directory: str | Path, *, dtype: torch.dtype = torch.float32) -> str:
        """Write a checkpoint directory; remembers and returns its sha256."""
        self.checkpoint_sha256 = save_checkpoint(directory, self.net, self.tokenizer, dtype=dtype)
        return self.checkpoint_sha256


def load_model(checkpoint_dir: str | Path | None = None, device: str | torch.device | None = None) -> MammutModel:
    """Load a checkpoint directory (default: the bundled one) onto `device` (default: CUDA if available)."""
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()
    net, tokenizer, sha = load_checkpoint(directory)
    return MammutModel(net, tokenizer, device=device, sha256=sha)


def default_checkpoint_dir() -> Path:
    """The checkpoint bundled with the project (data/checkpoints/default)."""
    return Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "default"
