"""The training recipe: every setting of a run, read from a TOML file plus `key=value` overrides.

`TrainConfig()` with no arguments is the recipe of the bundled checkpoint (data/recipes/default.toml says the same),
so `mammut train` without `--config` reproduces it.
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


# the model of the default recipe (MammutConfig fields; vocab size and special ids come from the tokenizer)
DEFAULT_MODEL: dict[str, Any] = {
    "dim": 256, "depth": 2, "heads": 4, "dim_head": 64, "ff_mult": 2, "num_img_queries": 16, "dim_latents": 256,
    "max_text_len": 32, "image_grid_latent": True,
    "semantic_dim": 384, "semantic_top_k": 10, "fusion_weight": 1.5, "fusion_gate": 20.0, "fusion_gate_center": 0.7,
    "image_encoder": {"kind": "efficientnet_lite0", "image_size": 160, "grid": 3, "classifier_token": True},
}


@dataclass
class TrainConfig:
    """Everything that determines a run; the defaults are the bundled checkpoint's recipe. A TOML file sets any
    field; `[model]` holds MammutConfig fields (with `[model.image_encoder]`) and replaces the default model
    table as a whole."""

    # data
    # any captioned set mammut_search.captioned reads: the corpus manifest, a Karpathy or COCO captions JSON, a
    # CSV/JSONL of image-caption pairs, a folder of images with .txt captions
    manifest: str = "data/cache/corpus/manifest.parquet"
    images_root: str = ""  # where the manifest's relative image paths start ("": the manifest's folder)
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    val_split: str = "val"  # held-out style, seen concepts: the checkpoint is chosen on it
    val_unseen_split: str = "val_unseen"  # held-out style, unseen concepts ("" to skip)
    # validation that measures generalisation, one figure per domain (the checkpoint is chosen on their mean):
    # whole styles kept out of training (every image of each, seen and unseen concepts), and manifest splits of
    # other domains (objects, photos). When set, val_split/val_unseen_split are not used.
    val_styles: list[str] = field(default_factory=lambda: ["iconify-fxemoji"])
    val_domains: list[str] = field(default_factory=lambda: ["val_objects", "val_photos"])
    cache_dir: str = "data/cache/train"
    # the training cache of encoder inputs: "memory", "disk" (one file per image, read per batch), or "auto" = on
    # disk when it would not fit in half of the free memory
    stream: str = "auto"
    # styles of the training splits left out (data/recipes/validation.toml: twins of its held-out styles' designs)
    exclude_styles: list[str] = field(default_factory=list)
    # share of each batch's concepts drawn from a style (the rest are balanced over the other styles' concepts):
    # a style of thousands of one-image concepts (OpenClipart) would otherwise fill every batch
    style_shares: dict[str, float] = field(default_factory=lambda: {"openclipart": 0.3})
    views: int = 1  # view 0 is the image, the others are augmentations, each encoded once
    # text side
    tokenizer: str = "minilm"  # "minilm": MiniLM's WordPiece, compacted; "bpe": trained on the captions
    common_words: int = 4000  # minilm: most frequent words kept beside the corpus's own
    bpe_vocab_size: int = 4096
    text_init: bool = True  # minilm: start the token embeddings from MiniLM's (PCA-projected when model.dim < 384)
    distill_weight: float = 1.0  # weight of aligning text latents with MiniLM sentence embeddings
    # text-only distillation on common English words (bare and in a sentence), beyond the corpus's captions:
    # it teaches the text side MiniLM's geometry for words the images never show
    distill_words: int = 2000
    distill_words_batch: int = 64
    caption_target: str = "name"  # what the captioning pass learns to write: "name" or "caption" (the sampled one)
    # single words of the batch's captions (names, keywords, groups), each contrasted with the batch's images
    # whose captions use it: what a word means, so that names never trained on can be composed from their words
    word_weight: float = 0.3
    word_batch: int = 64  # words per step (drawn from the global batch's captions)
    word_max_share: float = 0.2  # words on more than this share of the training images (templates) are left out
    word_moves_images: bool = True  # false: the word loss trains the text side only (image latents detached)
    # label-only examples (model.semantic_dim > 0): a noisy ImageNet class-name embedding stands in for an image,
    # captioned with the class's names and nearest hypernyms (WordNet); trains the semantic token's readers
    label_weight: float = 0.5
    label_batch: int = 64  # label-only examples per step (global)
    label_noise: float = 0.02  # std of the Gaussian noise added to each dimension of the stand-in vector
    label_grid_share: float = 0.0  # share of them shown beside an unrelated training image's grid (captioning only)
    label_names: int = 3  # a class's first lemmas used as its texts
    label_hypernyms: int = 2  # and its nearest hypernyms ("tabby" -> "domestic cat", "cat"; see label_hypernyms)
    imagenet_cache: str = "data/cache"  # where the corpus builder put the ImageNet class names (imagenet/)
    # model
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    # optimisation
    steps: int = 1500
    batch_size: int = 128  # global, over all processes
    # micro-batches per step and process: the same gradient as the whole batch (contrastive negatives
    # included), with the activation memory of one micro-batch
    accum_steps: int = 1
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, float32 on CPU; "bf16" or "fp32" on any device
    images_per_concept: int = 2
    lr: float = 1e-3
    embedding_lr_scale: float = 0.3  # pretrained token embeddings move more slowly
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    token_keep: float = 0.78  # share of image tokens kept in each training example (feature dropout)
    seed: int = 0
    # bookkeeping
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: leave as is)
    log_every: int = 25
    eval_every: int = 250
    save_every: int = 250
    patience: int = 0  # stop after this many evaluations without a better score (0: never)
    max_minutes: float = 45.0  # stop (keeping the best checkpoint) when training has taken this long (0: never)
    export: str = ""  # also write the best checkpoint here at the end
    export_dtype: str = "float16"
    # quality targets checked in the card when a manifest is judged on its val / val_unseen splits (see
    # train/card.py target_check); the default recipe's validation domains are reported without thresholds
    targets: dict[str, float] = field(default_factory=lambda: {
        "seen_recall": 0.5, "sentence_gap": 0.05, "unseen_t2i_R@5": 0.5, "seen_exact_name": 0.4,
        "unseen_copied_name": 0.5})
    final_eval: bool = True  # captions and baselines on the validation splits, into the training card

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A recipe from its settings, every one checked first (recipe_checks): one line names each bad one."""
        return cls(**check_recipe(data, typing.get_type_hints(cls)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        merge(data, read_recipe_file(Path(path)))
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
