"""Transformer building blocks of MaMMUT: parallel attention/feed-forward blocks with rotary positions,
multi-query cross-attention, all through `scaled_dot_product_attention` (flash / memory-efficient kernels on GPU).

einstein notation: b batch, h heads, n / i / j sequence (query i, key j), d feature.

At inference (no autograd) the linears that share an input, or whose outputs are summed, run as one matmul over
their concatenated weights (see `fused_weight`): fewer, larger operations per decoding step. The checkpoint
keeps the separate weights; training uses them as they are.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
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


def rotary_tables(positions: torch.Tensor, dim_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (n) -> cos, sin (n d) of rotary embeddings (https://arxiv.org/abs/2104.09864), float32.

    The sin table carries the sign of `rotate_half`: for t = (t1, t2) the rotation is
    t * cos + (-t2, t1) * sin = t * cos + roll(t, d/2) * (-sin1, sin2), one roll instead of split, negate, concat.
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim_head, 2, device=positions.device).float() / dim_head))
    freqs = positions.float()[:, None] * inv_freq  # (n d/2)
    angles = torch.cat((freqs, freqs), dim=-1)
    sin = angles.sin()
    half = dim_head // 2
    return angles.cos(), torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t (... d) rotated by tables from `rotary_tables`, broadcast against t."""
    return t * cos + t.roll(t.shape[-1] // 2, dims=-1) * sin


class Rotary(nn.Module):
    """Rotary tables computed once for max_len positions and sliced per call, rather than recomputed in every
    layer at every decoding step. Buffers, so they follow the module's device; not saved with the weights."""

    def __init__(self, dim_head: int, max_len: int):
        super().__init__()
        self.dim_head = dim_head
        cos, sin = rotary_tables(torch.arange(max_len), dim_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, start: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions start..start+n-1 -> cos, sin (n 1 d) in dtype, to broadcast over (b n h d)."""
        if start + n > self.cos.shape[0]:  # beyond the tables: compute these positions directly
            cos, sin = rotary_tables(torch.arange(start, start + n, device=self.cos.device), self.dim_head)
        else:
            cos, sin = self.cos[start : start + n], self.sin[start : start + n]
        return cos[:, None].to(dtype), sin[:, None].to(dtype)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
) -> torch.Tensor:
    """Multi-query attention: q (b i h d), k and v (b 1 j d) -> (b i (h d)).

    Without a mask every query row sees the same keys, so the heads are folded into the query axis of a
    single attention head (b 1 (i h) d): no copies of the one key/value head, no transposes. With a mask
    (bool (b 1 i j), True where a query may attend) or causal, the key/value head is broadcast over the heads.
    """
    b, i, h, d = q.shape
    if mask is None and not causal:
        out = F.scaled_dot_product_attention(q.reshape(b, 1, i * h, d), k, v)
        return out.view(b, i, h * d)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.expand(-1, h, -1, -1), v.expand(-1, h, -1, -1), attn_mask=mask, is_causal=causal
    )
    return out.transpose(1, 2).reshape(b, i, h * d)


def fused_weight(module: nn.Module, name: str, parts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """The weights `parts` concatenated along `dim` (0: linears sharing an input; 1: linears whose outputs are
    summed), in the autocast dtype when autocast is on, kept on `module` and rebuilt when a part changes in place
    (an optimiser step, load_state_dict), moves, or the dtype changes. For inference only (no autograd)."""
    device = parts[0].device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else parts[0].dtype
    key = (dtype, *((p._version, p.data_ptr()) for p in parts))
    cache = module.__dict__.setdefault("_fused_weights", {})
    if name not in cache or cache[name][0] != key:
        cache[name] = (key, torch.cat([p.detach() for p in parts], dim=dim).to(dtype))
    return cache[name][1]


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
        rotary: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (b n d), rotary: cos, sin (n 1 d) of x's positions -> (x (b n d), (k, v) each (b 1 j d) with the cache).

        attn_mask: bool (b 1 i j), True where a query may attend; or is_causal for the plain causal case.
        cache: keys/values of earlier positions; the new ones are appended (incremental decoding).
        """
        b, n, _ = x.shape
        h, d = self.heads, self.dim_head
        proj = self.fused_attn_ff_proj(self.norm(x))
        # queries and the one key head sit side by side in the projection: rotate them together, (b n h+1 d)
        qk = apply_rotary(proj[..., : (h + 1) * d].view(b, n, h + 1, d), *rotary)
        q, k = qk[:, :, :h], qk[:, :, h:].transpose(1, 2)  # (b n h d), (b 1 n d)
        v = proj[..., (h + 1) * d : (h + 2) * d].unsqueeze(1)  # (b 1 n d)
        ff = proj[..., (h + 2) * d :]
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=-2), torch.cat((cache[1], v), dim=-2)
        out = attention(q, k, v, attn_mask, is_causal and attn_mask is None)
        if torch.is_grad_enabled():
            return x + self.attn_out(out) + self.ff_out(ff), (k, v)
        # inference: both output projections in one matmul over [attention | gated ff] (b n _)
        weight = fused_weight(self, "out", (self.attn_out.weight, self.ff_out[1].weight), dim=1)
        return x + F.linear(torch.cat((out, self.ff_out[0](ff)), dim=-1), weight), (k, v)


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
        self.heads, self.dim_head = heads, dim_head
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
        k, v = self.to_kv(self.context_norm(context)).unsqueeze(1).chunk(2, dim=-1)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x (b i d), kv from `context_kv` -> (b i d), without the residual."""
        b, i, _ = x.shape
        normed = self.norm(x)
        if self.ff is not None and not torch.is_grad_enabled():
            return self._fused_forward(normed, kv)
        q = self.to_q(normed).view(b, i, self.heads, self.dim_head)
        out = self.to_out(attention(q, *kv, mask=None, causal=False))
        if self.ff is not None:
            out = out + self.ff(normed)
        return out

    def _fused_forward(self, normed: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Inference with the parallel feed-forward: queries and ff input from one matmul, the attention and ff
        outputs projected by another."""
        b, i, _ = normed.shape
        inner = self.heads * self.dim_head
        q_ff = F.linear(normed, fused_weight(self, "in", (self.to_q.weight, self.ff[0].weight), dim=0))
        q = q_ff[..., :inner].reshape(b, i, self.heads, self.dim_head)
        hidden = torch.cat((attention(q, *kv, mask=None, causal=False), self.ff[1](q_ff[..., inner:])), dim=-1)
        return F.linear(hidden, fused_weight(self, "out", (self.to_out.weight, self.ff[2].weight), dim=1))
