"""The CLIP BPE tokenizer rebuilt as a tokenizers file gives open_clip's ids: the fixture holds the reference
tokenizer's rows (tools/openmammut_fixtures.py) for 240 strings, unicode, HTML entities and mojibake included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammut_search.errors import CheckpointError
from mammut_search.model import open_clip_convert
from mammut_search.model.clip_tokenizer import END, START, find_clip_vocab
from mammut_search.model.open_clip_convert import clip_tokenizer
from mammut_search.model.tokenizer import Tokenizer

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "openmammut" / "tokenizer.json").read_text())


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    assert find_clip_vocab() is not None, "the CLIP vocabulary comes with open-clip-torch (make setup installs it)"
    return clip_tokenizer()


def test_ids_equal_open_clip_on_every_string(tokenizer):
    strings, expected = REFERENCE["strings"], REFERENCE["ids"]
    assert len(strings) >= 200 and any(not s.isascii() for s in strings)
    ours = [tokenizer.encode([s], 77)[0].tolist() for s in strings]
    wrong = [(s, o, e) for s, o, e in zip(strings, ours, expected) if o != e]
    assert not wrong, f"{len(wrong)} strings differ, first: {wrong[0]}"


def test_a_batch_is_framed_and_padded_as_open_clip_pads(tokenizer):
    ids = tokenizer.encode(["a photo of a cat", "x"], 77)
    assert tokenizer.vocab_size == 49408 and (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (49406, 49407, 0)
    assert ids[:, 0].tolist() == [49406] * 2 and ids[1, 2] == 49407 and ids[1, 3:].tolist() == [0] * 4


def test_decoding_gives_open_clip_text_back(tokenizer):
    checked = 0
    for string, ids, decoded in zip(REFERENCE["strings"], REFERENCE["ids"], REFERENCE["decoded"]):
        if START in string.lower() or END in string.lower() or len(ids) == 77:
            continue  # special tokens are dropped here; cut texts decode to less
        assert tokenizer.decode(ids) == decoded.strip(), string
        checked += 1
    assert checked >= 200


def test_without_the_vocabulary_conversion_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(open_clip_convert, "find_clip_vocab", lambda: None)
    with pytest.raises(CheckpointError, match="open-clip-torch"):
        clip_tokenizer()
    (tmp_path / "vocab.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(CheckpointError, match="vocab.txt.gz"):
        clip_tokenizer(tmp_path / "vocab.txt.gz")


def test_whole_words_are_the_tokens_that_close_a_word(tokenizer):
    """What the relevance cut-off encodes as unrelated queries: whole words, not the pieces words start with."""
    words = tokenizer.whole_words()
    assert len(words) > 10_000 and {"photo", "house", "absence"} <= set(words)
    assert "accommod" not in words and not any("</w>" in w for w in words)
