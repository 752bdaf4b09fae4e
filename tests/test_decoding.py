"""Caption decoding with and without the key/value cache, beam search, and query likelihood."""

import pytest
import torch
from PIL import Image

from mammut_search.model.decoding import block_repeated_ngrams, generate
from mammut_search.testing import tiny_model
from model_testkit import training_losses


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


@pytest.mark.slow
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
        training_losses(net, ids, pixels)["loss"].backward()
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


def reference_blocked(log_probs, sequences, ngram):
    """Forbidden next tokens, the plain way: every earlier n-gram whose first n-1 tokens end the sequence."""
    out = log_probs.clone()
    for row, seq in enumerate(sequences.tolist()):
        tail = seq[len(seq) - ngram + 1:] if ngram > 1 else []
        for start in range(len(seq) - ngram + 1):
            if seq[start:start + ngram - 1] == tail:
                out[row, seq[start + ngram - 1]] = -float("inf")
    return out


def test_ngram_blocking_matches_the_plain_definition():
    generator = torch.Generator().manual_seed(0)
    for ngram in (1, 2, 3, 4):
        for length in (ngram, ngram + 3, 20):
            sequences = torch.randint(0, 5, (8, length), generator=generator)  # few symbols: many repeats
            log_probs = torch.randn(8, 5, generator=generator)
            assert torch.equal(block_repeated_ngrams(log_probs, sequences, ngram),
                               reference_blocked(log_probs, sequences, ngram)), (ngram, length)


def test_checking_for_the_end_less_often_gives_the_same_ids(model):
    _, image_tokens = model.net.pool_image(model.image_features(model.preprocess(pictures())))
    for beam_width in (1, 3):
        for max_len in (2, 5, 12):
            every_step = generate(model.net, image_tokens, max_len=max_len, beam_width=beam_width, sync_every=1)
            for sync_every in (3, 8):
                assert torch.equal(every_step, generate(model.net, image_tokens, max_len=max_len,
                                                        beam_width=beam_width, sync_every=sync_every))


def test_fused_inference_layers_match_the_training_layers_and_follow_weight_updates(model):
    net = model.net
    _, image_tokens = net.pool_image(model.image_features(model.preprocess(pictures())))
    image_tokens = image_tokens.detach()
    ids = model.tokenizer.encode(["a drawing of a house", "a red apple", "an octopus", "the blue sea"], 16)

    def logits(grad: bool) -> torch.Tensor:  # autograd on: the separate linears; off: the fused ones
        with torch.set_grad_enabled(grad):
            return net.decode(ids, net.cross_attention_kv(image_tokens))[0].detach()

    assert torch.allclose(logits(False), logits(True), atol=1e-5)
    assert torch.equal(generate(net, image_tokens, max_len=12),
                       generate(net, image_tokens, max_len=12))  # the cached fused weights are reused
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)  # an in-place update, like an optimiser step
    assert torch.allclose(logits(False), logits(True), atol=1e-4)
