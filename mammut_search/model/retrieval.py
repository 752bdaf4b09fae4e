"""Retrieval vectors: what an index stores for each image and what a query searches it with.

A network gives contrastive latents (`image_latents`, `text_latents`: the paper's, compared by the contrastive
loss). A checkpoint of our own with the ImageNet semantic token may fuse more into the vectors it retrieves with
(`fusion_weight` > 0): [contrastive latent ; w · semantic part], unit norm, so that one inner product scores both.
The image's semantic part is its semantic vector (the classifier's top classes mixing their name embeddings, in
MiniLM's sentence space), the query's its own MiniLM sentence embedding (model/minilm.py), gated by how much the
query names an ImageNet class.
Without fusion (and for open_clip checkpoints, which have no semantic token) a retrieval vector is the latent.

einstein notation: b batch, l latent width, s semantic width, r retrieval width (l, or l + s with fusion).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mammut_search.model.minilm import sentence_encoder


def fusion_weight(net: nn.Module) -> float:
    """The weight of the semantic part in the network's retrieval vectors (0: the latents alone)."""
    return getattr(net.config, "fusion_weight", 0.0)


def image_retrieval_vectors(net: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Image encoder tokens (b j c) -> the unit-norm vectors images are indexed by (b r)."""
    latents = net.image_latents(features)
    if not fusion_weight(net):
        return latents
    _, semantic = net.split_features(features)
    return fuse(net, latents, F.normalize(semantic.float(), dim=-1).to(latents.dtype))


def query_retrieval_vectors(net: nn.Module, text: torch.Tensor, sentences: torch.Tensor | None = None) -> torch.Tensor:
    """Query ids (b n) and, for a network that fuses, the queries' unit-norm MiniLM sentence embeddings (b s)
    -> the unit-norm vectors queries search with (b r)."""
    latents = net.text_latents(text)
    if not fusion_weight(net):
        return latents
    if sentences is None:
        raise ValueError("a fusing network's queries need their sentence embeddings")
    semantic = F.normalize(sentences.float(), dim=-1).to(latents.dtype)
    return fuse(net, latents, query_gate(net, semantic) * semantic)


def query_sentences(net: nn.Module, texts: Sequence[str]) -> torch.Tensor | None:
    """The queries' unit-norm MiniLM sentence embeddings (b s), on the network's device, when the network fuses
    them in; else None."""
    if not fusion_weight(net):
        return None
    return sentence_encoder().encode(list(texts), progress=False).to(net.class_embeddings.device)


def fuse(net: nn.Module, latents: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
    """Unit-norm latents (b l) and unit-norm semantic vectors (b s), the latter scaled by the fusion weight
    (and for queries by their gate) -> unit-norm retrieval vectors (b (l+s))."""
    return F.normalize(torch.cat([latents, fusion_weight(net) * semantic], dim=-1), dim=-1)


def query_gate(net: nn.Module, semantic: torch.Tensor) -> torch.Tensor:
    """Unit-norm sentence embeddings of queries (b s) -> how much each names an ImageNet class (b 1):
    sigmoid(fusion_gate * (best cosine to a class name - fusion_gate_center)); 1 without a gate."""
    c = net.config
    if not c.fusion_gate:
        return semantic.new_ones(semantic.shape[0], 1)
    classes = F.normalize(net.class_embeddings.float(), dim=-1).to(semantic.dtype)
    best = (semantic @ classes.t()).amax(dim=-1, keepdim=True)
    return torch.sigmoid(c.fusion_gate * (best - c.fusion_gate_center))
