"""The CLIP byte-pair tokenizer that open_clip models read (49,408 tokens), rebuilt as a HF `tokenizers` file.

Its vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT), shipped inside the `open-clip-torch` wheel. It is
read once, when a checkpoint is converted, and the result lives in the checkpoint's tokenizer.json: nothing is
downloaded at run time, and open_clip itself is never imported (it does not load beside our torch).

open_clip tokenizes `clip_clean(text)` (ftfy, HTML entities, whitespace, lower case) by a regular expression of
words, digits and punctuation runs, each word's UTF-8 bytes spelled with printable characters, and merges with
'</w>' closing each word; `clip_clean` runs in Python here, the rest inside `tokenizers`.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from pathlib import Path

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
START, END = "<start_of_text>", "<end_of_text>"
# merges the vocabulary file holds beyond the 256 bytes, the 256 bytes closing a word and the two specials
NUM_MERGES = 49152 - 256 - 2
WORD_PATTERN = START + "|" + END + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_clean(text: str) -> str:
    """open_clip's text cleaning ('lower'): ftfy's fixes, HTML entities unescaped twice, whitespace runs to one
    space, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def byte_alphabet() -> list[str]:
    """The printable character that stands for each byte 0..255, in open_clip's order (printable Latin-1 bytes
    stand for themselves, the others for code points from 256 up)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in printable] + [chars[b] for b in range(256) if b not in printable]


def find_clip_vocab() -> Path | None:
    """The vocabulary file inside an installed open-clip-torch (located without importing it), or None."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / VOCAB_FILE
    return path if path.is_file() else None


def build_clip_tokenizer(vocab_file: str | Path) -> HFTokenizer:
    """bpe_simple_vocab_16e6.txt.gz -> a `tokenizers` tokenizer giving open_clip's ids for clip_clean'ed text."""
    lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{vocab_file}: not the CLIP BPE vocabulary ({len(merges)} merges, {NUM_MERGES} expected)")
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [START, END]
    vocab = {token: i for i, token in enumerate(tokens)}
    hf = HFTokenizer(models.BPE(vocab, merges, end_of_word_suffix="</w>"))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("(?i)" + WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    hf.add_special_tokens([START, END])
    return hf
