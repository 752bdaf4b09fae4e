"""open_clip MaMMUT weights (LAION's openMaMMUT) -> our checkpoint directory.

Input: the weights as the hub or open_clip's training writes them (`open_clip_model.safetensors`, or
`open_clip_pytorch_model.bin` read with `weights_only`, no code run), and a config: the hub's
`open_clip_config.json` (model_cfg + preprocess_cfg) or a bare model config such as the fork's
`mammut_ViT-L-14.json`. Parameter names are the same on both sides (OpenMammut spells them as open_clip does), so
conversion checks the names and shapes, translates the config and writes config.json, model.safetensors and a
tokenizer.json built from the CLIP BPE vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mammut_search.errors import CheckpointError
from mammut_search.model.clip_tokenizer import build_clip_tokenizer, find_clip_vocab
from mammut_search.model.openmammut import OpenClipVisionConfig, OpenMammut, OpenMammutConfig
from mammut_search.model.tokenizer import Tokenizer

# settings of open_clip's configs this architecture implements, with the only value it implements (a config
# that asks for another is refused rather than served wrongly); keys not listed here or in the translation are
# refused too, except these, which change nothing at inference
VISION_FIXED = {"pool_type": "avg_all", "final_ln_after_pool": True, "output_tokens": True, "ls_init_value": None,
                "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable", "act_kwargs": None,
                "norm_kwargs": None, "timm_model_name": None}
TEXT_FIXED = {"does_full_decoding": True, "output_tokens": True, "ls_init_value": None, "hf_model_name": None,
              "hf_tokenizer_name": None, "tokenizer_kwargs": None, "act_kwargs": None, "norm_kwargs": None}
TOP_FIXED = {"quick_gelu": False, "custom_text": True, "init_logit_bias": None}
INERT = {"patch_dropout", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop",
         "timm_drop_path", "attn_pooler_queries", "attn_pooler_heads", "dim_head", "n_queries",
         "embed_cls", "pad_id", "no_causal_mask", "proj_type", "proj_bias", "pool_type", "cast_dtype"}
VISION_KEYS = {"image_size", "patch_size", "width", "layers", "head_width", "mlp_ratio"}
TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "cross_attn_ratio", "has_mlp"}


def read_open_clip_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A hub open_clip_config.json or a bare model config -> (model config, preprocessing config)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read an open_clip config ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not an open_clip config (a JSON object with vision_cfg and text_cfg)")
    model_cfg, preprocess_cfg = data.get("model_cfg", data), data.get("preprocess_cfg", {})
    if not {"vision_cfg", "text_cfg", "embed_dim"} <= set(model_cfg):
        raise CheckpointError(f"{path}: not an open_clip model config (no embed_dim, vision_cfg and text_cfg)")
    return model_cfg, preprocess_cfg


def _refusals(section: str, cfg: dict[str, Any], used: set[str], fixed: dict[str, Any]) -> list[str]:
    """What in one config section this architecture does not implement, as 'section.key=value' strings."""
    out = [f"{section}.{k}={v!r}" for k, v in cfg.items() if k in fixed and v != fixed[k]]
    out += [f"{section}.{k}" for k in cfg if k not in fixed and k not in used and k not in INERT]
    return out


def config_from_open_clip(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], *,
                          source: str) -> OpenMammutConfig:
    """open_clip's model and preprocessing configs -> OpenMammutConfig; CheckpointError naming what is not
    supported (another pooling, layer scale, an attentional pooler, QuickGELU, another resize mode...)."""
    vision, text = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
    refused = _refusals("vision_cfg", vision, VISION_KEYS, VISION_FIXED)
    refused += _refusals("text_cfg", text, TEXT_KEYS, TEXT_FIXED)
    top = {k: v for k, v in model_cfg.items() if k not in ("vision_cfg", "text_cfg", "embed_dim")}
    refused += _refusals("model", top, set(), TOP_FIXED)
    if vision.get("pool_type") != "avg_all" or not vision.get("final_ln_after_pool") or not text.get(
            "does_full_decoding"):
        refused.append("not a MaMMUT (needs pool_type avg_all, final_ln_after_pool and does_full_decoding)")
    if preprocess_cfg.get("resize_mode", "shortest") != "shortest" or preprocess_cfg.get(
            "interpolation", "bicubic") != "bicubic":
        refused.append("preprocess_cfg: only resize_mode 'shortest' with bicubic interpolation")
    if refused:
        raise CheckpointError(f"{source}: not supported: {', '.join(sorted(set(refused)))}")
    image = OpenClipVisionConfig(**{k: vision[k] for k in VISION_KEYS if k in vision},
                                 **{k: tuple(preprocess_cfg[k]) for k in ("mean", "std") if k in preprocess_cfg})
    if preprocess_cfg.get("size") not in (None, image.image_size, [image.image_size] * 2):
        raise CheckpointError(f"{source}: preprocess size {preprocess_cfg['size']} differs from the tower's "
                              f"{image.image_size}")
    try:
        return OpenMammutConfig(
            embed_dim=model_cfg["embed_dim"], vocab_size=text.get("vocab_size", 49408),
            max_text_len=text.get("context_length", 77), text_width=text.get("width", 512),
            text_heads=text.get("heads", 8), text_layers=text.get("layers", 12),
            text_mlp_ratio=text.get("mlp_ratio", 4.0), cross_attn_ratio=text.get("cross_attn_ratio", 1),
            has_mlp=text.get("has_mlp", True), image_encoder=image,
            training={"source": "open_clip MaMMUT, converted by `mammut convert open-clip`", "config": source},
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None


def read_open_clip_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """open_clip_model.safetensors, or a torch pickle (.bin/.pt/.pth) read with weights_only -> tensors by name."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({str(e).splitlines()[0] if str(e) else e!r})") from None
    except Exception as e:  # the unpickler refuses anything but tensors and plain containers, in several types
        raise CheckpointError(f"{path}: not a plain weights file ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a training checkpoint
        state = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def open_clip_network(tensors: dict[str, torch.Tensor], config: OpenMammutConfig, *, source: str) -> OpenMammut:
    """Tensors by open_clip's names -> OpenMammut in float32, eval mode; CheckpointError listing missing and
    extra names, or the first wrong shape."""
    with torch.device("meta"):  # no memory or time spent on initial values that are overwritten
        net = OpenMammut(config)
    expected = net.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{source}: not this open_clip MaMMUT: missing {_listed(missing)}, "
                              f"extra {_listed(extra)}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{source}: {name} has shape {tuple(tensor.shape)}, the config gives "
                                  f"{tuple(expected[name].shape)}")
    net.load_state_dict({k: v.float() for k, v in tensors.items()}, assign=True)
    return net.eval()


