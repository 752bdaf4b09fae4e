"""Training MaMMUT: a recipe (TOML + overrides) -> a checkpoint directory with a training card.

One process on CPU or GPU (bf16 autocast), or DDP under `torchrun` (the contrastive loss gathers the global
batch); `accum_steps` splits each process's batch into micro-batches without changing the gradient (see
`accumulate_gradients`), so N processes × k micro-batches train exactly like one process on the whole batch.
The image encoder's input to its trainable part is cached once (frozen EfficientNet features, or pixels when
the whole encoder trains). Batches are a function of (seed, step), so a run is reproducible and
`resume` continues exactly: model, optimizer, schedule and step come back from `last/`.

Run directory: `last/` and `best/` are checkpoint directories (config.json, model.safetensors,
tokenizer.json); `last/train_state.pt` beside them holds what resuming needs. Each is written to a fresh
folder and swapped into place, so a crash never destroys the only good copy. `log.jsonl` has one line per log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mammut_search.model.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from mammut_search.model.config import ImageEncoderConfig, MammutConfig
from mammut_search.model.contrastive import CachedLatents, contrastive_loss, word_image_loss
from mammut_search.errors import UserError
from mammut_search.model.image_encoders import preprocess_images
from mammut_search.eval.metrics import tokenize
from mammut_search.model.mammut import MAX_LOGIT_SCALE, MaMMUT
from mammut_search.model.tokenizer import Tokenizer, train_bpe
from mammut_search.train import data as td
from mammut_search.train import card as te

TRAIN_STATE = "train_state.pt"


# ----- the recipe -----

@dataclass
class TrainConfig:
    """Everything that determines a run. A TOML file sets any field; `[model]` holds MammutConfig fields
    (with `[model.image_encoder]`)."""

    # data
    manifest: str = "data/cache/corpus/manifest.parquet"
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    val_split: str = "val"  # held-out style, seen concepts: the checkpoint is chosen on it
    val_unseen_split: str = "val_unseen"  # held-out style, unseen concepts ("" to skip)
    cache_dir: str = "data/cache/train"
    exclude_styles: list[str] = field(default_factory=list)  # styles of the training splits left out
    views: int = 2  # view 0 is the image, the others are augmentations, each encoded once
    # text side
    tokenizer: str = "minilm"  # "minilm": MiniLM's WordPiece, compacted; "bpe": trained on the captions
    common_words: int = 8000  # minilm: most frequent words kept beside the corpus's own
    bpe_vocab_size: int = 4096
    text_init: bool = True  # minilm: start the token embeddings from MiniLM's (PCA-projected when model.dim < 384)
    distill_weight: float = 1.0  # weight of aligning text latents with MiniLM sentence embeddings
    # text-only distillation on common English words (bare and in a sentence), beyond the corpus's captions:
    # it teaches the text side MiniLM's geometry for words the images never show
    distill_words: int = 0
    distill_words_batch: int = 64
    caption_target: str = "name"  # what the captioning pass learns to write: "name" or "caption" (the sampled one)
    # single words of the batch's captions (names, keywords, groups), each contrasted with the batch's images
    # whose captions use it: what a word means, so that names never trained on can be composed from their words
    word_weight: float = 0.0
    word_batch: int = 64  # words per step (drawn from the global batch's captions)
    word_max_share: float = 0.2  # words on more than this share of the training images (templates) are left out
    word_moves_images: bool = True  # false: the word loss trains the text side only (image latents detached)
    # model
    model: dict[str, Any] = field(default_factory=dict)
    # optimisation
    steps: int = 2000
    batch_size: int = 256  # global, over all processes
    # micro-batches per step and process: the same gradient as the whole batch (contrastive negatives
    # included), with the activation memory of one micro-batch
    accum_steps: int = 1
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, float32 on CPU; "bf16" or "fp32" on any device
    images_per_concept: int = 2
    lr: float = 5e-4
    embedding_lr_scale: float = 0.3  # pretrained token embeddings move more slowly
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    token_keep: float = 0.75  # share of image tokens kept in each training example (feature dropout)
    seed: int = 0
    # bookkeeping
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: leave as is)
    log_every: int = 25
    eval_every: int = 200
    save_every: int = 200
    patience: int = 0  # stop after this many evaluations without a better score (0: never)
    max_minutes: float = 0.0  # stop (keeping the best checkpoint) when training has taken this long (0: never)
    export: str = ""  # also write the best checkpoint here at the end
    export_dtype: str = "float16"
    final_eval: bool = True  # captions and baselines on the validation splits, into the training card

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown training setting(s) {unknown}; known: {sorted(names)}")
        return cls(**data)

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
    """A TOML recipe (or a `base` dict) plus `key=value` overrides (dotted keys reach into tables: model.dim=384)."""
    data: dict[str, Any] = json.loads(json.dumps(base)) if base is not None else {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: no such recipe file") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
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


# ----- distributed set-up -----

@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def setup_runtime(config: TrainConfig) -> Runtime:
    """Join the process group under torchrun (WORLD_SIZE > 1) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.threads:
        torch.set_num_threads(config.threads)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world_size > 1 else 0
    if config.device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
    else:
        device = torch.device(config.device)
    return Runtime(device, rank, world_size)


