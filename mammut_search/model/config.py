"""Model configuration: dataclasses that round-trip through the checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageEncoderConfig:
    """Which image encoder turns pixels into image tokens, and how images are prepared for it."""

    kind: str = "efficientnet_lite0"  # "efficientnet_lite0" (ImageNet-pretrained) or "vit" (from scratch)
    image_size: int = 160
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited onto this colour
    trainable_blocks: int = 0  # efficientnet: how many of the last MBConv blocks are fine-tuned (0 = frozen)
    # vit only
    patch_size: int = 16
    vit_dim: int = 256
    vit_depth: int = 4
    vit_heads: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("efficientnet_lite0", "vit"):
            raise ValueError(f"unknown image encoder kind {self.kind!r}: use 'efficientnet_lite0' or 'vit'")
        self.mean, self.std, self.background = tuple(self.mean), tuple(self.std), tuple(self.background)

    @property
    def feature_dim(self) -> int:
        """Width of the image tokens this encoder produces."""
        return 1280 if self.kind == "efficientnet_lite0" else self.vit_dim

    @property
    def num_tokens(self) -> int:
        """How many image tokens this encoder produces: EfficientNet's feature map is 1/32 of the input."""
        side = -(-self.image_size // 32) if self.kind == "efficientnet_lite0" else self.image_size // self.patch_size
        return side * side


@dataclass
class MammutConfig:
    """Architecture of the MaMMUT decoder, its image side and its tokenizer's special ids."""

    vocab_size: int
    dim: int = 256
    depth: int = 3
    heads: int = 4
    dim_head: int = 64
    ff_mult: int = 4
    cross_attend_every: int = 1
    num_img_queries: int = 64
    dim_latents: int = 256
    max_text_len: int = 32
    contrastive_mask: str = "bidirectional"  # the paper's default; "causal" is the reference code's
    # learned positions added to the image tokens before the attention pool (a CNN's feature map carries none)
    image_token_positions: bool = False
    # a linear map of the whole token grid added to the image latent: keeps the layout that pooling averages away
    image_grid_latent: bool = False
    caption_loss_weight: float = 1.0
    contrastive_loss_weight: float = 1.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    training: dict[str, Any] = field(default_factory=dict)  # the training card: data, steps, hardware, metrics

    def __post_init__(self) -> None:
        if isinstance(self.image_encoder, dict):
            self.image_encoder = ImageEncoderConfig(**self.image_encoder)
        if self.contrastive_mask not in ("bidirectional", "causal"):
            raise ValueError(f"contrastive_mask must be 'bidirectional' or 'causal', not {self.contrastive_mask!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MammutConfig":
        """Inverse of to_dict; unknown keys are an error so a typo never goes unnoticed."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)
