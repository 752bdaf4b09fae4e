"""Checkpoint directories: config.json + model.safetensors + tokenizer.json (no pickle anywhere).

A checkpoint's identity is the sha256 of its model.safetensors. Files are written to temporary names,
fsynced and renamed into place, config.json last, so a crash never leaves a half-written checkpoint that loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mammut_search.atomic import atomic_write
from mammut_search.model.config import MammutConfig
from mammut_search.errors import CheckpointError
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.openmammut import KIND as OPEN_CLIP_KIND
from mammut_search.model.openmammut import OpenMammut, OpenMammutConfig
from mammut_search.model.tokenizer import Tokenizer

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a fsynced temporary file renamed into place."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def config_from_dict(data: dict) -> MammutConfig | OpenMammutConfig:
    """A config.json's contents -> the config of the kind it names (our own MaMMUT when it names none)."""
    if isinstance(data, dict) and data.get("kind") == OPEN_CLIP_KIND:
        return OpenMammutConfig.from_dict(data)
    return MammutConfig.from_dict(data)


def build_network(config: MammutConfig | OpenMammutConfig) -> MaMMUT | OpenMammut:
    """The network of a config's kind, with fresh weights."""
    return OpenMammut(config) if isinstance(config, OpenMammutConfig) else MaMMUT(config)


def save_checkpoint(
    directory: str | Path, net: MaMMUT | OpenMammut, tokenizer: Tokenizer, *, dtype: torch.dtype = torch.float32
) -> str:
    """Write a checkpoint directory; returns its identity (sha256 of model.safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().to("cpu", dtype=dtype if t.is_floating_point() else t.dtype).contiguous()
        for name, t in net.state_dict().items()
    }
    atomic_write(directory / WEIGHTS, lambda tmp: save_weights(tensors, tmp))
    atomic_write_bytes(directory / TOKENIZER, tokenizer.hf.to_str().encode())
    config = json.dumps(net.config.to_dict(), indent=2, sort_keys=True)
    atomic_write_bytes(directory / CONFIG, config.encode())  # written last: the commit point
    return file_sha256(directory / WEIGHTS)


def save_weights(tensors: dict[str, torch.Tensor], path: str) -> None:
    """model.safetensors, readable like any file the user writes (safetensors itself creates it mode 0600).
    A failed write (a full disk) is an OSError, as for every other file."""
    try:
        save_file(tensors, path, metadata={"format": "pt"})
    except SafetensorError as e:  # safetensors reports I/O errors as its own
        raise OSError(str(e)) from None
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_config(directory: str | Path) -> MammutConfig | OpenMammutConfig:
    """config.json -> the model config of its kind, refusing a missing or malformed file with its path."""
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (it does not exist or is not a folder)")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; a checkpoint holds {CONFIG}, {WEIGHTS} and {TOKENIZER}") from None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid model config ({e})") from None


# weights older checkpoints hold that this code no longer uses: the text latent's estimate of a query's sentence
# embedding, which MiniLM now computes (model/retrieval.py)
RETIRED_WEIGHTS = ("text_to_semantic.weight",)


def load_checkpoint(directory: str | Path,
                    device: str | torch.device = "cpu") -> tuple[MaMMUT | OpenMammut, Tokenizer, str]:
    """Checkpoint directory -> (network in eval mode, tokenizer, sha256 of the weights).

    Refuses, naming the file: a missing file, a truncated or corrupt weights file, or weights whose names
    or shapes do not match the config.
    """
    directory = Path(directory)
    config = read_config(directory)
    weights_path, tokenizer_path = directory / WEIGHTS, directory / TOKENIZER
    try:
        tokenizer = Tokenizer.from_file(tokenizer_path)
    except Exception as e:  # tokenizers raises its own exception types
        raise CheckpointError(f"{tokenizer_path}: cannot read tokenizer ({e})") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{tokenizer_path}: {tokenizer.vocab_size} tokens, but {directory / CONFIG} says {config.vocab_size}"
        )
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: corrupt or truncated weights ({e})") from None
    for name in RETIRED_WEIGHTS:
        tensors.pop(name, None)
    # an open_clip MaMMUT keeps no tensor outside its state dict: built on no memory, its weights loaded in place
    # (hundreds of millions of initial values would only be overwritten)
    empty = isinstance(config, OpenMammutConfig)
    with torch.device("meta") if empty else contextlib.nullcontext():
        net = build_network(config)
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: weights do not match {CONFIG} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)}, config expects {tuple(expected[name].shape)}"
            )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, assign=empty)
    return net.to(device).eval(), tokenizer, file_sha256(weights_path)
