"""The MaMMUT core: latents, the contrastive text pass, temperature, losses, attention kernels."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mammut_search.model.mammut import MAX_LOGIT_SCALE
from mammut_search.testing import tiny_model
from model_testkit import training_losses


def images(n=3):
    colours = [(255, 0, 0), (0, 128, 255), (20, 200, 20), (250, 250, 0)]
    return [Image.new("RGB", (32 + 8 * i, 32), colours[i % 4]) for i in range(n)]


def test_latents_are_projected_and_unit_norm(model):
    image_latents = model.encode_image(images())
    text_latents = model.encode_text(["a red apple", "an octopus", "a cat"])
    assert image_latents.shape == text_latents.shape == (3, model.latent_dim)
    assert torch.allclose(image_latents.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text_latents.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the latent is the projection of the CLS embedding, not the embedding itself (width dim != dim_latents)
    assert model.config.dim != model.latent_dim


def test_text_latent_does_not_depend_on_padding_or_batch_mates():
    m = tiny_model(seed=1)
    alone = m.encode_text(["an octopus"])
    batched = m.encode_text(["an octopus", "a drawing of a house with a green tree and a white cloud"])
    assert F.cosine_similarity(alone[0], batched[0], dim=0) >= 0.9999


def test_bidirectional_pass_lets_early_words_see_later_ones():
    """The contrastive pass is bidirectional (the paper's): the first word's state depends on what follows."""
    torch.manual_seed(0)
    m = tiny_model(seed=2)
    ids = m.tokenizer.encode(["a red apple", "a red star"], 16)
    captured = {}
    hook = m.net.self_attn_layers[-1].register_forward_hook(lambda mod, i, o: captured.update(x=o[0]))
    m.net.text_latents(ids)
    hook.remove()
    assert ids[0, 1] == ids[1, 1]  # the same first word...
    assert not torch.allclose(captured["x"][0, 1], captured["x"][1, 1], atol=1e-6)  # ...sees different ones


def test_pads_are_masked_in_caption_pass(model):
    ids = model.tokenizer.encode(["an octopus", "a drawing of a house with a tree"], 16)
    features = model.image_features(model.preprocess(images(2)))
    _, tokens = model.net.pool_image(features)
    short = ids[:1, : int((ids[0] != model.config.pad_id).sum())]
    padded_lp = model.net.caption_log_probs(ids[:1], tokens[:1])
    short_lp = model.net.caption_log_probs(short, tokens[:1])
    assert torch.allclose(padded_lp[0, : short_lp.shape[1]], short_lp[0], atol=1e-5)


def test_contrastive_pass_sees_the_whole_caption(model):
    """The last token (<eos> after the last word) reaches the text latent: changing the last word changes it."""
    a, b = model.encode_text(["a red apple", "a red star"])
    assert not torch.allclose(a, b, atol=1e-4)
    # and training's contrastive pass uses the same full ids as encode_text
    ids = model.tokenizer.encode(["a red apple"], 16)
    assert torch.allclose(model.net.text_latents(ids), a[None], atol=1e-5)


def test_temperature_initialised_like_clip_and_clamped(model):
    assert math.isclose(model.net.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)
    assert model.net.logit_scale.requires_grad
    ids = model.tokenizer.encode(["a red apple", "an octopus"], 16)
    pixels = model.preprocess(images(2))
    with torch.no_grad():
        model.net.logit_scale.fill_(math.log(1e4))
    loss_high = training_losses(model.net, ids, pixels)["contrastive"]
    with torch.no_grad():
        model.net.logit_scale.fill_(math.log(MAX_LOGIT_SCALE))
    loss_at_clamp = training_losses(model.net, ids, pixels)["contrastive"]
    assert torch.allclose(loss_high, loss_at_clamp)


def test_both_losses_train(model):
    net = model.net.train()
    ids = model.tokenizer.encode(["a red apple", "an octopus", "a black dog"], 16)
    pixels = model.preprocess(images(3))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    first = training_losses(net, ids, pixels)
    for _ in range(30):
        opt.zero_grad()
        training_losses(net, ids, pixels)["loss"].backward()
        opt.step()
    last = training_losses(net, ids, pixels)
    assert last["caption"] < first["caption"] * 0.7
    assert last["contrastive"] < first["contrastive"] * 0.7


def test_group_ids_make_same_concept_pairs_positives():
    from mammut_search.model.contrastive import contrastive_loss

    def loss_and_grad(groups):
        # two images of one concept: each of their captions is equally close to both of them
        texts = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=-1).requires_grad_()
        pics = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
        loss = contrastive_loss(texts, pics, torch.tensor(50.0), groups)
        loss.backward()
        return loss, texts.grad

    plain, plain_grad = loss_and_grad(None)
    distinct, _ = loss_and_grad(torch.tensor([0, 1, 2]))
    _, grouped_grad = loss_and_grad(torch.tensor([0, 0, 1]))
    assert torch.allclose(plain, distinct)  # distinct groups == the usual one-positive loss
    # as negatives the twins are pushed apart; as positives they are (almost) left alone
    assert grouped_grad.norm() < 0.5 * plain_grad.norm()


def test_attention_goes_through_sdpa(model, monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model.encode_text(["a red apple"])
    model.caption(images(1), max_len=4)
    assert len(calls) >= 2 * model.config.depth


def test_rotary_tables_rotate_like_the_rotate_half_formula():
    from mammut_search.model.layers import Rotary, apply_rotary

    def reference(t, positions):  # https://arxiv.org/abs/2104.09864, rotate-half form
        d = t.shape[-1]
        inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        angles = positions.float()[:, None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (n 1 d)
        t1, t2 = t.chunk(2, dim=-1)
        return t * angles.cos() + torch.cat((-t2, t1), dim=-1) * angles.sin()

    rotary = Rotary(16, max_len=8)
    t = torch.randn(2, 5, 3, 16)  # (b n h d)
    for start in (0, 3, 6):  # 6: past the tables, computed on the fly
        expected = reference(t, torch.arange(start, start + 5))
        assert torch.allclose(apply_rotary(t, *rotary(start, 5, t.dtype)), expected, atol=1e-6)


def test_rotary_tables_are_not_part_of_the_checkpoint(model):
    assert not any("rotary" in key for key in model.net.state_dict())


def test_folded_multi_query_attention_matches_per_head_attention():
    """Without a mask the heads share the key/value head and are folded into one; the masked path broadcasts
    the key/value head over the heads. With an all-True mask both give the same result."""
    from mammut_search.model.layers import attention

    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 1, 5, 8), torch.randn(2, 1, 5, 8)  # (b i h d), (b 1 j d)
    everything = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    folded = attention(q, k, v, None, False)
    assert folded.shape == (2, 3, 4 * 8)
    assert torch.allclose(folded, attention(q, k, v, everything, False), atol=1e-6)
