"""The ImageNet bridge baseline (ConSE) with a stand-in classifier and text encoder."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from mammut_search.eval.bridge import ImageNetBridge, class_prompts
from mammut_search.eval.domains import evaluate_domains


class WordEncoder:
    """A stand-in sentence encoder: one fixed direction per known word, summed."""

    def __init__(self, words: list[str]):
        self.index = {w: i for i, w in enumerate(words)}

    def encode(self, texts, progress=True):
        out = torch.zeros(len(texts), len(self.index))
        for row, text in enumerate(texts):
            for word in text.lower().strip(".").split():
                if word in self.index:
                    out[row, self.index[word]] += 1.0
        return out


class ColourClassifier(torch.nn.Module):
    """Three "classes": logits are the mean red, green and blue of the image, sharpened."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return 20 * pixels.mean(dim=(2, 3))


def test_bridge_vector_is_the_renormalised_top_k_mix_of_class_embeddings():
    embeddings = torch.eye(3)
    bridge = ImageNetBridge(ColourClassifier(), embeddings, WordEncoder([]), top_k=2)
    probabilities = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    vectors = bridge.latents_from_features(probabilities)
    expected = torch.nn.functional.normalize(torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 2 / 9, 7 / 9]]), dim=-1)
    assert torch.allclose(vectors, expected, atol=1e-6)  # the third class of the first image is not in its top 2
    assert class_prompts(["tabby", "airliner"]) == ["a photo of a tabby.", "a photo of a airliner."]


def test_bridge_finds_images_by_their_class_names(tmp_path):
    words = ["red", "green", "blue", "photo", "of", "a"]
    encoder = WordEncoder(words)
    names = ["red", "green", "blue"]
    bridge = ImageNetBridge(ColourClassifier(), encoder.encode(class_prompts(names)), encoder, image_size=32, top_k=2)
    rows = []
    for i, (name, colour) in enumerate([("red", (255, 0, 0)), ("green", (0, 255, 0)), ("blue", (0, 0, 255))]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 20), colour).save(path)
        rows.append({"path": str(path), "captions": [f"a {name}"], "split": "val_photos"})
    result = evaluate_domains(bridge, pd.DataFrame(rows), ks=[1], captions=False)["photos"]
    assert result["t2i"]["R@1"] == 1.0 and result["i2t"]["R@1"] == 1.0
    assert "caption_hit" not in result
    assert bridge.encode_image([Image.new("RGB", (8, 8), (255, 0, 0))]).norm().item() == pytest.approx(1.0)