# ----- the objective -----

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
                word_grad: bool = True) -> dict[str, torch.Tensor]:
        """inputs (b ...) cached encoder inputs; text (b n) contrastive captions; caption (b m) captioning
        targets; groups (b) concept ids; teacher (b 384) MiniLM embeddings of `text`; keep_index (b k)
        image tokens to keep; extra_text (e n') texts without images and their MiniLM embeddings (e 384).
        cached: the whole batch's latents when this is one micro-batch of it (see contrastive.CachedLatents);
        shares: each loss's factor in "loss" beside its weight (its part of the step's gradient).
        word_text (w n) single words and word_positives (w B) the global batch's images each one names;
        word_grad: whether the words' latents get gradients (only one micro-batch of a step's should)."""
        net, c = self.net, self.net.config
        features = self.image_features(inputs, keep_index)
        image_cls, image_tokens = net.pool_image(features, keep_index)
        zero = features.new_zeros(())
        losses: dict[str, torch.Tensor] = {}
        if c.caption_loss_weight > 0:
            hidden, _ = net.decode(caption[:, :-1], net.cross_attention_kv(image_tokens), hidden=True)
            targets = caption[:, 1:]
            real = targets != c.pad_id  # project only positions with a target: pads cost nothing
            logits = hidden[real] @ net.token_emb.weight.t()
            losses["caption"] = F.cross_entropy(logits.float(), targets[real])
        text_latents = None
        if c.contrastive_loss_weight > 0 or self.distill_head is not None:
            text_latents = net.text_latents(text)
        if c.contrastive_loss_weight > 0:
            image_latents = net.contrastive_image_latents(image_cls, features, keep_index)
            scale = net.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
            losses["contrastive"] = contrastive_loss(text_latents.float(), image_latents.float(), scale, groups,
                                                     cached=cached)
            if self.word_weight > 0 and word_text is not None:
                with contextlib.nullcontext() if word_grad else torch.no_grad():
                    words = net.text_latents(word_text)
                anchors = image_latents if self.word_moves_images else image_latents.detach()
                losses["words"] = word_image_loss(words.float(), anchors.float(), scale.detach(),
                                                  word_positives, cached=cached)
        if self.distill_head is not None and teacher is not None:
            latents = text_latents
            if extra_text is not None:
                latents = torch.cat([latents, net.text_latents(extra_text)])
                teacher = torch.cat([teacher, extra_teacher])
            predicted = F.normalize(self.distill_head(latents).float(), dim=-1)
            losses["distill"] = (1 - (predicted * teacher).sum(dim=-1)).mean()
        losses["loss"] = self.combine(losses, shares, zero)
        return losses

    def combine(self, losses: dict[str, torch.Tensor], shares: dict[str, float] | None = None,
                zero: torch.Tensor | float = 0.0) -> torch.Tensor:
        """The weighted sum trained on; `shares` scale each term further (1 when absent)."""
        c, shares = self.net.config, shares or {}
        return (c.caption_loss_weight * shares.get("caption", 1.0) * losses.get("caption", zero)
                + c.contrastive_loss_weight * shares.get("contrastive", 1.0) * losses.get("contrastive", zero)
                + self.distill_weight * shares.get("distill", 1.0) * losses.get("distill", zero)
                + self.word_weight * shares.get("words", 1.0) * losses.get("words", zero))

    def image_features(self, inputs: torch.Tensor, keep_index: torch.Tensor | None) -> torch.Tensor:
        """Cached encoder inputs (b ...) -> the image tokens the pool attends to (b k c)."""
        features = inputs if self.cached_features else self.net.image_features(inputs)
        if keep_index is not None:
            features = features.gather(1, keep_index[..., None].expand(-1, -1, features.shape[-1]))
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
    word_moves_images: bool = True


# ----- data preparation -----

@dataclass
class PreparedData:
    frame: pd.DataFrame  # the whole manifest
    train: pd.DataFrame  # training rows with readable images, index 0..n-1
    train_cache: td.InputCache
    captions: list[str]  # caption table: every distinct training caption
    caption_ids: list[list[int]]  # its token ids (framed)
    name_ids: list[list[int]]  # token ids of each training row's name
    teacher: torch.Tensor | None  # (captions 384) MiniLM sentence embeddings
    extra_ids: list[list[int]]  # text-only distillation texts (token ids)
    extra_teacher: torch.Tensor | None  # their MiniLM embeddings
    sampler: td.ConceptBalancedSampler
    image_words: list[list[int]]  # each training row's caption words as indices into `word_ids`
    word_ids: list[list[int]]  # the captions' distinct content words (token ids)
    eval_splits: list[te.EvalSplit]
    data_card: dict[str, Any]


