"""What training minimises: the model's captioning and contrastive losses plus the training-only terms
(distillation towards MiniLM sentence embeddings, the word loss), each with its weight."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from mammut_search.model.contrastive import (
    CachedLatents,
    contrastive_loss,
    word_image_loss,
)
from mammut_search.model.mammut import MaMMUT


class TrainingObjective(nn.Module):
    """The network plus training-only parts (the distillation head); forward returns every loss."""

    def __init__(self, net: MaMMUT, *, distill_dim: int = 0, cached_features: bool = True):
        super().__init__()
        self.net = net
        self.cached_features = cached_features
        # maps a text latent to MiniLM's sentence space; discarded after training
        self.distill_head = nn.Linear(net.config.dim_latents, distill_dim, bias=False) if distill_dim else None

    def forward(self, inputs: torch.Tensor, text: torch.Tensor, caption: torch.Tensor, groups: torch.Tensor,
                teacher: torch.Tensor | None, keep_index: torch.Tensor | None,
                extra_text: torch.Tensor | None = None, extra_teacher: torch.Tensor | None = None,
                cached: CachedLatents | None = None, shares: dict[str, float] | None = None,
                word_text: torch.Tensor | None = None, word_positives: torch.Tensor | None = None,
                word_grad: bool = True, label_semantic: torch.Tensor | None = None,
                label_text: torch.Tensor | None = None, label_caption: torch.Tensor | None = None,
                label_groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """inputs (b ...) cached encoder inputs; text (b n) contrastive captions; caption (b m) captioning
        targets; groups (b) concept ids; teacher (b 384) MiniLM embeddings of `text`; keep_index (b k)
        image tokens to keep; extra_text (e n') texts without images and their MiniLM embeddings (e 384).
        cached: the whole batch's latents when this is one micro-batch of it (see contrastive.CachedLatents);
        shares: each loss's factor in "loss" beside its weight (its part of the step's gradient).
        word_text (w n) single words and word_positives (w B) the global batch's images each one names;
        word_grad: whether the words' latents get gradients (only one micro-batch of a step's should).
        label_semantic (L s): label-only examples, a noisy class-name embedding standing in for an image, with
        its texts label_text (L n), captioning targets label_caption (L m) and class ids label_groups (L)."""
        net, c = self.net, self.net.config
        features = self.image_features(inputs, keep_index)
        image_cls, image_tokens = net.pool_image(features, keep_index)
        zero = features.new_zeros(())
        losses: dict[str, torch.Tensor] = {}
        if c.caption_loss_weight > 0:
            losses["caption"] = net.caption_loss(caption, image_tokens)
        text_latents = None
        if c.contrastive_loss_weight > 0 or self.distill_head is not None:
            text_latents = net.text_latents(text)
        if c.contrastive_loss_weight > 0:
            image_latents = net.contrastive_image_latents(image_cls, features, keep_index)
            scale = net.temperature_scale()
            losses["contrastive"] = contrastive_loss(text_latents.float(), image_latents.float(), scale, groups,
                                                     cached=cached)
            if self.word_weight > 0 and word_text is not None:
                with contextlib.nullcontext() if word_grad else torch.no_grad():
                    words = net.text_latents(word_text)
                losses["words"] = word_image_loss(words.float(), image_latents.float(), scale.detach(),
                                                  word_positives, cached=cached)
        if self.distill_head is not None and teacher is not None:
            latents = text_latents
            if extra_text is not None:
                latents = torch.cat([latents, net.text_latents(extra_text)])
                teacher = torch.cat([teacher, extra_teacher])
            predicted = F.normalize(self.distill_head(latents).float(), dim=-1)
            losses["distill"] = (1 - (predicted * teacher).sum(dim=-1)).mean()
        if self.label_weight > 0 and label_semantic is not None:
            losses["labels"] = self.label_loss(label_semantic, label_text, label_caption, label_groups)
        losses["loss"] = self.combine(losses, shares, zero)
        return losses

    def combine(self, losses: dict[str, torch.Tensor], shares: dict[str, float] | None = None,
                zero: torch.Tensor | float = 0.0) -> torch.Tensor:
        """The weighted sum trained on; `shares` scale each term further (1 when absent)."""
        c, shares = self.net.config, shares or {}
        return (c.caption_loss_weight * shares.get("caption", 1.0) * losses.get("caption", zero)
                + c.contrastive_loss_weight * shares.get("contrastive", 1.0) * losses.get("contrastive", zero)
                + self.distill_weight * shares.get("distill", 1.0) * losses.get("distill", zero)
                + self.word_weight * shares.get("words", 1.0) * losses.get("words", zero)
                + self.label_weight * shares.get("labels", 1.0) * losses.get("labels", zero))

    def label_loss(self, semantic: torch.Tensor, text: torch.Tensor, caption: torch.Tensor,
                   groups: torch.Tensor) -> torch.Tensor:
        """Label-only examples (in the spirit of CapDec): a semantic vector (L s), with no image grid, is
        captioned with its class's names (L m) and contrasted with its texts (L n) among themselves (classes in
        `groups`)."""
        net, c = self.net, self.net.config
        empty = semantic.new_zeros(len(semantic), 0, c.image_encoder.feature_dim)  # no grid at all
        cls, tokens = net.pool_image(empty, semantic=semantic)
        loss = c.caption_loss_weight * net.caption_loss(caption, tokens)
        if c.contrastive_loss_weight > 0:
            images = net.contrastive_image_latents(cls, empty, semantic=semantic)
            loss = loss + c.contrastive_loss_weight * contrastive_loss(
                net.text_latents(text).float(), images.float(), net.temperature_scale(), groups, local=True)
        return loss

    def image_features(self, inputs: torch.Tensor, keep_index: torch.Tensor | None) -> torch.Tensor:
        """Cached encoder inputs (b ...) -> the image tokens the pool attends to (b k c)."""
        features = inputs if self.cached_features else self.net.image_features(inputs)
        if keep_index is not None:  # grid tokens only: the classifier token (if any) is always kept
            grid = self.net.config.image_encoder.grid_tokens
            kept = features[:, :grid].gather(1, keep_index[..., None].expand(-1, -1, features.shape[-1]))
            features = torch.cat([kept, features[:, grid:]], dim=1)
        return features

    def contrastive_latents(self, inputs: torch.Tensor, text: torch.Tensor,
                            keep_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm text and image latents (b l), float32: what the contrastive loss compares."""
        features = self.image_features(inputs, keep_index)
        image_cls, _ = self.net.pool_image(features, keep_index)
        image_latents = self.net.contrastive_image_latents(image_cls, features, keep_index)
        return self.net.text_latents(text).float(), image_latents.float()

    distill_weight: float = 0.0
    word_weight: float = 0.0
    label_weight: float = 0.0
