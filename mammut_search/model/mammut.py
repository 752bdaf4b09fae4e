"""MaMMUT (Kuo et al. 2023, https://arxiv.org/abs/2303.16839): one text decoder trained with two passes.

- contrastive pass: the decoder's self-attention layers only (no cross-attention), bidirectional, read out at a
  CLS token -> text latent; the image's attention-pooled CLS query -> image latent.
- captioning pass: the same decoder, causal, with cross-attention to the attention-pooled image tokens.

einstein notation: b batch, n text length, j image tokens, d model width, c image feature width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from mammut_search.model.config import MammutConfig
from mammut_search.model.image_encoders import build_image_encoder
from mammut_search.model.layers import CrossAttention, LayerNorm, ParallelTransformerBlock, Rotary

MAX_LOGIT_SCALE = 100.0
NUM_CLASSES = 1000  # ImageNet-1k, in the classifier's order


class MaMMUT(nn.Module):
    """The network: image encoder, attention pooler, text decoder and the two latent projections."""

    def __init__(self, config: MammutConfig, *, pretrained_encoder: bool = False):
        super().__init__()
        self.config = c = config
        self.image_encoder = build_image_encoder(c.image_encoder, pretrained=pretrained_encoder)
        self.token_emb = nn.Embedding(c.vocab_size, c.dim)
        self.text_cls_token = nn.Parameter(torch.randn(c.dim) * 0.02)

        # one extra query: its output is the image's CLS for the contrastive latent
        self.img_queries = nn.Parameter(torch.randn(c.num_img_queries + 1, c.dim) * 0.02)
        self.img_attn_pool = CrossAttention(
            c.dim, context_dim=c.image_encoder.feature_dim, dim_head=c.dim_head, heads=c.heads, norm_context=True
        )
        self.img_attn_pool_norm = LayerNorm(c.dim)
        self.text_cls_norm = LayerNorm(c.dim)
        self.img_to_latents = nn.Linear(c.dim, c.dim_latents, bias=False)
        grid = c.image_encoder.grid_tokens * c.image_encoder.feature_dim
        self.img_grid_to_latents = nn.Linear(grid, c.dim_latents) if c.image_grid_latent else None
        self.text_to_latents = nn.Linear(c.dim, c.dim_latents, bias=False)
        if c.semantic_dim:
            # ImageNet class-name embeddings (filled before training, saved with the weights) and the semantic
            # token's three readers: the attention pool, the decoder and the image latent
            self.register_buffer("class_embeddings", torch.zeros(NUM_CLASSES, c.semantic_dim))
            self.semantic_to_context = nn.Linear(c.semantic_dim, c.image_encoder.feature_dim)
            self.semantic_to_token = nn.Sequential(nn.Linear(c.semantic_dim, c.dim), LayerNorm(c.dim))
            self.semantic_to_latents = nn.Linear(c.semantic_dim, c.dim_latents, bias=False)
        # learnable log temperature, initialised like CLIP's 1/0.07 and clamped at 100 where used
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        # rotary tables for a few times the longest text; longer sequences get theirs computed per call
        self.rotary = Rotary(c.dim_head, max_len=4 * c.max_text_len)
        self.self_attn_layers = nn.ModuleList(
            ParallelTransformerBlock(c.dim, dim_head=c.dim_head, heads=c.heads, ff_mult=c.ff_mult)
            for _ in range(c.depth)
        )
        self.cross_attn_layers = nn.ModuleList(
            CrossAttention(c.dim, dim_head=c.dim_head, heads=c.heads, parallel_ff=True, ff_mult=c.ff_mult)
            for _ in range(c.depth)
        )
        self.to_logits_norm = LayerNorm(c.dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    # ----- image side -----

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 H W) -> image encoder tokens (b j c)."""
        return self.image_encoder(pixels)

    def split_features(self, features: torch.Tensor,
                       semantic: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder tokens (b j c) -> (grid tokens (b g c), semantic vector (b s) or None).

        With the semantic token on, the token after the grid is the classifier token: its top-k ImageNet class
        probabilities (renormalised) weight the class-name embeddings. The vector keeps its norm: a confident
        classifier gives a long vector, a spread of unrelated classes a short one. A `semantic` given directly
        (label-only examples, with an empty grid) is passed through."""
        grid = features[:, :self.config.image_encoder.grid_tokens]
        if not self.config.semantic_dim or semantic is not None:  # a classifier token, if any, goes unread
            return grid, semantic
        logits = self.image_encoder.class_logits(features[:, -1].to(self.class_embeddings.dtype)).float()
        top, index = logits.topk(self.config.semantic_top_k, dim=-1)
        weights = top.softmax(dim=-1)  # (b k): the softmax over the top k = full probabilities renormalised
        semantic = torch.einsum("bk,bks->bs", weights, self.class_embeddings.float()[index])
        return grid, semantic.to(features.dtype)

    def pool_image(self, features: torch.Tensor, token_index: torch.Tensor | None = None,
                   semantic: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """features (b j c) -> (image CLS embedding (b d), image tokens for the decoder (b q d)).

        token_index (b g): which of the encoder's grid tokens `features` holds, when some were dropped
        (training). semantic (b s): a semantic vector given directly (label-only training examples, whose grid
        may be empty) instead of the one the classifier token gives.
        """
        grid, semantic = self.split_features(features, semantic)
        context = grid
        if semantic is not None:
            context = torch.cat([grid, self.semantic_to_context(semantic)[:, None].to(grid.dtype)], dim=1)
        queries = repeat(self.img_queries, "q d -> b q d", b=features.shape[0])
        pooled = self.img_attn_pool(queries, self.img_attn_pool.context_kv(context))
        pooled = self.img_attn_pool_norm(pooled)
        tokens = pooled[:, 1:]
        if semantic is not None:
            tokens = torch.cat([tokens, self.semantic_to_token(semantic)[:, None].to(tokens.dtype)], dim=1)
        return pooled[:, 0], tokens

    def image_latents(self, features: torch.Tensor) -> torch.Tensor:
        """features (b j c) -> unit-norm contrastive image latents (b l) (what an index stores: model.retrieval)."""
        _, semantic = self.split_features(features)  # the classifier runs once for both readers
        cls, _ = self.pool_image(features, semantic=semantic)
        return self.contrastive_image_latents(cls, features, semantic=semantic)

    def contrastive_image_latents(self, cls: torch.Tensor, features: torch.Tensor,
                                  token_index: torch.Tensor | None = None,
                                  semantic: torch.Tensor | None = None) -> torch.Tensor:
        """The image CLS (b d) and the tokens it was pooled from (b j c) -> unit-norm latents (b l).

        token_index (b g) as in `pool_image`: dropped tokens are zeros in the grid, the kept ones scaled up
        (inverted dropout), so training and full-grid inference see the same expected input. semantic as in
        `pool_image`.
        """
        grid, semantic = self.split_features(features, semantic)
        latents = self.img_to_latents(cls)
        if self.img_grid_to_latents is not None and grid.shape[1]:
            latents = latents + self.img_grid_to_latents(self.token_grid(grid, token_index).to(latents.dtype))
        if semantic is not None:
            latents = latents + self.semantic_to_latents(semantic.to(latents.dtype))
        return F.normalize(latents, dim=-1)

    def token_grid(self, features: torch.Tensor, token_index: torch.Tensor | None = None) -> torch.Tensor:
        """grid tokens (b g c), or the kept ones with their token_index (b g') -> the flattened grid (b (g c))."""
        if token_index is None:
            return features.flatten(1)
        b, kept, c = features.shape
        n = self.config.image_encoder.grid_tokens
        grid = features.new_zeros(b, n, c).scatter(1, token_index[..., None].expand(-1, -1, c), features)
        return grid.flatten(1) * (n / kept)

    # ----- contrastive text pass -----

    def text_latents(self, text: torch.Tensor) -> torch.Tensor:
        """ids (b n) framed <bos> ... <eos> <pad>... -> unit-norm contrastive latents (b l).

        The CLS token is placed right after each caption's <eos>, so its position, and so its rotary
        distance to the words, does not depend on how much padding the batch needs.
        """
        b, n = text.shape
        lengths = (text != self.config.pad_id).sum(dim=-1)  # (b)
        tokens = self.token_emb(F.pad(text, (0, 1), value=self.config.pad_id))  # (b n+1 d)
        rows = torch.arange(b, device=text.device)
        tokens[rows, lengths] = self.text_cls_token.to(tokens.dtype)
        positions = torch.arange(n + 1, device=text.device)
        keys_valid = positions[None, :] <= lengths[:, None]  # words and CLS; pads are masked
        mask = rearrange(keys_valid, "b j -> b 1 1 j")  # bidirectional: every word sees every other
        rotary = self.rotary(0, n + 1, tokens.dtype)
        for block in self.self_attn_layers:
            tokens, _ = block(tokens, rotary=rotary, attn_mask=mask)
        cls = self.text_cls_norm(tokens[rows, lengths])
        return F.normalize(self.text_to_latents(cls), dim=-1)

    # ----- captioning pass -----

    def cross_attention_kv(self, image_tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pooled image tokens (b q d) -> per layer cross-attention keys/values, computed once per image."""
        return [layer.context_kv(image_tokens) for layer in self.cross_attn_layers]

    def decode(
        self,
        text: torch.Tensor,
        cross_kv: list,
        *,
        cache: list | None = None,
        start: int = 0,
        last_only: bool = False,
        hidden: bool = False,
    ) -> tuple[torch.Tensor, list]:
        """Causal decoder. ids (b n) at positions start..start+n-1 -> (logits (b n vocab), new self-attn cache).

        Without a cache the whole prefix is given; with one, only the new tokens (incremental decoding).
        last_only: logits of the last position only (b 1 vocab), all that generation needs.
        hidden: return the normed final states (b n d) instead of logits, so that training can project only
        the positions that have a target.
        """
        n = text.shape[1]
        x = self.token_emb(text)
        rotary = self.rotary(start, n, x.dtype)
        mask = None
        if cache is None:  # key padding: pads never serve as keys (pads only follow the words)
            valid = rearrange(text != self.config.pad_id, "b j -> b 1 1 j")
            mask = valid & torch.ones(n, n, dtype=torch.bool, device=text.device).tril()
        new_cache = []
        for i, (block, cross) in enumerate(zip(self.self_attn_layers, self.cross_attn_layers)):
            layer_cache = cache[i] if cache is not None else None
            x, kv = block(x, rotary=rotary, attn_mask=mask, cache=layer_cache)
            new_cache.append(kv)
            x = x + cross(x, cross_kv[i])
        if last_only:
            x = x[:, -1:]
        if hidden:
            return self.to_logits_norm(x), new_cache
        logits = self.to_logits_norm(x) @ self.token_emb.weight.t()  # output embedding tied to the input's
        return logits, new_cache

    def caption_log_probs(self, text: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log p(token | earlier tokens, image): ids (b n) -> (b n-1) for tokens 1..n-1;
        zero where the target is padding."""
        logits, _ = self.decode(text[:, :-1], self.cross_attention_kv(image_tokens))
        targets = text[:, 1:]
        log_probs = logits.float().log_softmax(dim=-1).gather(-1, targets[..., None])[..., 0]
        return log_probs * (targets != self.config.pad_id)

    # ----- the losses training minimises (train/objective.py) -----

    def caption_loss(self, caption: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of caption ids (b n) given the pooled image tokens (b q d), averaged over
        the target tokens; pads cost nothing (only positions with a target are projected onto the vocabulary)."""
        hidden, _ = self.decode(caption[:, :-1], self.cross_attention_kv(image_tokens), hidden=True)
        targets = caption[:, 1:]
        real = targets != self.config.pad_id
        logits = hidden[real] @ self.token_emb.weight.t()
        return F.cross_entropy(logits.float(), targets[real])

    def temperature_scale(self) -> torch.Tensor:
        """The contrastive logits' scale: exp(learned log scale), clamped at MAX_LOGIT_SCALE."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
