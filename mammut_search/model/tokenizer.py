"""Text tokenizer: a HF `tokenizers` model with beginning, end and padding tokens, saved as tokenizer.json.

Three framings are recognised by their special tokens: our own BPE's, BERT's (MiniLM's WordPiece) and CLIP's
(open_clip checkpoints: <start_of_text> ... <end_of_text>, padded with id 0, text cleaned as open_clip cleans it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from mammut_search.model.clip_tokenizer import END, START, clip_clean

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# BERT-style WordPiece vocabularies (e.g. MiniLM's) frame texts with [CLS] ... [SEP]
BERT_SPECIALS = ("[PAD]", "[CLS]", "[SEP]")


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer`; ids are framed as <bos> text <eos> and right-padded with <pad>."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.clean = str.strip
        clip = [hf.token_to_id(name) for name in (START, END)]
        for names in ((PAD, BOS, EOS), BERT_SPECIALS):
            ids = [hf.token_to_id(name) for name in names]
            if None not in ids:
                self.pad_id, self.bos_id, self.eos_id = ids
                break
        else:
            if None in clip:
                raise ValueError(f"tokenizer has none of {(PAD, BOS, EOS)}, {BERT_SPECIALS}, {(START, END)} "
                                 "special tokens")
            # open_clip pads with id 0, a real token ("!"): the pad id only fills rows after <end_of_text>
            self.pad_id, (self.bos_id, self.eos_id), self.clean = 0, clip, clip_clean
        # ids that decoding drops (it stops at <eos>, after which CLIP's pads come)
        self.not_text = {self.bos_id} if self.clean is clip_clean else {self.bos_id, self.pad_id}
        self.hf.no_padding()
        self.hf.no_truncation()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """Read a tokenizer.json written by `save`."""
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def encode(self, texts: list[str], max_len: int) -> torch.Tensor:
        """texts -> ids (b n), n <= max_len, each row <bos> ... <eos> then pads; over-long texts are cut."""
        if max_len < 3:
            raise ValueError("max_len must leave room for <bos>, one token and <eos>")
        rows = []
        for encoding in self.hf.encode_batch([self.clean(text) for text in texts], add_special_tokens=False):
            rows.append([self.bos_id, *encoding.ids[: max_len - 2], self.eos_id])
        width = max(len(row) for row in rows)
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def token_count(self, text: str) -> int:
        """Number of word-piece tokens in a text, without the frame."""
        return len(self.hf.encode(self.clean(text), add_special_tokens=False).ids)

    def whole_words(self) -> list[str]:
        """The vocabulary's whole words of lower-case letters, 4 or more, sorted (in CLIP's vocabulary the tokens
        that close a word, '</w>' dropped; elsewhere the tokens that are such words)."""
        vocab = self.hf.get_vocab()
        pattern = r"([a-z]{4,})</w>" if self.clean is clip_clean else r"([a-z]{4,})"
        return sorted(m[1] for w in vocab if (m := re.fullmatch(pattern, w)))

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text, stopping at <eos> and dropping special tokens."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in self.not_text:
                words.append(i)
        return self.hf.decode(words, skip_special_tokens=True).strip()


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train a lower-cased byte-pair encoding on caption texts."""
    hf = HFTokenizer(models.BPE(unk_token=UNK))
    hf.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # byte-level, so that no query character is ever unknown
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)