def build_tokenizer(config: TrainConfig, texts: list[str]) -> tuple[Tokenizer, list[int] | None]:
    """The recipe's tokenizer (and, for MiniLM, the MiniLM id of each token)."""
    if config.tokenizer == "minilm":
        from mammut_search.train.text_init import compact_wordpiece

        return compact_wordpiece(texts, common_words=config.common_words)
    if config.tokenizer == "bpe":
        return train_bpe(texts, vocab_size=config.bpe_vocab_size), None
    raise UserError(f"tokenizer must be 'minilm' or 'bpe', not {config.tokenizer!r}")


def encoder_input_fn(net: MaMMUT, runtime: Runtime, cached_features: bool):
    """PIL images -> what the cache holds: frozen features (b j c) or pixels (b 3 H W)."""
    image_config = net.config.image_encoder
    if not cached_features:
        return td.pixel_encoder(image_config)

    def features(images):
        pixels = preprocess_images(images, image_config).to(runtime.device)
        with runtime.autocast():
            return net.image_features(pixels).float().cpu()

    return features


def prepare_data(config: TrainConfig, net: MaMMUT, tokenizer: Tokenizer, runtime: Runtime, frame: pd.DataFrame,
                 cached_features: bool) -> PreparedData:
    """Encoder-input caches, caption tables, MiniLM targets, the sampler and the validation splits."""
    cache_root = Path(config.cache_dir)
    encode = encoder_input_fn(net, runtime, cached_features)
    store = input_store(cache_root, net.image_encoder, net.config.image_encoder, cached_features)
    train = training_rows(config, frame)
    captions = caption_table(train)  # from every training row, so its cache key never depends on image reads
    caption_index = {c: i for i, c in enumerate(captions)}
    teacher = minilm_targets(captions, cache_root, progress=runtime.main) if config.distill_weight > 0 else None
    paths = list(train["path"])
    train_cache = td.build_input_cache(
        paths, encode, views=config.views, seed=config.seed, progress=runtime.main, store=store)
    keep = train_cache.ok
    if not keep.all():
        train = train[keep].reset_index(drop=True)
        train_cache = td.InputCache(train_cache.inputs[:, torch.from_numpy(keep)], np.ones(int(keep.sum()), bool))
    max_len = net.config.max_text_len
    caption_ids = _encode_rows(tokenizer, captions, max_len)
    name_ids = _encode_rows(tokenizer, [str(n) for n in train["name"]], max_len)

    concepts = {c: k for k, c in enumerate(dict.fromkeys(train["concept_id"]))}
    image_concept = np.array([concepts[c] for c in train["concept_id"]], dtype=np.int64)
    concept_images = [np.flatnonzero(image_concept == k) for k in range(len(concepts))]
    image_captions = [np.array([caption_index[c] for c in caps]) for caps in train["captions"]]
    sampler = td.ConceptBalancedSampler(concept_images, image_captions, image_concept,
                                        batch_size=config.batch_size, views=config.views,
                                        images_per_concept=config.images_per_concept, seed=config.seed)

    eval_splits = []
    for split in (config.val_split, config.val_unseen_split):
        rows = frame[frame["split"] == split].reset_index(drop=True) if split else frame.iloc[:0]
        if rows.empty:
            continue
        split_paths = list(rows["path"])
        cache = td.build_input_cache(
            split_paths, encode, views=1, seed=config.seed, progress=runtime.main, store=store)
        ok = torch.from_numpy(cache.ok)
        eval_splits.append(te.EvalSplit(split, rows[cache.ok].reset_index(drop=True), cache.inputs[0][ok]))

    data_card = {
        "manifest": str(config.manifest),
        "manifest_sha256": file_sha256(config.manifest) if Path(config.manifest).is_file() else "",
        "splits": {str(k): int(v) for k, v in frame["split"].value_counts().items()},
        "concepts_per_split": {str(k): int(v) for k, v in frame.groupby("split")["concept_id"].nunique().items()},
        "train_images": len(train), "train_concepts": len(concepts), "train_captions": len(captions),
        "styles_per_split": ({str(k): sorted(map(str, v.unique())) for k, v in frame.groupby("split")["style"]}
                             if "style" in frame.columns else {}),
        "views_per_image": config.views,
    }
    extra_ids, extra_teacher = [], None
    if config.distill_weight > 0 and config.distill_words > 0:
        from mammut_search.train.text_init import common_english_words

        words = common_english_words(config.distill_words)
        extra = [t for w in words for t in (w, td.sentence_query(w))]
        extra_ids = _encode_rows(tokenizer, extra, max_len)
        extra_teacher = minilm_targets(extra, cache_root, progress=runtime.main)
        data_card["distill_words"] = len(words)
    image_words, word_ids = [], []
    if config.word_weight > 0:
        words, image_words = word_vocabulary([list(c) for c in train["captions"]], max_share=config.word_max_share)
        word_ids = _encode_rows(tokenizer, words, max_len)
    return PreparedData(frame, train, train_cache, captions, caption_ids, name_ids, teacher, extra_ids, extra_teacher,
                        sampler, image_words, word_ids, eval_splits, data_card)


