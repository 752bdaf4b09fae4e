"""The image tokens' layout: learned positions before the attention pool and the linear grid latent both see
it, dropped tokens keep their place, and both travel with the checkpoint."""

import torch

from mammut_search import load_model
from mammut_search.testing import tiny_model


def image_latent(net, features, token_index=None):
    cls, _ = net.pool_image(features, token_index)
    return torch.nn.functional.normalize(net.img_to_latents(cls), dim=-1)


def with_random_positions(**overrides):
    model = tiny_model(seed=0, **overrides)
    if model.net.img_pos_emb is not None:
        with torch.no_grad():
            model.net.img_pos_emb.normal_()
    return model


def test_pool_is_order_blind_without_positions_and_sees_layout_with_them():
    features = torch.randn(2, 16, 32)  # 32 px / 8 px patches = 16 tokens
    swapped = features[:, torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    blind = with_random_positions().net
    with torch.no_grad():
        assert torch.allclose(image_latent(blind, features), image_latent(blind, swapped), atol=1e-5)
    seeing = with_random_positions(image_token_positions=True).net
    assert seeing.img_pos_emb.shape == (16, 32)
    with torch.no_grad():
        assert not torch.allclose(image_latent(seeing, features), image_latent(seeing, swapped), atol=1e-3)


def test_dropped_tokens_keep_their_own_positions():
    net = with_random_positions(image_token_positions=True).net
    features = torch.randn(2, 16, 32)
    keep = torch.tensor([[0, 3, 5, 9], [15, 2, 7, 1]])

    def gather(x):
        return x.gather(1, keep[..., None].expand(-1, -1, 32))

    with torch.no_grad():
        positions = net.img_pos_emb
        net.img_pos_emb = None  # the same pool, fed tokens that already carry their positions
        expected = image_latent(net, gather(features + positions))
        net.img_pos_emb = positions
        assert torch.allclose(image_latent(net, gather(features), keep), expected, atol=1e-5)
        # positions 0..3 instead of each token's own give another latent
        assert not torch.allclose(image_latent(net, gather(features), torch.arange(4).expand(2, 4)), expected,
                                  atol=1e-3)


def test_positions_round_trip_through_the_checkpoint(tmp_path):
    model = with_random_positions(image_token_positions=True)
    model.save(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt", device="cpu")
    assert loaded.config.image_token_positions
    assert torch.equal(loaded.net.img_pos_emb, model.net.img_pos_emb)


def test_grid_latent_sees_the_layout_and_survives_the_checkpoint(tmp_path):
    model = tiny_model(seed=0, image_grid_latent=True)
    net = model.net
    features = torch.randn(2, 16, 32)
    swapped = features[:, torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        assert not torch.allclose(net.image_latents(features), net.image_latents(swapped), atol=1e-3)
    model.save(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt", device="cpu")
    assert torch.equal(loaded.net.img_grid_to_latents.weight, net.img_grid_to_latents.weight)
    with torch.no_grad():
        assert torch.allclose(loaded.net.image_latents(features), net.image_latents(features))


def test_grid_of_kept_tokens_puts_them_in_place_and_scales_them():
    net = tiny_model(seed=0, image_grid_latent=True).net
    features = torch.randn(2, 16, 32)
    assert torch.equal(net.token_grid(features, torch.arange(16).expand(2, 16)), features.flatten(1))
    keep = torch.tensor([[0, 3, 5, 9], [15, 2, 7, 1]])
    kept = features.gather(1, keep[..., None].expand(-1, -1, 32))
    grid = net.token_grid(kept, keep).view(2, 16, 32)
    for b in range(2):
        for j in range(16):
            expected = features[b, j] * 4 if j in keep[b] else torch.zeros(32)
            assert torch.allclose(grid[b, j], expected)
