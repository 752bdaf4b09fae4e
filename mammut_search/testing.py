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



# an open_clip MaMMUT with the real vocabulary and context, every width tiny (the layout of the fork's
# mammut_ViT-*.json configs: avg_all pooling, cross-attention every second text block)
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16,
                   "output_tokens": True, "pool_type": "avg_all", "final_ln_after_pool": True},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                 "output_tokens": True, "cross_attn_ratio": 2, "does_full_decoding": True},
    "custom_text": True,
}


def write_open_clip_mammut(directory, model_cfg: dict | None = None, *, seed: int = 0):
    """Random weights of an open_clip MaMMUT written as the hub holds them -> (open_clip_model.safetensors,
    open_clip_config.json) paths. The names are open_clip's (OpenMammut spells them so)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from mammut_search.model.open_clip_convert import config_from_open_clip
    from mammut_search.model.openmammut import OpenMammut

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = model_cfg or TINY_OPEN_CLIP_CONFIG
    torch.manual_seed(seed)
    net = OpenMammut(config_from_open_clip(model_cfg, {}, source="random weights"))
    weights, config = directory / "open_clip_model.safetensors", directory / "open_clip_config.json"
    save_file({name: t.contiguous() for name, t in net.state_dict().items()}, str(weights))
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}))
    return weights, config
