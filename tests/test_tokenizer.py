from mammut_search.model.tokenizer import Tokenizer, train_bpe


def test_frame_padding_truncation_and_round_trip(tmp_path):
    tok = train_bpe(["an octopus", "a red apple", "a picture of an octopus"] * 5, vocab_size=300, min_frequency=1)
    ids = tok.encode(["An Octopus", "a picture of an octopus 🐙 in the sea"], max_len=8)
    assert ids.shape == (2, 8)
    assert ids[0, 0] == tok.bos_id and tok.eos_id in ids[0].tolist() and ids[0, -1] == tok.pad_id
    assert ids[1, -1] == tok.eos_id  # cut to max_len, still closed
    assert tok.decode(ids[0]) == "an octopus"
    full = tok.encode(["a picture of an octopus 🐙"], max_len=64)
    assert tok.decode(full[0]) == "a picture of an octopus 🐙"  # byte-level: nothing is unknown
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.encode(["an octopus"], 8).tolist() == tok.encode(["an octopus"], 8).tolist()