# words that name nothing on their own
FUNCTION_WORDS = frozenset("a an the of with and or in on at to for by from s".split())


def word_vocabulary(captions: list[list[str]], *, max_share: float = 1.0) -> tuple[list[str], list[list[int]]]:
    """Each image's captions -> (their distinct content words, each image's words as indices into that list).

    Words on more than `max_share` of the images (the captions' templates: "picture", "emoji") name nothing."""
    row_words = [list(dict.fromkeys(w for text in texts for w in tokenize(text) if w not in FUNCTION_WORDS))
                 for texts in captions]
    counts: dict[str, int] = {}
    for words in row_words:
        for w in words:
            counts[w] = counts.get(w, 0) + 1
    index: dict[str, int] = {}
    rows = [[index.setdefault(w, len(index)) for w in words if counts[w] <= max_share * len(captions)]
            for words in row_words]
    return list(index), rows


def training_rows(config: TrainConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The manifest rows trained on: the training splits, less any excluded style."""
    rows = frame[frame["split"].isin(config.train_splits)]
    if config.exclude_styles and "style" in rows.columns:
        rows = rows[~rows["style"].isin(config.exclude_styles)]
    if rows.empty:
        raise UserError(f"{config.manifest}: no rows in splits {config.train_splits}")
    return rows.reset_index(drop=True)


def caption_table(train: pd.DataFrame) -> list[str]:
    """Every distinct training caption, in first-seen order."""
    return list(dict.fromkeys(c for caps in train["captions"] for c in caps))


def input_store(cache_root: Path, encoder: nn.Module, image_config: ImageEncoderConfig, cached_features: bool) -> Path:
    """The folder of cached encoder inputs: one per encoder (weights and preprocessing) and kind of input."""
    weights = [t.float() for t in encoder.state_dict().values() if t.is_floating_point()][:4]
    fingerprint = [round(float(t.sum()), 4) for t in weights]
    kind = "features" if cached_features else "pixels"
    return cache_root / f"{kind}-{td.cache_key(dataclasses.asdict(image_config), fingerprint if cached_features else 0)}"


def _encode_rows(tokenizer: Tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    out = []
    for s in range(0, len(texts), 4096):
        ids = tokenizer.encode(texts[s:s + 4096], max_len)
        out.extend(r[r != tokenizer.pad_id].tolist() for r in ids)  # pads only trail the words
    return out


def minilm_targets(texts: list[str], cache_root: Path, *, progress: bool) -> torch.Tensor:
    """MiniLM sentence embeddings (t 384) of texts, cached on disk by content."""
    from mammut_search.train.text_init import MiniLMSentenceEncoder

    path = cache_root / f"minilm-{td.cache_key(texts)}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path)).float()
    embeddings = MiniLMSentenceEncoder().encode(texts, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, embeddings.half().numpy())
    os.replace(tmp, path)
    return embeddings.half().float()


def pad_rows(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r)
    return out


# ----- building the network -----

def build_network(config: TrainConfig, tokenizer: Tokenizer, minilm_ids: list[int] | None) -> MaMMUT:
    """A fresh MaMMUT for the recipe: pretrained image encoder, token embeddings from MiniLM if asked."""
    fields = dict(config.model)
    fields["image_encoder"] = ImageEncoderConfig(**fields.get("image_encoder", {}))
    model_config = MammutConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                                eos_id=tokenizer.eos_id, **fields)
    torch.manual_seed(config.seed)
    net = MaMMUT(model_config, pretrained_encoder=model_config.image_encoder.kind == "efficientnet_lite0")
    if config.text_init and config.tokenizer == "minilm":
        from mammut_search.train.text_init import initial_token_embeddings

        with torch.no_grad():
            net.token_emb.weight.copy_(initial_token_embeddings(minilm_ids, model_config.dim))
    return net


def uses_cached_features(model_config: MammutConfig) -> bool:
    """Frozen EfficientNet: its features can be cached; otherwise the cache holds pixels."""
    image = model_config.image_encoder
    return image.kind == "efficientnet_lite0" and image.trainable_blocks == 0


def make_optimizer(config: TrainConfig, objective: TrainingObjective) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, queries and the temperature; slower pretrained embeddings."""
    decay, no_decay, embedding = [], [], []
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("token_emb.weight"):
            embedding.append(p)
        elif p.ndim < 2 or "queries" in name or "cls_token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    embedding_lr = config.lr * (config.embedding_lr_scale if config.text_init else 1.0)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "lr_base": config.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr_base": config.lr},
        {"params": embedding, "weight_decay": 0.0, "lr_base": embedding_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    for group in optimizer.param_groups:
        group["lr"] = group["lr_base"]
    return optimizer


def lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----- checkpoints -----

def swap_in(tmp: Path, final: Path) -> None:
    """Replace directory `final` by `tmp`, keeping the old copy until the new one is in place."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def save_run_checkpoint(directory: Path, net: MaMMUT, tokenizer: Tokenizer, state: dict | None,
                        dtype: torch.dtype = torch.float32) -> str:
    """Write a checkpoint (and train_state.pt beside it, when given) to a fresh folder, then swap it in."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    sha = save_checkpoint(tmp, net, tokenizer, dtype=dtype)
    if state is not None:
        torch.save(state, tmp / TRAIN_STATE)
    swap_in(tmp, directory)
    return sha


def run_recipe(path: str | Path) -> TrainConfig:
    """The recipe a run directory was trained with (from its train_state.pt)."""
    state = torch.load(find_resume_dir(Path(path)) / TRAIN_STATE, map_location="cpu", weights_only=False)
    return TrainConfig.from_dict(state["recipe"])


def find_resume_dir(path: Path) -> Path:
    """A run directory or its `last/` checkpoint -> the folder holding train_state.pt."""
    for candidate in (path, path / "last", path / "last.old"):
        if (candidate / TRAIN_STATE).is_file():
            return candidate
    raise UserError(f"{path}: no {TRAIN_STATE} found there or in its last/; give a run directory to resume")


# ----- the loop -----

def hardware() -> dict[str, Any]:
    """What the run ran on, for the training card."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def train(config: TrainConfig, out_dir: str | Path, *, resume: str | Path | None = None,
          frame: pd.DataFrame | None = None, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Run the recipe; returns the training card (empty when stopped at `stop_at` before the last step).

    `frame` (a manifest DataFrame) replaces reading config.manifest; `stop_at` ends this process at that step
    after saving `last/`, as an interruption would (a later `resume` carries on)."""
    out_dir = Path(out_dir)
    runtime = setup_runtime(config)
    autocast = training_autocast(config, runtime)
    if config.accum_steps < 1 or config.batch_size < config.accum_steps * runtime.world_size:
        raise UserError(f"accum_steps={config.accum_steps}: needs 1 ≤ accum_steps ≤ batch_size / processes "
                        f"({config.batch_size} / {runtime.world_size}); lower accum_steps or raise batch_size")
    started = time.time()
    if frame is None:
        frame = td.read_manifest(config.manifest)
    state = None
    if resume is not None:
        resume_dir = find_resume_dir(Path(resume))
        net, tokenizer, _ = load_checkpoint(resume_dir)
        state = torch.load(resume_dir / TRAIN_STATE, map_location="cpu", weights_only=False)
        net.config.training = {}
    else:
        tokenizer, minilm_ids = build_tokenizer(config, caption_table(training_rows(config, frame)))
        net = build_network(config, tokenizer, minilm_ids)
    cached_features = uses_cached_features(net.config)
    net.to(runtime.device)
    data = prepare_data(config, net.eval(), tokenizer, runtime, frame, cached_features)

    distill_dim = data.teacher.shape[1] if data.teacher is not None else 0
    objective = TrainingObjective(net, distill_dim=distill_dim, cached_features=cached_features)
    objective.distill_weight = config.distill_weight
    objective.word_weight = config.word_weight
    objective.word_moves_images = config.word_moves_images
    if objective.distill_head is not None:
        torch.manual_seed(config.seed + 1)
        nn.init.normal_(objective.distill_head.weight, std=net.config.dim_latents ** -0.5)
    objective.to(runtime.device)
    optimizer = make_optimizer(config, objective)
    step, best_score, best_step, evals_without_gain, history = 0, -math.inf, -1, 0, []
    elapsed_before = 0.0
    if state is not None:
        if objective.distill_head is not None and "distill_head" in state:
            objective.distill_head.load_state_dict(state["distill_head"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_score, best_step = state["step"], state["best_score"], state["best_step"]
        evals_without_gain, history = state["evals_without_gain"], state["history"]
        elapsed_before = state.get("elapsed_s", 0.0)
        torch.set_rng_state(state["torch_rng"])
    model = objective
    if runtime.world_size > 1:
        some_loss_off = net.config.caption_loss_weight == 0 or net.config.contrastive_loss_weight == 0
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=some_loss_off)

    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.jsonl"
    seen_split = config.val_split if any(s.name == config.val_split for s in data.eval_splits) else None
    unseen_split = config.val_unseen_split or None

    def evaluate() -> dict:
        return te.evaluate_retrieval(net, tokenizer, data.eval_splits, features=cached_features, device=runtime.device)

    def train_state() -> dict:
        return {"optimizer": optimizer.state_dict(), "step": step, "best_score": best_score, "best_step": best_step,
                "evals_without_gain": evals_without_gain, "history": history, "torch_rng": torch.get_rng_state(),
                "elapsed_s": elapsed_before + time.time() - started, "recipe": config.to_dict(),
                "distill_head": objective.distill_head.state_dict() if objective.distill_head is not None else None}

    net.train()
    bar = tqdm(total=config.steps, initial=step, desc="training", unit="step", disable=not (progress and runtime.main))
    window_start, window_samples = time.time(), 0
    stop = False
    while step < config.steps and not stop:
        for group in optimizer.param_groups:
            group["lr"] = group["lr_base"] * lr_factor(config, step)
        batch = step_batch(config, data, tokenizer, runtime, step, cached_features)
        optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(model, objective, batch, config.accum_steps, runtime, autocast)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in objective.parameters() if p.requires_grad], config.grad_clip)
        optimizer.step()
        step += 1
        window_samples += len(batch["inputs"]) * runtime.world_size
        bar.update(1)
        if runtime.main and (step % config.log_every == 0 or step == config.steps):
            now = time.time()
            entry = {"step": step, "lr": optimizer.param_groups[0]["lr"],
                     "samples_per_s": window_samples / max(1e-9, now - window_start),
                     **{k: round(float(v.detach()), 4) for k, v in losses.items()},
                     "temperature": round(float(net.logit_scale.detach().exp()), 2)}
            window_start, window_samples = now, 0
            bar.set_postfix(loss=entry["loss"], cap=entry.get("caption"), con=entry.get("contrastive"))
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        at_end = step == config.steps
        if data.eval_splits and seen_split and (step % config.eval_every == 0 or at_end):
            results = evaluate() if runtime.main else {}
            if runtime.main:
                score = te.selection_score(results, seen_split, unseen_split)
                history.append({"step": step, "score": score, **{s: r for s, r in results.items()}})
                summary = {s: {k: round(v, 3) for k, v in r.items() if k in ("t2i_R@1", "t2i_R@5", "i2t_R@1",
                                                                             "t2i_sentence_R@1")}
                           for s, r in results.items()}
                bar.write(f"validation step={step} score={score:.3f} {json.dumps(summary)}")
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "validation": results, "score": score}) + "\n")
                if score > best_score:
                    best_score, best_step, evals_without_gain = score, step, 0
                    save_run_checkpoint(out_dir / "best", net, tokenizer, None)
                else:
                    evals_without_gain += 1
                if config.patience and evals_without_gain >= config.patience:
                    bar.write(f"stopping early: no better validation score for {config.patience} evaluations")
                    stop = True
                minutes = (elapsed_before + time.time() - started) / 60
                if config.max_minutes and minutes >= config.max_minutes:
                    bar.write(f"stopping: the time budget of {config.max_minutes} minutes is spent")
                    stop = True
            stop = _broadcast_flag(stop, runtime)
        interrupted = stop_at is not None and step >= stop_at and not at_end
        if runtime.main and (step % config.save_every == 0 or at_end or stop or interrupted):
            save_run_checkpoint(out_dir / "last", net, tokenizer, train_state())
        if interrupted:
            bar.close()
            return {}
    bar.close()
    if runtime.world_size > 1:
        dist.barrier()
    card: dict[str, Any] = {}
    if runtime.main:
        wall = elapsed_before + time.time() - started
        card = finish(config, out_dir, net, tokenizer, data, runtime, cached_features,
                      step=step, best_step=best_step, history=history, wall_s=wall)
    if runtime.world_size > 1:
        dist.barrier()
    return card


