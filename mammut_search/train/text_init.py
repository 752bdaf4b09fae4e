"""Pretrained text semantics from all-MiniLM-L6-v2 (mammut_search/model/minilm.py) for training: its WordPiece
tokenizer (cut down to a compact vocabulary) and its 384-d word embeddings as the decoder's initial token
embeddings. Its sentence embeddings, the distillation target for the text latents, come from model/minilm.py.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer

from mammut_search.errors import UserError
from mammut_search.model.minilm import MINILM_DIM, minilm_dir
from mammut_search.model.tokenizer import Tokenizer

# Special and character tokens of BERT's uncased vocabulary come first (ids < 1996), then whole words and
# word pieces roughly by frequency: keeping the first ids keeps every character, so no text is ever [UNK].
FIRST_WORD_ID = 1996


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
