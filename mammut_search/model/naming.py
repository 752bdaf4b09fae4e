"""Captions that name the object: a checkpoint with the semantic token carries an ImageNet classifier, which names
real photos far more often than the caption decoder (trained mostly on drawings) does. Its most probable class
name replaces the decoder's caption where the classifier is confident and the name agrees with the image, in the
contrastive latents, about as well as the caption does (benchmarks/RESULTS.md, "Captions that name the object").
The latents alone judge agreement: the fused vectors' semantic half is the classifier's own output, so it would
favour the class name whatever the image.

einstein notation: b batch, j image tokens, c channels, n text tokens, l latent width.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from mammut_search.model.mammut import NUM_CLASSES, MaMMUT
from mammut_search.model.tokenizer import Tokenizer

CLASS_NAMES_FILE = Path(__file__).with_name("imagenet_classes.txt")  # one name a line, in the classifier's order

# The class name is taken where its probability is at least NAMING_CONFIDENCE and its latent's cosine to the
# image latent is at most NAMING_MARGIN below the decoder caption's.
NAMING_CONFIDENCE = 0.2
NAMING_MARGIN = 0.1


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The ImageNet-1k classes' names (each its first WordNet lemma), in the classifier's order."""
    names = tuple(CLASS_NAMES_FILE.read_text(encoding="utf-8").splitlines())
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{CLASS_NAMES_FILE}: {len(names)} names, expected {NUM_CLASSES}; reinstall the package")
    return names


@torch.no_grad()
def class_name_agreement(net: MaMMUT, tokenizer: Tokenizer, features: torch.Tensor,
                         caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image encoder tokens (b j c) and the decoder's caption ids (b n) -> each image's most probable class (b),
    its probability (b), and how much closer its name's text latent is to the image latent than the caption's
    is (b, a difference of cosines)."""
    logits = net.image_encoder.class_logits(features[:, -1].to(net.class_embeddings.dtype)).float()
    probability, top = logits.softmax(dim=-1).max(dim=-1)
    names = [class_names()[i] for i in top.tolist()]
    name_ids = tokenizer.encode(names, net.config.max_text_len).to(caption_ids.device)
    image = net.image_latents(features).float()  # (b l)
    gain = (net.text_latents(name_ids).float() - net.text_latents(caption_ids).float()) * image
    return top, probability, gain.sum(dim=-1)


def named_classes(net: MaMMUT, tokenizer: Tokenizer, features: torch.Tensor,
                  caption_ids: torch.Tensor) -> list[str | None]:
    """Image encoder tokens (b j c) and the decoder's caption ids (b n) -> for each image the class name that
    replaces its caption, or None where the caption stays."""
    top, probability, gain = class_name_agreement(net, tokenizer, features, caption_ids)
    chosen = (probability >= NAMING_CONFIDENCE) & (gain >= -NAMING_MARGIN)
    return [class_names()[i] if take else None for i, take in zip(top.tolist(), chosen.tolist())]