# ----- one step -----

def training_autocast(config: TrainConfig, runtime: Runtime) -> Callable[[], contextlib.AbstractContextManager]:
    """A maker of the step's autocast context: bf16 on CUDA ("auto"), on any device ("bf16"), or none ("fp32").
    bf16 keeps float32's exponent range, so small gradients do not underflow: no loss scaling (GradScaler)."""
    if config.precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"precision must be 'auto', 'bf16' or 'fp32', not {config.precision!r}")
    if config.precision == "fp32" or (config.precision == "auto" and runtime.device.type != "cuda"):
        return contextlib.nullcontext
    return lambda: torch.autocast(runtime.device.type, dtype=torch.bfloat16)


def step_batch(config: TrainConfig, data: PreparedData, tokenizer: Tokenizer, runtime: Runtime, step: int,
               cached_features: bool) -> dict[str, torch.Tensor | None]:
    """This process's share of step `step`'s batch, on the device, as the objective's keyword arguments.

    Random choices (kept image tokens, distillation words) are drawn for the global batch and then split like
    the sampler's rows (r::w), so that N processes train on exactly what one process would."""
    device, rows = runtime.device, slice(runtime.rank, None, runtime.world_size)
    batch = data.sampler.batch(step, runtime.rank, runtime.world_size)
    inputs = data.train_cache.batch(batch.views, batch.images).to(device)
    text = pad_rows([data.caption_ids[i] for i in batch.captions], tokenizer.pad_id).to(device)
    if config.caption_target == "name":
        caption = pad_rows([data.name_ids[int(i)] for i in batch.images], tokenizer.pad_id).to(device)
    else:
        caption = text
    teacher = data.teacher[batch.captions].to(device) if data.teacher is not None else None
    keep_index = None
    if cached_features and config.token_keep < 1.0:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        tokens = inputs.shape[1]
        keep = max(1, round(tokens * config.token_keep))
        chosen = torch.rand(config.batch_size, tokens, generator=generator)[rows]
        keep_index = chosen.argsort(dim=1)[:, :keep].to(device)
    extra_text = extra_teacher = None
    if data.extra_teacher is not None:
        picks = np.random.default_rng([config.seed, step, 1]).choice(len(data.extra_ids), config.distill_words_batch)
        picks = picks[rows]
        if len(picks):
            extra_text = pad_rows([data.extra_ids[i] for i in picks], tokenizer.pad_id).to(device)
            extra_teacher = data.extra_teacher[torch.from_numpy(picks)].to(device)
    word_text, word_positives = step_words(config, data, tokenizer, runtime, step)
    return {"inputs": inputs, "text": text, "caption": caption, "groups": batch.groups.to(device),
            "teacher": teacher, "keep_index": keep_index, "extra_text": extra_text, "extra_teacher": extra_teacher,
            "word_text": word_text, "word_positives": word_positives}