def _listed(names: list[str], most: int = 6) -> str:
    """Sorted names, those within one numbered block folded into 'block.N.*', at most `most` shown."""
    if not names:
        return "none"
    folded = {}
    for name in names:
        parts = name.split(".")
        number = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        folded[".".join(parts[: number + 1]) + ".*" if number is not None else name] = None
    names = list(folded)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return "[" + ", ".join(names[:most]) + "]" + more


def clip_tokenizer(vocab_file: str | Path | None = None) -> Tokenizer:
    """The CLIP BPE tokenizer from a vocabulary file, by default the one in an installed open-clip-torch."""
    vocab_file = vocab_file or find_clip_vocab()
    if vocab_file is None:
        raise CheckpointError(f"the CLIP vocabulary was not found: install it once with `pip install --no-deps "
                              "open-clip-torch` or give --bpe-vocab PATH/bpe_simple_vocab_16e6.txt.gz")
    try:
        return Tokenizer(build_clip_tokenizer(vocab_file))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{vocab_file}: cannot read the CLIP vocabulary ({e})") from None


def convert_open_clip(weights: str | Path, config_file: str | Path, out_dir: str | Path, *,
                      vocab_file: str | Path | None = None) -> str:
    """Write our checkpoint directory from open_clip weights and config; returns its identity (sha256).

    Refuses (CheckpointError, one line) an unsupported config, a file that is not such a model, or an
    `out_dir` that already holds files."""
    from mammut_search.model.checkpoint import save_checkpoint

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir}: exists and is not an empty folder; convert into a new one")
    model_cfg, preprocess_cfg = read_open_clip_config(config_file)
    config = config_from_open_clip(model_cfg, preprocess_cfg, source=str(config_file))
    tokenizer = clip_tokenizer(vocab_file)  # before the weights, which take long to read: fail early
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{config_file}: vocab_size {config.vocab_size}, but the CLIP tokenizer has "
                              f"{tokenizer.vocab_size} tokens")
    net = open_clip_network(read_open_clip_weights(weights), config, source=str(weights))
    return save_checkpoint(out_dir, net, tokenizer)
