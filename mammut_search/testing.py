"""Tiny models for tests and examples: random weights, a small ViT at 32 px, a BPE trained on the spot."""

from __future__ import annotations

import torch

from mammut_search.inference import MammutModel
from mammut_search.model.config import ImageEncoderConfig, MammutConfig
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.tokenizer import train_bpe

TINY_TEXTS = [
    "a red apple", "an octopus", "a picture of a cat", "a black dog", "a smiling face", "the blue sea",
    "a green tree", "a yellow star", "an orange", "a drawing of a house", "a white cloud", "a purple heart",
]


def tiny_config(vocab_size: int, **overrides) -> MammutConfig:
    """A model small enough to build and run in milliseconds on a CPU."""
    image = ImageEncoderConfig(kind="vit", image_size=32, patch_size=8, vit_dim=32, vit_depth=1, vit_heads=2,
                               grid=0, classifier_token=False)
    fields = dict(vocab_size=vocab_size, dim=32, depth=2, heads=2, dim_head=16, ff_mult=2,
                  num_img_queries=8, dim_latents=16, max_text_len=16, image_encoder=image, image_grid_latent=False,
                  semantic_dim=0, fusion_weight=0.0, fusion_gate=0.0, fusion_gate_center=0.5)
    fields.update(overrides)
    return MammutConfig(**fields)


def tiny_model(seed: int = 0, device: str = "cpu", **overrides) -> MammutModel:
    """A randomly initialised tiny MammutModel (deterministic for a given seed)."""
    tokenizer = train_bpe(TINY_TEXTS * 4, vocab_size=300, min_frequency=1)
    torch.manual_seed(seed)
    config = tiny_config(tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                         eos_id=tokenizer.eos_id, **overrides)
    return MammutModel(MaMMUT(config), tokenizer, device=device)


def end_rank() -> None:
    """End a test's torch.distributed worker process once its work is done: wait for every rank, leave the
    group, and exit without interpreter finalization, where gloo's threads can still abort the process
    ("terminate called without an active exception") and fail a test whose ranks all succeeded."""
    import os
    import sys

    import torch.distributed as dist

    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