def step_words(config: TrainConfig, data: PreparedData, tokenizer: Tokenizer, runtime: Runtime,
               step: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """This process's share of the step's words (w n) and which images of the global batch each names (w B),
    columns in the order the processes' batches are gathered (rank 0's rows, then rank 1's...)."""
    if config.word_weight <= 0 or not data.word_ids:
        return None, None
    images = data.sampler.global_batch(step).images.numpy()
    world = runtime.world_size
    gathered = np.concatenate([images[r::world] for r in range(world)])
    column_words = [set(data.image_words[i]) for i in gathered]
    present = np.array(sorted(set().union(*column_words)))
    picks = np.random.default_rng([config.seed, step, 2]).permutation(present)[:config.word_batch]
    picks = picks[runtime.rank::world]
    if not len(picks):
        return None, None
    text = pad_rows([data.word_ids[w] for w in picks], tokenizer.pad_id).to(runtime.device)
    positives = torch.tensor([[w in words for words in column_words] for w in picks], dtype=torch.float32)
    return text, positives.to(runtime.device)


def split_batch(batch: dict[str, torch.Tensor | None], parts: int) -> list[dict[str, torch.Tensor | None]]:
    """A step's batch -> `parts` micro-batches of consecutive rows (the extra distillation texts split apart)."""
    extra, whole = {"extra_text", "extra_teacher"}, {"word_text", "word_positives"}
    rows, extras = len(batch["inputs"]), len(batch["extra_text"]) if batch["extra_text"] is not None else 0
    micro = []
    for j in range(parts):
        main = slice(rows * j // parts, rows * (j + 1) // parts)
        side = slice(extras * j // parts, extras * (j + 1) // parts)
        part = {k: v[main] if v is not None else None for k, v in batch.items() if k not in extra | whole}
        part.update({k: batch[k] for k in whole if k in batch})  # every micro-batch scores all the words
        for k in extra:
            part[k] = batch[k][side] if batch[k] is not None and side.stop > side.start else None
        micro.append(part)
    return micro


def loss_counts(batch: dict[str, torch.Tensor | None], pad_id: int) -> list[int]:
    """What each loss averages over: [caption target tokens, distillation texts, contrastive rows]."""
    tokens = int((batch["caption"][:, 1:] != pad_id).sum())
    texts = 0
    if batch["teacher"] is not None:
        texts = len(batch["text"]) + (len(batch["extra_text"]) if batch["extra_text"] is not None else 0)
    return [tokens, texts, len(batch["inputs"])]


def accumulate_gradients(model: nn.Module, objective: TrainingObjective, batch: dict[str, torch.Tensor | None],
                         parts: int, runtime: Runtime,
                         autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, torch.Tensor]:
    """Forward and backward over `parts` micro-batches of this process's batch, leaving in the parameters'
    .grad the gradient of the global batch's loss (DDP averages it over processes); returns this process's
    losses, for the log.

    Each loss is a mean over caption tokens, distillation texts or contrastive rows: a micro-batch's term is
    weighted by its share of the global count times the number of processes (DDP divides by it), so that
    micro-batches and processes add up to the global mean even when their counts differ. The contrastive
    loss is not a sum over rows (every row's negatives are the whole batch): each micro-batch is scored
    against the cached latents of the rest (contrastive.CachedLatents). DDP all-reduces gradients only in
    the last micro-batch's backward."""
    config = objective.net.config
    micro = split_batch(batch, parts)
    counts = [loss_counts(m, config.pad_id) for m in micro]
    local = [sum(column) for column in zip(*counts)]
    totals = torch.tensor(local, dtype=torch.int64, device=runtime.device)
    if runtime.world_size > 1:
        dist.all_reduce(totals)
    totals = [max(1, int(t)) for t in totals]
    cached_text = cached_image = None
    if parts > 1 and config.contrastive_loss_weight > 0:
        with torch.no_grad(), autocast():
            latents = [objective.contrastive_latents(m["inputs"], m["text"], m["keep_index"]) for m in micro]
        cached_text, cached_image = torch.cat([t for t, _ in latents]), torch.cat([i for _, i in latents])
    words = len(batch["word_text"]) if batch.get("word_text") is not None else 0
    word_total = torch.tensor([words], device=runtime.device)
    if runtime.world_size > 1:
        dist.all_reduce(word_total)
    word_total = max(1, int(word_total))
    world, logged, start = runtime.world_size, {}, 0
    for j, (part, (tokens, texts, rows)) in enumerate(zip(micro, counts)):
        last = j == parts - 1
        shares = {"caption": tokens * world / totals[0], "distill": texts * world / totals[1],
                  "contrastive": local[2] * world / totals[2], "words": words * world / word_total}
        cached = None
        if cached_text is not None:  # the last micro-batch trains the logit scale: DDP's synced backward
            # must reach every parameter
            cached = CachedLatents(cached_text, cached_image, batch["groups"], start, scale_grad=last)
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        with model.no_sync() if ddp and not last else contextlib.nullcontext():
            with autocast():
                # the words' gradient is taken once, in the first micro-batch; the images' in each
                losses = model(**part, cached=cached, shares=shares, word_grad=j == 0)
            losses["loss"].backward()
        # the log shows this process's means: the micro-batches weighted by their local counts
        weights = {"caption": tokens / max(1, local[0]), "distill": texts / max(1, local[1]),
                   "contrastive": 1 / parts, "words": 1 / parts}
        for name, weight in weights.items():
            if name in losses:
                logged[name] = logged.get(name, 0.0) + weight * losses[name].detach()
        start += rows
    logged["loss"] = objective.combine(logged)
    return logged


def _broadcast_flag(flag: bool, runtime: Runtime) -> bool:
    if runtime.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item())


def finish(config: TrainConfig, out_dir: Path, net: MaMMUT, tokenizer: Tokenizer, data: PreparedData,
           runtime: Runtime, cached_features: bool, *, step: int, best_step: int, history: list, wall_s: float) -> dict:
    """Load the best weights, measure them (retrieval, captions, baselines), write the card into best/ and
    the export directory."""
    best_dir = out_dir / "best" if (out_dir / "best").is_dir() else out_dir / "last"
    best_net, tokenizer, _ = load_checkpoint(best_dir, device=runtime.device)
    card: dict[str, Any] = {
        "recipe": config.to_dict(),
        "data": data.data_card,
        "steps": step, "best_step": best_step if best_step >= 0 else step,
        "samples_seen": step * config.batch_size,
        "wall_time_s": round(wall_s, 1),
        "hardware": {**hardware(), "device": str(runtime.device), "world_size": runtime.world_size},
        "selection": "best validation score: seen t2i R@1 + seen i2t R@1 + 0.5 seen sentence t2i R@1"
                     " + unseen t2i R@5 + 0.5 unseen sentence t2i R@5",
        "history": [{"step": h["step"], "score": round(h["score"], 4)} for h in history],
    }
    if data.eval_splits:
        card["validation"] = te.evaluate_retrieval(best_net, tokenizer, data.eval_splits, features=cached_features,
                                                   device=runtime.device)
        if config.final_eval:
            names = set(map(str, data.train["name"]))
            card["captions"] = {s.name: te.evaluate_captions(best_net, tokenizer, s, names, features=cached_features,
                                                              device=runtime.device) for s in data.eval_splits}
            if cached_features:
                card["baselines"] = te.baselines(data.train, data.train_cache.inputs[0], data.eval_splits)
    card["targets"] = te.target_check(card, config.val_split, config.val_unseen_split)
    card["conventions"] = ("queries: each concept's name (and 'A picture of a NAME.' for sentence figures); gallery: "
                           "every image of the split; i2t ranks the split's names; ranks as in mammut_search.eval.metrics")
    best_net.config.training = card
    save_run_checkpoint(out_dir / "best", best_net, tokenizer, None)
    (out_dir / "training_card.json").write_text(json.dumps(card, indent=2))
    if config.export:
        dtype = getattr(torch, config.export_dtype)
        save_run_checkpoint(Path(config.export), best_net, tokenizer, None, dtype=dtype)
    return card


def add_to_training_card(checkpoint_dir: str | Path, key: str, value: Any) -> None:
    """Add one entry to a checkpoint's training card (config.json only: the weights, and so the checkpoint's
    identity, do not change)."""
    from mammut_search.model.checkpoint import CONFIG, atomic_write_bytes, read_config

    config = read_config(checkpoint_dir)
    config.training[key] = value
    atomic_write_bytes(Path(checkpoint_dir) / CONFIG, json.dumps(config.to_dict(), indent=2, sort_keys=True).encode())
