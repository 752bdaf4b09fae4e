"""manifest.json, typed: what an index directory holds and which model made it. Read and written only here.

Also here, because they are answers about a manifest: which checkpoint opens an index (`resolve_checkpoint`,
the one policy that the CLI, the Searcher and the UI follow), whether a model may search it (`check_model`),
and the one summary of an index that `mammut index info`, the UI's about table and `Searcher.info` show.

Old indexes stay readable: fields added later (model_identity, checksums) are empty in them and the checks
that need them fall back to what those indexes recorded (the weights' sha256, file sizes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mammut_search.atomic import atomic_write
from mammut_search.errors import IndexStoreError
from mammut_search.model.config import RETIRED_SETTINGS, MammutConfig

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
METRIC = "inner_product"  # latents are unit norm: inner product == cosine similarity


@dataclass
class RunStats:
    """What one build or update did (the manifest's `last_run`)."""

    files: int = 0
    images: int = 0  # indexed (status ok)
    skipped: int = 0
    encoded: int = 0  # images run through the model by this run
    resumed: int = 0  # images whose results came from the shards of an interrupted run
    reused: int = 0  # images whose results came from the index being rebuilt or updated
    removed: int = 0  # items of the previous index dropped (deleted or changed files)
    seconds: float = 0.0


@dataclass
class Manifest:
    """The contents of manifest.json. The builder fills the model and collection fields; the store fills the
    generation, counts, vector-index description, file sizes and checksums when it commits."""

    checkpoint_sha256: str  # sha256 of the weights (model.safetensors); "" for an unsaved model
    latent_dim: int
    roots: list[str]
    model_identity: str = ""  # weights and model config together (see model_identity); "" in old indexes
    checkpoint_dir: str | None = None  # None: the bundled checkpoint
    model: dict[str, Any] = field(default_factory=dict)  # facts shown by `index info` (encoder, image size)
    metric: str = METRIC
    captions: bool = True
    caption_beam_width: int = 1  # the captions' decoding (1: greedy, which indexes made before it was recorded used)
    linked_folders: list[str] = field(default_factory=list)  # symlinked folders the scan followed: "link -> target"
    next_id: int = 0  # ids are never reused: the next new item gets this one
    last_run: RunStats = field(default_factory=RunStats)
    schema_version: int = SCHEMA_VERSION
    generation: int = 0
    count: int = 0  # vectors
    items: int = 0  # rows of the items table
    skipped: int = 0
    faiss_version: str = ""
    index: dict[str, Any] = field(default_factory=dict)  # the vector index's description (kind, params, recall)
    files: dict[str, int] = field(default_factory=dict)  # data file -> size in bytes
    checksums: dict[str, str] = field(default_factory=dict)  # data file -> sha256; empty in old indexes
    rerank_tokens: dict[str, Any] = field(default_factory=dict)  # the stored decoder tokens (index/tokens.py); {}: none
    relevance: dict[str, Any] = field(default_factory=dict)  # the "nothing matches" calibration (relevance.py); {}: none
    created: str | None = None
    updated: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know, kept as they were

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_FILE) -> "Manifest":
        """A parsed manifest.json -> Manifest; IndexStoreError naming `source` and the field for a damaged one."""
        if not isinstance(data, dict):
            raise IndexStoreError(f"{source}: damaged manifest (not a JSON object); rebuild the index")
        hints = typing.get_type_hints(cls)
        known, extra = {}, {}
        for key, value in data.items():
            (known if key in hints and key != "extra" else extra)[key] = value
        version = known.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):  # "1" is not version 1: a damaged file
            raise IndexStoreError(f"{source}: damaged manifest ('schema_version' is {json.dumps(version)}, not a "
                                  f"whole number); rebuild with {rebuild_command(Path(source).parent, data)}")
        if version != SCHEMA_VERSION:
            raise IndexStoreError(f"{source}: index schema version {version}, this program reads version "
                                  f"{SCHEMA_VERSION}; rebuild with {rebuild_command(Path(source).parent, data)}")
        for f in fields(cls):
            if f.name == "extra":
                continue
            if f.name not in known:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise IndexStoreError(f"{source}: damaged manifest ({f.name!r} is missing); rebuild with "
                                          f"{rebuild_command(Path(source).parent, data)}")
                continue
            if not _has_type(known[f.name], hints[f.name]):
                raise IndexStoreError(f"{source}: damaged manifest ({f.name!r} is {known[f.name]!r}); rebuild "
                                      f"with {rebuild_command(Path(source).parent, data)}")
        if "last_run" in known:
            run_fields = {f.name for f in fields(RunStats)}
            known["last_run"] = RunStats(**{k: v for k, v in known["last_run"].items() if k in run_fields})
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to manifest.json (unknown fields read from an older file kept beside)."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}


