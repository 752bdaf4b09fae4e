"""The image tokens' layout: the attention pool reads the tokens as a set, the linear grid latent sees their
layout, dropped tokens keep their place, and the grid map travels with the checkpoint."""

import torch

from mammut_search import load_model
from mammut_search.testing import tiny_model


def image_latent(net, features, token_index=None):
    cls, _ = net.pool_image(features, token_index)
    return torch.nn.functional.normalize(net.img_to_latents(cls), dim=-1)


def test_pool_is_order_blind():
    """The attention pool reads the image tokens as a set: the layout reaches the latent through the grid map."""
    features = torch.randn(2, 16, 32)  # 32 px / 8 px patches = 16 tokens
    swapped = features[:, torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    net = tiny_model(seed=0).net
    with torch.no_grad():
        assert torch.allclose(image_latent(net, features), image_latent(net, swapped), atol=1e-5)


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
