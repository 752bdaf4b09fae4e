"""Transformer layers of the open_clip layout: pre-norm residual blocks (LayerNorm with bias, GELU MLP,
multi-head attention with one packed input projection), parameter names as open_clip's state dicts spell them, so
that its weights load by name. Attention runs through `scaled_dot_product_attention`, with a key/value cache for
incremental decoding and cross-attention keys/values computed once per image.

einstein notation: b batch, h heads, n / i / j sequence (query i, key j), d feature, w width.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values, each (b h j d)


class Attention(nn.Module):
    """Multi-head attention holding nn.MultiheadAttention's parameters: in_proj_weight (3w w) packs the query,
    key and value projections; out_proj is the output projection."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b n w) -> (b h n d)"""
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b h n d) -> out_proj of (b n w)"""
        b, h, n, d = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, n, h * d))

    def context_kv(self, context: torch.Tensor) -> KV:
        """context (b j w) -> keys, values (b h j d): what cross-attention reads of an image, computed once."""
        width = context.shape[-1]
        kv = F.linear(context, self.in_proj_weight[width:], self.in_proj_bias[width:])
        k, v = kv.chunk(2, dim=-1)
        return self._split_heads(k), self._split_heads(v)

    def cross(self, x: torch.Tensor, kv: KV) -> torch.Tensor:
        """x (b i w) attends to keys/values from `context_kv` -> (b i w)."""
        width = x.shape[-1]
        q = self._split_heads(F.linear(x, self.in_proj_weight[:width], self.in_proj_bias[:width]))
        return self._merge_heads(F.scaled_dot_product_attention(q, *kv))

    def forward(self, x: torch.Tensor, *, causal: bool = False, cache: KV | None = None) -> tuple[torch.Tensor, KV]:
        """Self-attention: x (b n w) -> (out (b n w), keys/values (b h j d) including the cached ones).

        causal: each position sees itself and earlier ones; with a cache, the new positions follow the cached."""
        q, k, v = (self._split_heads(t) for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        n, total = q.shape[2], k.shape[2]
        mask = None
        if causal and n > 1:  # one new position sees every key; more need the lower triangle, offset by the cache
            mask = torch.ones(n, total, dtype=torch.bool, device=x.device).tril(diagonal=total - n)
        return self._merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), (k, v)


def mlp(width: int, ratio: float) -> nn.Sequential:
    """The feed-forward: c_fc, exact GELU, c_proj."""
    hidden = int(width * ratio)
    return nn.Sequential(OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, width)))


class ResidualBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)) when the block has a feed-forward."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0, has_mlp: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        if has_mlp:
            self.ln_2 = nn.LayerNorm(width)
            self.mlp = mlp(width, mlp_ratio)
        else:
            self.ln_2 = self.mlp = None

    def forward(self, x: torch.Tensor, *, causal: bool = False, cache: KV | None = None) -> tuple[torch.Tensor, KV]:
        """x (b n w) -> (x (b n w), self-attention keys/values, cache included)."""
        out, kv = self.attn(self.ln_1(x), causal=causal, cache=cache)
        x = x + out
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x, kv


class CrossAttentionBlock(nn.Module):
    """Text attends to image tokens: x + attn(ln_1(x), ln_1_kv(image)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.ln_1_kv = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = mlp(width, mlp_ratio)

    def context_kv(self, image: torch.Tensor) -> KV:
        """image tokens (b j w) -> this block's keys, values (b h j d)."""
        return self.attn.context_kv(self.ln_1_kv(image))

    def forward(self, x: torch.Tensor, kv: KV) -> torch.Tensor:
        """x (b i w), kv from `context_kv` -> (b i w)."""
        x = x + self.attn.cross(self.ln_1(x), kv)
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.Module):
    """A stack of residual blocks (open_clip's `transformer.resblocks`), bidirectional."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads, mlp_ratio=mlp_ratio) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x, _ = block(x)
        return x