def read_manifest(directory: str | Path) -> Manifest:
    """DIR/manifest.json -> Manifest, refusing a missing directory, a missing or damaged manifest, or another
    schema version with a message that says what to do."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise IndexStoreError(f"{directory}: a file, not an index; give the folder made by mammut index build")
    if not directory.is_dir():
        raise IndexStoreError(f"{directory}: no such index directory; build one with "
                              f"mammut index build FOLDER... --out {directory}")
    path = directory / MANIFEST_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        started = any(directory.iterdir())
        hint = " (an interrupted build: run the same build command again to finish it)" if started else ""
        raise IndexStoreError(f"{path}: missing, {directory} is not a complete index{hint}") from None
    except (OSError, ValueError) as e:
        raise IndexStoreError(f"{path}: unreadable manifest ({e}); rebuild the index with mammut index build") from None
    return Manifest.from_dict(data, str(path))


def previous_manifest(directory: Path) -> Manifest | None:
    """The committed manifest of `directory`, or None when there is none that can be read (a first build)."""
    try:
        return read_manifest(directory)
    except IndexStoreError:
        return None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace DIR/manifest.json atomically (the commit point of a generation)."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=_plain)
    atomic_write(directory / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(text))


# ----- which model goes with an index -----

def model_identity(model) -> str:
    """What makes two models answer alike: the weights' sha256 and the model config (image preprocessing
    included; the training card, which describes how the weights were made, left out). "" for an unsaved
    model, which has no identity to check."""
    if not model.checkpoint_sha256:
        return ""
    config = {k: v for k, v in model.config.to_dict().items() if k != "training"}
    if isinstance(model.config, MammutConfig):
        config = {**RETIRED_SETTINGS, **config}
    text = model.checkpoint_sha256 + "\n" + json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_model(directory: Path, manifest: Manifest, model) -> None:
    """IndexStoreError unless `model` is the one that built the index (weights and config; the weights alone
    for an index made before the config was recorded)."""
    if manifest.model_identity:
        same = manifest.model_identity == model_identity(model)
    else:
        same = manifest.checkpoint_sha256 == model.checkpoint_sha256
    if not same:
        built = manifest.checkpoint_sha256 or "(unsaved model)"
        this = model.checkpoint_sha256 or "(unsaved model)"
        if built == this:  # same weights, other config
            built, this = f"{built[:12]}… with another config.json", f"{this[:12]}… with this config.json"
        else:
            built, this = f"{built[:12]}…", f"{this[:12]}…"
        gone = manifest.checkpoint_dir is not None and not os.path.isdir(manifest.checkpoint_dir)
        hint = f"pass --checkpoint DIR ({readable(manifest.checkpoint_dir)} is gone) or " if gone else ""
        raise IndexStoreError(f"{directory}: index was built with checkpoint {built}, this model is {this}; "
                              f"{hint}rebuild with {rebuild_command(directory, manifest)}")


def resolve_checkpoint(manifest: Manifest, explicit: str | os.PathLike | None = None) -> str | None:
    """The checkpoint directory to open an index with (None: the bundled checkpoint): `explicit` when given,
    else the one the index was built with, else (built with the bundled one, or its directory is gone) the
    bundled one, which `check_model` then refuses unless it is the same model."""
    if explicit is not None:
        return os.fspath(explicit)
    if manifest.checkpoint_dir is not None and os.path.isdir(manifest.checkpoint_dir):
        return manifest.checkpoint_dir
    if manifest.checkpoint_dir is not None:
        log.warning("%s: the checkpoint directory this index was built with is gone; trying the bundled one",
                    readable(manifest.checkpoint_dir))
    return None


def rebuild_command(directory: Path, manifest: Manifest | dict | None) -> str:
    """The command that rebuilds `directory` from its roots with the current model."""
    roots = manifest.roots if isinstance(manifest, Manifest) else (manifest or {}).get("roots")
    if not isinstance(roots, list) or not roots:
        roots = ["FOLDER..."]
    return "mammut index build " + " ".join(readable(str(r)) for r in roots) + f" --out {directory} [--checkpoint DIR]"


def readable(text: str) -> str:
    """A str that encodes as UTF-8: undecodable bytes of a file name (surrogate escapes) shown as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ----- the summary shown to people -----

