"""The training recipe: every setting of a run, read from a TOML file plus `key=value` overrides.

`TrainConfig()` with no arguments is the recipe of the bundled checkpoint (data/recipes/default.toml says the same),
so `mammut train` without `--config` reproduces it. A recipe file states only what differs from it, or from the
recipe it names in `extends` (a path relative to the file).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import typing

from mammut_search.errors import UserError
from mammut_search.train.recipe_checks import check_recipe


@dataclass
class TrainConfig:
    """Everything that determines a run; the defaults are the bundled checkpoint's recipe. A TOML file sets any
    field; `[model]` holds MammutConfig fields (with `[model.image_encoder]`), each over MammutConfig's default."""

    # data
    # any captioned set mammut_search.captioned reads: the corpus manifest, a Karpathy or COCO captions JSON, a
    # CSV/JSONL of image-caption pairs, a folder of images with .txt captions
    manifest: str = "data/cache/corpus/manifest.parquet"
    images_root: str = ""  # where the manifest's relative image paths start ("": the manifest's folder)
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    # the manifest's validation splits, each a domain of its own: the checkpoint is chosen on the mean over
    # domains (validation.DOMAIN_SCORE); the bundled recipe's are the corpus's objects and photos
    val_splits: list[str] = field(default_factory=lambda: ["val_objects", "val_photos"])
    # a manifest with styles (the emoji corpus, its `style` column; other manifests have none, and these do
    # nothing there): whole styles kept out of training as one more validation domain, styles left out of
    # training (validation.toml: twins of its held-out styles' designs), and the share of each batch's concepts
    # drawn from a style (a style of thousands of one-image concepts, OpenClipart, would fill every batch)
    val_styles: list[str] = field(default_factory=lambda: ["iconify-fxemoji"])
    exclude_styles: list[str] = field(default_factory=list)
    style_shares: dict[str, float] = field(default_factory=lambda: {"openclipart": 0.3})
    cache_dir: str = "data/cache/train"
    # the training cache of encoder inputs: "memory", "disk" (one file per image, read per batch), or "auto" = on
    # disk when it would not fit in half of the free memory
    stream: str = "auto"
    # text side: MiniLM's WordPiece, compacted to the corpus's words and the most frequent others
    common_words: int = 4000
    text_init: bool = True  # start the token embeddings from MiniLM's (PCA-projected when model.dim < 384)
    distill_weight: float = 1.0  # weight of aligning text latents with MiniLM sentence embeddings
    # text-only distillation on common English words (bare and in a sentence), beyond the corpus's captions:
    # it teaches the text side MiniLM's geometry for words the images never show
    distill_words: int = 2000
    caption_target: str = "name"  # what the captioning pass learns to write: "name" or "caption" (the sampled one)
    # single words of the batch's captions (names, keywords, groups), each contrasted with the batch's images
    # whose captions use it: what a word means, so that names never trained on can be composed from their words
    word_weight: float = 0.3
    word_max_share: float = 0.2  # words on more than this share of the training images (templates) are left out
    # label-only examples (model.semantic_dim > 0): a noisy ImageNet class-name embedding stands in for an image,
    # captioned with the class's names and nearest hypernyms (WordNet); trains the semantic token's readers
    label_weight: float = 0.5
    imagenet_cache: str = "data/cache"  # where the corpus builder put the ImageNet class names (imagenet/)
    # model: MammutConfig fields that differ from its defaults (which are the bundled model)
    model: dict[str, Any] = field(default_factory=dict)
    # optimisation
    steps: int = 1500
    batch_size: int = 128  # global, over all processes
    # micro-batches per step and process: the same gradient as the whole batch (contrastive negatives
    # included), with the activation memory of one micro-batch
    accum_steps: int = 1
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, float32 on CPU; "bf16" or "fp32" on any device
    images_per_concept: int = 2
    lr: float = 1e-3
    warmup_steps: int = 50
    token_keep: float = 0.78  # share of image tokens kept in each training example (feature dropout)
    seed: int = 0
    # bookkeeping
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: leave as is)
    log_every: int = 25
    eval_every: int = 250
    save_every: int = 250
    max_minutes: float = 45.0  # stop (keeping the best checkpoint) when training has taken this long (0: never)
    export: str = ""  # also write the best checkpoint here (float16) at the end

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A recipe from its settings, every one checked first (recipe_checks): one line names each bad one."""
        return cls(**check_recipe(data, typing.get_type_hints(cls)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> dict[str, Any]:
        """The recipe with its whole model spelled out (MammutConfig's defaults under the recipe's changes), as
        `mammut train --print-config` shows it; it reads back as the same recipe."""
        from mammut_search.train.recipe_checks import MODEL_SET_BY_TRAINING
        from mammut_search.model.config import MammutConfig

        model = MammutConfig(vocab_size=1, **self.model).to_dict()
        return {**self.to_dict(), "model": {k: v for k, v in model.items() if k not in MODEL_SET_BY_TRAINING}}


def parse_value(text: str) -> Any:
    """An override's value: TOML syntax (numbers, booleans, lists, quoted strings), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """The default recipe (or a `base` dict), a TOML recipe merged over it, then `key=value` overrides (dotted
    keys reach into tables: model.dim=384). Tables merge key by key, so a recipe names only what it changes."""
    data: dict[str, Any] = json.loads(json.dumps(base if base is not None else TrainConfig().to_dict()))
    if path is not None:
        merge(data, read_recipe(Path(path)))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} is not key=value")
        *tables, last = key.strip().split(".")
        target = data
        for table in tables:
            target = target.setdefault(table, {})
            if not isinstance(target, dict):
                raise UserError(f"override {item!r}: {table} is not a table")
        target[last] = parse_value(value.strip())
    return TrainConfig.from_dict(data)


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file's settings over those of the recipe it `extends` (a path relative to it), if any."""
    tables = read_recipe_file(path)
    base = tables.pop("extends", None)
    if base is None:
        return tables
    if not isinstance(base, str):
        raise UserError(f"{path}: extends = {base!r} must be a quoted path to another recipe")
    base_path = path.parent / base
    if base_path.resolve() in seen:
        raise UserError(f"{path}: extends {base}, which extends it again")
    data = read_recipe(base_path, (*seen, path.resolve()))
    merge(data, tables)
    return data


def read_recipe_file(path: Path) -> dict[str, Any]:
    """A TOML recipe file's tables, or a UserError naming the file and what is wrong with it."""
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a recipe file (give a .toml file, e.g. data/recipes/default.toml)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such recipe file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); a recipe is a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the recipe ({e.strerror})") from None


def merge(into: dict[str, Any], changes: dict[str, Any]) -> None:
    """Deep-merge `changes` into `into`: tables key by key, everything else replaced."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
