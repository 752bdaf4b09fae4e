"""The ImageNet bridge, a training-free baseline ("ConSE", Norouzi et al. 2014, https://arxiv.org/abs/1312.5650).

An image becomes the probability-weighted mean of sentence embeddings of its most probable ImageNet classes:
an EfficientNet-Lite's ImageNet classifier -> softmax -> the top k classes, weights renormalised -> sum of the MiniLM
embeddings of "a photo of a {first lemma}." -> unit norm. A text query is its MiniLM embedding; the score is
the cosine. It has the encoder interface `evaluate_domains` uses (no captions).

einstein notation: b images, c classes (1000), d MiniLM width (384).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from mammut_search.inference import load_square, pixels_tensor, preprocess_images
from mammut_search.model.config import ImageEncoderConfig
from mammut_search.model.image_encoders import efficientnet


def load_classifier(kind: str = "efficientnet_lite0") -> torch.nn.Module:
    """The EfficientNet-Lite of this kind (mammut_search.model.config.EFFICIENTNETS) with its ImageNet-1k
    classifier: the pretrained weights of its installed package."""
    return efficientnet(kind, pretrained=True).eval()


def class_prompts(class_names: Sequence[str]) -> list[str]:
    """The text embedded for each class: "a photo of a {name}."."""
    return [f"a photo of a {name}." for name in class_names]


class ImageNetBridge:
    """Images -> ConSE vectors (b d); texts -> MiniLM embeddings (b d)."""

    def __init__(self, classifier: torch.nn.Module, class_embeddings: torch.Tensor, text_encoder, *,
                 image_size: int = 224, top_k: int = 10):
        self.classifier = classifier.eval()
        self.class_embeddings = F.normalize(class_embeddings.float(), dim=-1)  # (c d)
        self.text_encoder = text_encoder  # .encode(texts, progress=False) -> (b d)
        self.config = ImageEncoderConfig(image_size=image_size)
        self.top_k = top_k

    @property
    def latent_dim(self) -> int:
        return self.class_embeddings.shape[1]

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised pixels (b 3 s s), as the model's image pipeline prepares them."""
        return preprocess_images(list(images), self.config)

    def preprocess_files(self, paths: Sequence[str]) -> torch.Tensor:
        """Image files through the one image pipeline, as MammutModel reads them."""
        return pixels_tensor([load_square(path, self.config)[0] for path in paths], self.config)

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (b 3 s s) -> class probabilities (b c)."""
        return self.classifier(pixels).softmax(dim=-1)

    def latents_from_features(self, probabilities: torch.Tensor) -> torch.Tensor:
        """class probabilities (b c) -> unit-norm bridge vectors (b d) from the top k classes."""
        top = probabilities.topk(self.top_k, dim=-1)
        weights = top.values / top.values.sum(dim=-1, keepdim=True)  # (b k)
        mixed = torch.einsum("bk,bkd->bd", weights, self.class_embeddings[top.indices])
        return F.normalize(mixed, dim=-1)

    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.latents_from_features(self.image_features(self.preprocess(images)))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.text_encoder.encode(list(texts), progress=False).float(), dim=-1)
