"""Transformer building blocks of MaMMUT: parallel attention/feed-forward blocks with rotary positions,
multi-query cross-attention, all through `scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).

einstein notation: b batch, h heads, n / i / j sequence (query i, key j), d feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with a learned gain and no bias (as in PaLM)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x


def rotary_angles(positions: torch.Tensor, dim_head: int) -> torch.Tensor:
    """positions (b n) or (n) -> angles (... n d) for rotary embeddings (https://arxiv.org/abs/2104.09864)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim_head, 2, device=positions.device).float() / dim_head))
    freqs = positions.float()[..., None] * inv_freq
    return torch.cat((freqs, freqs), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(angles: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t * angles.cos().to(t.dtype) + rotate_half(t) * angles.sin().to(t.dtype)


class ParallelTransformerBlock(nn.Module):
    """Self-attention and feed-forward computed in parallel from one normed input (PaLM), multi-query
    attention (one key/value head), rotary positions. Residual added by the block itself."""

    def __init__(self, dim: int, *, dim_head: int = 64, heads: int = 8, ff_mult: int = 4):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.heads, self.dim_head = heads, dim_head
        attn_inner, ff_inner = dim_head * heads, dim * ff_mult
        self.fused_dims = (attn_inner, dim_head, dim_head, ff_inner * 2)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.fused_dims), bias=False)
        self.attn_out = nn.Linear(attn_inner, dim, bias=False)
        self.ff_out = nn.Sequential(SwiGLU(), nn.Linear(ff_inner, dim, bias=False))

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (b n d), positions (b n) or (n) -> (x (b n d), (k, v) each (b 1 j d) including the cache).

        attn_mask: bool (b 1 i j), True where a query may attend; or is_causal for the plain causal case.
        cache: keys/values of earlier positions; the new ones are appended (incremental decoding).
        """
        normed = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(normed).split(self.fused_dims, dim=-1)
        q = rearrange(q, "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(k, "b n d -> b 1 n d"), rearrange(v, "b n d -> b 1 n d")
        angles = rotary_angles(positions, self.dim_head)
        if angles.ndim == 3:
            angles = rearrange(angles, "b n d -> b 1 n d")
        q, k = apply_rotary(angles, q), apply_rotary(angles, k)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=-2), torch.cat((cache[1], v), dim=-2)
        out = F.scaled_dot_product_attention(
            q, k.expand(-1, self.heads, -1, -1), v.expand(-1, self.heads, -1, -1),
            attn_mask=attn_mask, is_causal=is_causal and attn_mask is None,
        )
        out = rearrange(out, "b h n d -> b n (h d)")
        return x + self.attn_out(out) + self.ff_out(ff), (k, v)


class CrossAttention(nn.Module):
    """Queries from x attend to a context (image tokens) through one key/value head, optionally with a
    parallel feed-forward. Keys/values can be computed once per image and reused at every decoding step."""

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int | None = None,
        dim_head: int = 64,
        heads: int = 8,
        parallel_ff: bool = False,
        ff_mult: int = 4,
        norm_context: bool = False,
    ):
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads
        self.norm = LayerNorm(dim)
        self.context_norm = LayerNorm(context_dim) if norm_context else nn.Identity()
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        ff_inner = ff_mult * dim
        self.ff = (
            nn.Sequential(nn.Linear(dim, ff_inner * 2, bias=False), SwiGLU(), nn.Linear(ff_inner, dim, bias=False))
            if parallel_ff
            else None
        )

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (b j c) -> keys, values, each (b 1 j d)."""
        k, v = self.to_kv(self.context_norm(context)).chunk(2, dim=-1)
        return rearrange(k, "b j d -> b 1 j d"), rearrange(v, "b j d -> b 1 j d")

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x (b i d), kv from `context_kv` -> (b i d), without the residual."""
        normed = self.norm(x)
        q = rearrange(self.to_q(normed), "b i (h d) -> b h i d", h=self.heads)
        k, v = kv
        out = F.scaled_dot_product_attention(q, k.expand(-1, self.heads, -1, -1), v.expand(-1, self.heads, -1, -1))
        out = self.to_out(rearrange(out, "b h i d -> b i (h d)"))
        if self.ff is not None:
            out = out + self.ff(normed)
        return out
