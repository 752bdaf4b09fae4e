"""MaMMUT in the open_clip layout, as LAION trained openMaMMUT: a ViT image tower and one text transformer used
in two passes (Kuo et al. 2023, https://arxiv.org/abs/2303.16839).

- image: class token + patches with learned positions, ln_pre, pre-norm blocks; the image latent is
  ln_post(mean over all tokens, class token included) @ proj; the decoder reads every token, mapped to the text
  width by map_viz2txt_kv.
- contrastive text pass: the text transformer's self-attention blocks only, bidirectional, over the ids padded to
  the full context length; the text latent is ln_final's output averaged over every position, pads included.
- captioning pass: the same blocks, causal, with a cross-attention block after every `cross_step`-th block
  (counting from the first); logits = ln_final(x) @ text_projection.

Parameter names are open_clip's, so its state dicts load by name (see open_clip_convert).
einstein notation: b batch, n text length, j image tokens, v vision width, w text width, e latent width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammut_search.model.open_clip_layers import KV, Blocks, CrossAttentionBlock, ResidualBlock

KIND = "open_clip_mammut"
# open_clip's default normalisation (OpenAI CLIP's), used by openMaMMUT
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class OpenClipVisionConfig:
    """The ViT tower and the image preprocessing open_clip trained it with."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    head_width: int = 64
    mlp_ratio: float = 4.0
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels are composited onto this colour
    # open_clip's preprocessing: the shortest side resized (bicubic) to image_size, then the centre square cut
    # (our own encoders see the whole image, fitted onto a square of background)
    centre_crop: bool = True

    def __post_init__(self) -> None:
        self.mean, self.std, self.background = tuple(self.mean), tuple(self.std), tuple(self.background)

    @property
    def kind(self) -> str:
        """The encoder's name, as our own encoders' configs give it."""
        return "open_clip_vit"

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_tokens(self) -> int:
        """Patches: the convolution drops a remainder, as open_clip's does (512 px at patch 14: 36 x 36)."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class OpenMammutConfig:
    """An open_clip MaMMUT: its towers, the CLIP BPE tokenizer's ids, the preprocessing and where it came from."""

    kind: str = KIND
    embed_dim: int = 768
    vocab_size: int = 49408
    max_text_len: int = 77  # open_clip's context_length: the contrastive pass always reads this many positions
    text_width: int = 768
    text_heads: int = 12
    text_layers: int = 12
    text_mlp_ratio: float = 4.0
    cross_attn_ratio: int = 2
    has_mlp: bool = True  # whether the self-attention blocks followed by cross-attention have a feed-forward
    text_pooling: str = "mean"  # the text latent: ln_final's output averaged over all positions, pads included
    tokenizer: str = "clip_bpe"
    pad_id: int = 0  # open_clip pads with id 0 (the token "!"), which never ends a caption here
    bos_id: int = 49406
    eos_id: int = 49407
    image_encoder: OpenClipVisionConfig = field(default_factory=OpenClipVisionConfig)
    training: dict[str, Any] = field(default_factory=dict)  # the card: where the weights came from

    def __post_init__(self) -> None:
        if isinstance(self.image_encoder, dict):
            self.image_encoder = OpenClipVisionConfig(**self.image_encoder)
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r}, not {self.kind!r}")
        if self.text_pooling != "mean" or self.tokenizer != "clip_bpe":
            raise ValueError("an open_clip MaMMUT pools its text by the mean and uses the CLIP BPE tokenizer")
        if self.text_width != self.embed_dim:
            raise ValueError(f"text width {self.text_width} must equal embed_dim {self.embed_dim}: the text latent "
                             "is the unprojected text state")
        if not 1 <= self.cross_attn_ratio <= self.text_layers:
            raise ValueError(f"cross_attn_ratio {self.cross_attn_ratio} must be between 1 and {self.text_layers}")

    @property
    def cross_step(self) -> int:
        """Cross-attention follows blocks 0, cross_step, 2 * cross_step, ... (open_clip's arithmetic)."""
        return self.text_layers // (self.text_layers // self.cross_attn_ratio)

    @property
    def retrieval_dim(self) -> int:
        return self.embed_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OpenMammutConfig":
        """Inverse of to_dict; unknown keys are an error."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


class VisionTower(nn.Module):
    """open_clip's VisionTransformer with pool_type avg_all and final_ln_after_pool."""

    def __init__(self, c: OpenClipVisionConfig, embed_dim: int):
        super().__init__()
        scale = c.width ** -0.5
        self.conv1 = nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(c.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(c.grid_tokens + 1, c.width))
        self.ln_pre = nn.LayerNorm(c.width)
        self.transformer = Blocks(c.width, c.layers, c.heads, c.mlp_ratio)
        self.ln_post = nn.LayerNorm(c.width)
        self.proj = nn.Parameter(scale * torch.randn(c.width, embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> the last block's tokens (b j v), class token first (not normed)."""
        patches = self.conv1(pixels).flatten(2).transpose(1, 2)  # (b g v)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + self.positional_embedding.to(patches.dtype)
        return self.transformer(self.ln_pre(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b j v) -> image latent before normalisation (b e): mean of all tokens, ln_post, proj."""
        return self.ln_post(tokens.mean(dim=1)) @ self.proj


class TextDecoder(nn.Module):
    """open_clip's MultimodalTransformer with does_full_decoding: embeddings, blocks, cross-attention blocks."""

    def __init__(self, c: OpenMammutConfig):
        super().__init__()
        w = c.text_width
        self.cross_step = c.cross_step
        self.token_embedding = nn.Embedding(c.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.randn(c.max_text_len, w) * 0.01)
        self.resblocks = nn.ModuleList(
            ResidualBlock(w, c.text_heads, mlp_ratio=c.text_mlp_ratio, has_mlp=bool(c.has_mlp or i % self.cross_step))
            for i in range(c.text_layers)
        )
        self.cross_attn = nn.ModuleList(
            CrossAttentionBlock(w, c.text_heads, mlp_ratio=c.text_mlp_ratio)
            for i in range(c.text_layers) if i % self.cross_step == 0
        )
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.randn(w, c.vocab_size) * w ** -0.5)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids (b n) at positions start.. -> (b n w)."""
        return self.token_embedding(ids) + self.positional_embedding[start:start + ids.shape[1]]


class OpenMammut(nn.Module):
    """The network; the same methods as our own MaMMUT, so that inference, decoding and search serve either."""

    def __init__(self, config: OpenMammutConfig):
        super().__init__()
        self.config = c = config
        self.visual = VisionTower(c.image_encoder, c.embed_dim)
        self.text = TextDecoder(c)
        self.map_viz2txt_kv = nn.Parameter(torch.randn(c.image_encoder.width, c.text_width) * c.text_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))  # log(1 / 0.07), as open_clip starts it

    @property
    def image_encoder(self) -> nn.Module:
        """pixels (b 3 H W) -> image tokens (b j v): the part of the model an image passes once."""
        return self.visual

    @property
    def token_emb(self) -> nn.Embedding:
        return self.text.token_embedding

    # ----- image side -----

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> image tokens (b j v)."""
        return self.visual(pixels)

    def image_latents(self, features: torch.Tensor) -> torch.Tensor:
        """image tokens (b j v) -> unit-norm image latents (b e)."""
        return F.normalize(self.visual.pool(features), dim=-1)

    def pool_image(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image tokens (b j v) -> (image latent before normalisation (b e), the decoder's image tokens (b j w))."""
        return self.visual.pool(features), features @ self.map_viz2txt_kv.to(features.dtype)

    # ----- contrastive text pass -----

    def text_latents(self, text: torch.Tensor) -> torch.Tensor:
        """ids (b n), n <= max_text_len, framed <sot> ... <eot> then pads -> unit-norm text latents (b e)."""
        c = self.config
        text = F.pad(text, (0, c.max_text_len - text.shape[1]), value=c.pad_id)
        x = self.text.embed(text)
        for block in self.text.resblocks:
            x, _ = block(x)
        return F.normalize(self.text.ln_final(x).mean(dim=1), dim=-1)

    # ----- captioning pass -----

    def cross_attention_kv(self, image_tokens: torch.Tensor) -> list[KV | None]:
        """Decoder image tokens (b j w) -> per text block the keys/values of the cross-attention after it."""
        step = self.config.cross_step
        return [self.text.cross_attn[i // step].context_kv(image_tokens) if i % step == 0 else None
                for i in range(len(self.text.resblocks))]

    def decode(self, text: torch.Tensor, cross_kv: list, *, cache: list | None = None, start: int = 0,
               last_only: bool = False, hidden: bool = False) -> tuple[torch.Tensor, list]:
        """Causal decoder. ids (b n) at positions start..start+n-1 -> (logits (b n vocab), new self-attn cache).

        With a cache, only the new tokens are given (incremental decoding). last_only: the last position's
        logits only. hidden: the normed final states (b n w) instead of logits."""
        x = self.text.embed(text, start)
        step, new_cache = self.config.cross_step, []
        for i, block in enumerate(self.text.resblocks):
            x, kv = block(x, causal=True, cache=cache[i] if cache is not None else None)
            new_cache.append(kv)
            if cross_kv[i] is not None:
                x = self.text.cross_attn[i // step](x, cross_kv[i])
        if last_only:
            x = x[:, -1:]
        x = self.text.ln_final(x)
        return (x if hidden else x @ self.text.text_projection.to(x.dtype)), new_cache

    def caption_log_probs(self, text: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log p(token | earlier tokens, image): ids (b n) -> (b n-1) for tokens 1..n-1; zero
        after the first <eot> (the pad id is a real token of this vocabulary, so pads are told by position)."""
        logits, _ = self.decode(text[:, :-1], self.cross_attention_kv(image_tokens))
        targets = text[:, 1:]
        log_probs = logits.float().log_softmax(dim=-1).gather(-1, targets[..., None])[..., 0]
        ends = (targets == self.config.eos_id).long()
        after_end = (ends.cumsum(dim=1) - ends) > 0
        return log_probs.masked_fill(after_end, 0.0)
