"""Caption decoding with and without the key/value cache, beam search, and query likelihood."""

import torch
from PIL import Image

from mammut_search.model.decoding import block_repeated_ngrams, generate
from mammut_search.testing import tiny_model


def pictures():
    return [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255), (0, 200, 0), (0, 0, 0)]]


def test_cached_and_uncached_logits_agree(model):
    net = model.net
    features = model.image_features(model.preprocess(pictures()[:2]))
    _, image_tokens = net.pool_image(features)
    cross_kv = net.cross_attention_kv(image_tokens)
    ids = model.tokenizer.encode(["a drawing of a house", "a red apple and a star"], 16)
    ids = ids[:, :6]  # a prefix without padding in either row
    full, _ = net.decode(ids, cross_kv)
    cache, steps = None, []
    for t in range(ids.shape[1]):
        logits, cache = net.decode(ids[:, t : t + 1], cross_kv, cache=cache, start=t)
        steps.append(logits)
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-4)


def test_cached_and_uncached_greedy_captions_agree(model):
    features = model.image_features(model.preprocess(pictures()))
    _, image_tokens = model.net.pool_image(features)
    cached = generate(model.net, image_tokens, max_len=12, use_cache=True)
    uncached = generate(model.net, image_tokens, max_len=12, use_cache=False)
    assert torch.equal(cached, uncached)


def test_beam_width_one_is_greedy(model):
    features = model.image_features(model.preprocess(pictures()))
    _, image_tokens = model.net.pool_image(features)
    assert torch.equal(generate(model.net, image_tokens, max_len=12, beam_width=1),
                       generate(model.net, image_tokens, max_len=12, beam_width=1, use_cache=False))
    greedy = model.captions_from_features(features, beam_width=1, max_len=12)
    assert greedy == model.caption(pictures(), beam_width=1, max_len=12)


def test_beam_search_finds_at_least_as_likely_a_caption_as_greedy(model):
    imgs = pictures()
    greedy = model.caption(imgs, beam_width=1, max_len=10)
    beam = model.caption(imgs, beam_width=4, max_len=10)
    assert len(beam) == len(imgs) and all(isinstance(c, str) for c in beam)
    greedy_score = model.score_text(imgs, greedy)
    beam_score = model.score_text(imgs, beam)
    # the beam's length-normalised score can't be much worse than greedy's (ties and truncation aside)
    assert (beam_score >= greedy_score - 0.5).all()


def test_max_len_and_no_endless_repetition(model):
    features = model.image_features(model.preprocess(pictures()))
    _, image_tokens = model.net.pool_image(features)
    ids = generate(model.net, image_tokens, max_len=20, no_repeat_ngram=2)
    assert ids.shape[1] <= 21
    for row in ids.tolist():
        words = [t for t in row if t not in (model.config.pad_id,)]
        bigrams = list(zip(words, words[1:]))
        assert len(bigrams) == len(set(bigrams))
        assert model.config.eos_id in row


def test_score_text_ranks_matching_caption_first_on_overfitted_model():
    m = tiny_model(seed=3)
    imgs = pictures()
    texts = ["a red apple", "the blue sea", "a green tree", "a black dog"]
    ids = m.tokenizer.encode(texts, 16)
    pixels = m.preprocess(imgs)
    net = m.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        net(ids, pixels=pixels)["loss"].backward()
        opt.step()
    net.eval()
    for i in range(len(imgs)):
        scores = m.score_text([imgs[i]] * len(texts), texts)
        assert scores.argmax().item() == i
    assert m.caption(imgs) == texts


def test_cached_and_uncached_beam_search_agree(model):
    features = model.image_features(model.preprocess(pictures()))
    _, image_tokens = model.net.pool_image(features)
    cached = generate(model.net, image_tokens, max_len=12, beam_width=3, use_cache=True)
    uncached = generate(model.net, image_tokens, max_len=12, beam_width=3, use_cache=False)
    assert torch.equal(cached, uncached)


def test_decoding_past_the_rotary_tables_matches_uncached(model):
    """Positions beyond the precomputed rotary tables are computed on the fly, with the same result."""
    _, image_tokens = model.net.pool_image(model.image_features(model.preprocess(pictures()[:2])))
    n = model.net.rotary.cos.shape[0] + 4
    cached = generate(model.net, image_tokens, max_len=n, min_len=n, use_cache=True)
    assert cached.shape[1] == n + 1
    assert torch.equal(cached, generate(model.net, image_tokens, max_len=n, min_len=n, use_cache=False))


def test_repeated_ngrams_are_blocked_and_nothing_else():
    log_probs = torch.zeros(2, 10)
    sequences = torch.tensor([[1, 5, 6, 7, 5, 6], [1, 2, 3, 4, 5, 6]])
    blocked = block_repeated_ngrams(log_probs, sequences, 3)
    assert blocked[0, 7] == -float("inf")  # "5 6 7" again
    assert (blocked[0, :7] == 0).all() and (blocked[0, 8:] == 0).all()
    assert (blocked[1] == 0).all()
    unigrams = block_repeated_ngrams(log_probs, sequences, 1)  # no token twice
    assert (unigrams[1, 1:7] == -float("inf")).all() and (unigrams[1, 7:] == 0).all()