def summary_rows(directory: Path, manifest: Manifest, *, search: str, model_device: str | None = None,
                 size_bytes: int | None = None, private: bool = False) -> list[tuple[str, str]]:
    """(label, value) rows describing an index: what the CLI's `index info`, the UI's about table and
    `Searcher.info` show. `search` says where and with which FAISS build vectors are searched
    (mammut_search.index.vectors.search_device); `model_device` where the model runs, when one is loaded.
    `private` leaves this machine's paths out (folder names only), for a browser."""
    model = manifest.model
    encoder = f"{model.get('image_encoder', '?')} at {model.get('image_size', '?')} px" if model else "?"
    checkpoint = manifest.checkpoint_sha256[:12] or "(unsaved)"
    where = "bundled" if manifest.checkpoint_dir is None else "own" if private else readable(manifest.checkpoint_dir)
    folders = [os.path.basename(os.path.normpath(r)) or r for r in manifest.roots] if private else manifest.roots
    from mammut_search.relevance import cutoff as relevance_cutoff

    cutoff = relevance_cutoff(manifest)
    rows = [] if private else [("index", str(Path(directory).resolve()))]
    rows += [
        ("images", f"{manifest.count} indexed, {manifest.skipped} files skipped"),
        ("folders", ", ".join(readable(r) for r in folders) or "?"),
        *([] if private or not manifest.linked_folders else
          [("linked folders", ", ".join(readable(link) for link in manifest.linked_folders))]),
        ("model", f"checkpoint {checkpoint} ({where}), {encoder}, {manifest.latent_dim}-d latents, "
                  f"captions {'on' if manifest.captions else 'off'}"),
        ("vectors", f"{describe_vectors(manifest.index)}, metric {manifest.metric}, built with faiss "
                    f"{manifest.faiss_version or '?'}"),
        ("search", search),
        ("re-ranking", "from the stored decoder tokens" if manifest.rerank_tokens else
                       "not possible: the index stores no decoder tokens (rebuild it)"),
        ("keywords", "file names, folders and captions" if "keywords.sqlite" in manifest.files else
                     "none (update or rebuild the index to search names and captions)"),
        ("nothing-matches cutoff", f"{cutoff:.4f}, calibrated on this index" if cutoff is not None
                                   else "none (update or rebuild the index)"),
    ]
    if model_device is not None:
        rows.append(("model device", model_device))
    if size_bytes is not None:
        rows.append(("size", human_size(size_bytes)))
    rows += [("built", manifest.created or "?"), ("updated", manifest.updated or "?")]
    return rows


def describe_vectors(description: dict[str, Any]) -> str:
    """"ivf_flat (nprobe 16), recall@10 0.961" from a vector index description."""
    if not description:
        return "?"
    params = ", ".join(f"{k} {v}" for k, v in (description.get("params") or {}).items())
    exact = description.get("exact")
    text = description.get("type", "?") + (f" ({params})" if params else " (exact)" if exact else "")
    if description.get("recall_at_10") is not None and not exact:
        text += f", recall@10 {description['recall_at_10']}"
    return text


def human_size(size: float) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


# ----- inside -----

def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a (simple) type hint: str, int, float, bool, list[...], dict[...], unions."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    if origin is list:
        (inner,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, inner) for v in value)
    if origin is dict:
        key, inner = typing.get_args(hint)
        return isinstance(value, dict) and all(_has_type(v, inner) for v in value.values())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for JSON)."""
    return value.item() if hasattr(value, "item") else value
