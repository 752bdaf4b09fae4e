"""From a manifest to what the loop trains on: tokenizer, cached encoder inputs, caption tables, MiniLM targets,
the sampler, validation splits; and each step's batch."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mammut_search.atomic import atomic_write
from mammut_search.cpu_encoder import image_features
from mammut_search.errors import UserError
from mammut_search.eval.metrics import tokenize
from mammut_search.files import read_regular, sha256_regular
from mammut_search.inference import bf16_on_cuda, preprocess_images
from mammut_search.model.config import ImageEncoderConfig
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.tokenizer import Tokenizer
from mammut_search.train import validation
from mammut_search.train import data as td
from mammut_search.train.distributed import Runtime
from mammut_search.train.recipe import TrainConfig

# fixed parts of the recipe (no recipe has varied them): each step's side batches (global), and the label-only
# examples' texts and noise
DISTILL_WORDS_BATCH = 64  # text-only distillation texts
WORD_BATCH = 64  # caption words, each contrasted with the batch's images
LABEL_BATCH = 64  # label-only examples
LABEL_NOISE = 0.02  # std of the Gaussian noise added to each dimension of a label-only example's stand-in vector
LABEL_NAMES = 3  # a class's first lemmas used as its texts
LABEL_HYPERNYMS = 2  # and its nearest hypernyms ("tabby" -> "domestic cat", "cat"; see label_hypernyms)


@dataclass
class PreparedData:
    frame: pd.DataFrame  # the whole manifest
    train: pd.DataFrame  # training rows with readable images, index 0..n-1
    train_cache: td.InputCache | td.DiskInputCache
    captions: list[str]  # caption table: every distinct training caption
    caption_ids: list[list[int]]  # its token ids (framed)
    name_ids: list[list[int]]  # token ids of each training row's name
    teacher: torch.Tensor | None  # (captions 384) MiniLM sentence embeddings
    extra_ids: list[list[int]]  # text-only distillation texts (token ids)
    extra_teacher: torch.Tensor | None  # their MiniLM embeddings
    sampler: td.ConceptBalancedSampler
    image_words: list[list[int]]  # each training row's caption words as indices into `word_ids`
    word_ids: list[list[int]]  # the captions' distinct content words (token ids)
    eval_splits: list[validation.EvalSplit]
    data_card: dict[str, Any]
    labels: "LabelExamples | None" = None
    grid_tokens: int = 0  # the encoder's spatial tokens, the ones feature-token dropout draws from


@dataclass
class LabelExamples:
    """Label-only examples: each ImageNet class's names (token ids) and the embeddings that stand in for images."""

    class_embeddings: torch.Tensor  # (1000 s) MiniLM embeddings of the class prompts
    class_text_ids: list[list[list[int]]]  # per class, its texts' token ids


def corpus_render_size(manifest: str | Path) -> dict[str, int]:
    """{"render_px": N}: the size `mammut corpus build` rendered the drawings at, read from the summary.json
    beside its manifest (validation figures on drawings move with it); {} for any other manifest."""
    try:
        summary = read_regular(Path(manifest).parent / "summary.json", max_bytes=1 << 20)
        return {"render_px": int(json.loads(summary)["size"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def imagenet_label_texts(config: TrainConfig) -> tuple[list[str], list[list[str]]]:
    """(one prompt per ImageNet class, "a photo of a NAME.", in classifier order; each class's label texts:
    its first lemmas and nearest hypernyms)."""
    from mammut_search.eval.bridge import class_prompts
    from mammut_search.train.corpus.imagenet import imagenet_classes

    classes = imagenet_classes(Path(config.imagenet_cache))
    prompts = class_prompts([c.lemmas[0] for c in classes])
    texts = [list(dict.fromkeys([*c.lemmas[:LABEL_NAMES], *label_hypernyms(c.hypernyms, LABEL_HYPERNYMS)]))
             for c in classes]
    return prompts, texts


def label_hypernyms(chain: list[str], count: int, *, depth: int = 5) -> list[str]:
    """The nearest hypernym and then the next one-word ones among the `depth` nearest: the names people use
    ("golden retriever" -> "retriever", "dog"; "tabby" -> "domestic cat", "cat"), not "sporting dog" or "placental"."""
    if not chain or count <= 0:
        return []
    one_word = [h for h in chain[1:depth] if " " not in h and "-" not in h]
    return [chain[0], *one_word][:count]


def class_embeddings(config: TrainConfig, *, progress: bool) -> torch.Tensor:
    """MiniLM sentence embeddings of the ImageNet class prompts (1000 384): what the semantic token mixes."""
    prompts, _ = imagenet_label_texts(config)
    return minilm_targets(prompts, Path(config.cache_dir), progress=progress)


def label_examples(config: TrainConfig, net: MaMMUT, tokenizer: Tokenizer) -> LabelExamples | None:
    """The label-only examples of the recipe, or None when it has none (or the model no semantic token)."""
    if config.label_weight <= 0 or not net.config.semantic_dim:
        return None
    _, texts = imagenet_label_texts(config)
    ids = [_encode_rows(tokenizer, names, net.config.max_text_len) for names in texts]
    return LabelExamples(net.class_embeddings.detach().float().cpu(), ids)


def style_weights(config: TrainConfig, train: pd.DataFrame, image_concept: np.ndarray,
                  n_concepts: int) -> np.ndarray | None:
    """Each concept's probability of being drawn: the recipe's style shares, the rest spread evenly."""
    if not config.style_shares or "style" not in train.columns:
        return None
    concept_style = np.empty(n_concepts, dtype=object)
    concept_style[image_concept] = train["style"].to_numpy()
    weights = np.zeros(n_concepts)
    rest = ~np.isin(concept_style, list(config.style_shares))
    for style, share in config.style_shares.items():
        members = concept_style == style
        if members.any():
            weights[members] = share / members.sum()
    if rest.any():
        weights[rest] = max(0.0, 1.0 - sum(config.style_shares.values())) / rest.sum()
    return weights


def build_tokenizer(config: TrainConfig, texts: list[str]) -> tuple[Tokenizer, list[int]]:
    """MiniLM's WordPiece, compacted to the texts' tokens and the most frequent words (and each token's MiniLM id)."""
    from mammut_search.train.text_init import compact_wordpiece

    return compact_wordpiece(texts, common_words=config.common_words)


def encoder_input_fn(net: MaMMUT, runtime: Runtime, cached_features: bool):
    """PIL images -> what the cache holds: frozen features (b j c) or pixels (b 3 H W)."""
    image_config = net.config.image_encoder
    if not cached_features:
        return td.pixel_encoder(image_config)

    def features(images):
        pixels = preprocess_images(images, image_config).to(runtime.device)
        with bf16_on_cuda(runtime.device):
            return image_features(net, pixels).float().cpu()  # on a CPU through ONNX Runtime

    return features


def prepare_data(config: TrainConfig, net: MaMMUT, tokenizer: Tokenizer, runtime: Runtime, frame: pd.DataFrame,
                 cached_features: bool) -> PreparedData:
    """Encoder-input caches, caption tables, MiniLM targets, the sampler and the validation splits."""
    held_out = validation_rows(config, frame)  # a misnamed split is refused before any image is encoded
    cache_root = Path(config.cache_dir)
    encode = encoder_input_fn(net, runtime, cached_features)
    store = input_store(cache_root, net.image_encoder, net.config.image_encoder, cached_features)
    train = training_rows(config, frame)
    captions = caption_table(train)  # from every training row, so its cache key never depends on image reads
    teacher = minilm_targets(captions, cache_root, progress=runtime.main) if config.distill_weight > 0 else None
    entry_bytes = td.cache_bytes_per_image(net.config.image_encoder, cached_features)
    streamed = td.stream_from_disk(config.stream, len(train) * entry_bytes)
    train, train_cache, unreadable = encode_rows(train, encode, store, runtime, in_memory=not streamed)
    eval_splits = []
    for name, rows in held_out.items():
        rows, cache, left_out = encode_rows(rows, encode, store, runtime)
        eval_splits.append(validation.EvalSplit(name, rows, cache.inputs, config.caption_target == "name"))
        unreadable += left_out
    max_len = net.config.max_text_len
    data_card = {
        "manifest": str(config.manifest),
        "manifest_sha256": sha256_regular(config.manifest) if Path(config.manifest).is_file() else "",
        **corpus_render_size(config.manifest),
        "splits": {str(k): int(v) for k, v in frame["split"].value_counts().items()},
        "concepts_per_split": {str(k): int(v) for k, v in frame.groupby("split")["concept_id"].nunique().items()},
        "train_images": len(train), "train_concepts": int(train["concept_id"].nunique()),
        "train_captions": len(captions),
        "styles_per_split": ({str(k): sorted(map(str, v.unique())) for k, v in frame.groupby("split")["style"]}
                             if "style" in frame.columns else {}),
        "cache": {"bytes_per_image": entry_bytes, "bytes": len(train) * entry_bytes, "streamed": streamed},
        "source": with_unreadable(frame.attrs.get("data", {}), unreadable),  # format, and what was left out
    }
    extra_ids, extra_teacher = distillation_texts(config, net, tokenizer, runtime, data_card)
    image_words, word_ids = [], []
    if config.word_weight > 0:
        words, image_words = word_vocabulary([list(c) for c in train["captions"]], max_share=config.word_max_share)
        word_ids = _encode_rows(tokenizer, words, max_len)
    labels = label_examples(config, net, tokenizer)
    if labels is not None:
        data_card["label_only_classes"] = len(labels.class_text_ids)
    return PreparedData(frame, train, train_cache, captions, _encode_rows(tokenizer, captions, max_len),
                        _encode_rows(tokenizer, [str(n) for n in train["name"]], max_len), teacher, extra_ids,
                        extra_teacher, concept_sampler(config, train, captions), image_words, word_ids, eval_splits,
                        data_card, labels, net.config.image_encoder.grid_tokens)


def encode_rows(rows: pd.DataFrame, encode, store: Path, runtime: Runtime, *,
                in_memory: bool = True) -> tuple[pd.DataFrame, td.InputCache | td.DiskInputCache, list[str]]:
    """Manifest rows -> (the rows whose images could be read, their cached encoder inputs, the others' paths)."""
    paths = list(rows["path"])
    share_encoding(paths, encode, store, runtime)
    cache = td.build_input_cache(paths, encode, progress=runtime.main, store=store, in_memory=in_memory)
    keep = cache.ok
    if keep.all():
        return rows.reset_index(drop=True), cache, []
    return rows[keep].reset_index(drop=True), cache.subset(keep), [paths[i] for i in np.flatnonzero(~keep)]


def concept_sampler(config: TrainConfig, train: pd.DataFrame, captions: list[str]) -> td.ConceptBalancedSampler:
    """The sampler of the training rows: concepts balanced (by the recipe's style shares, where it has any)."""
    caption_index = {c: i for i, c in enumerate(captions)}
    concepts = {c: k for k, c in enumerate(dict.fromkeys(train["concept_id"]))}
    image_concept = np.array([concepts[c] for c in train["concept_id"]], dtype=np.int64)
    order = np.argsort(image_concept, kind="stable")  # each concept's images, ascending: one pass, not one per concept
    concept_images = np.split(order, np.flatnonzero(np.diff(image_concept[order])) + 1)
    image_captions = [np.array([caption_index[c] for c in caps]) for caps in train["captions"]]
    return td.ConceptBalancedSampler(concept_images, image_captions, image_concept, batch_size=config.batch_size,
                                     images_per_concept=config.images_per_concept, seed=config.seed,
                                     concept_weights=style_weights(config, train, image_concept, len(concepts)))


def distillation_texts(config: TrainConfig, net: MaMMUT, tokenizer: Tokenizer, runtime: Runtime,
                       data_card: dict[str, Any]) -> tuple[list[list[int]], torch.Tensor | None]:
    """The text-only distillation texts (token ids) and their MiniLM embeddings: common English words (and the
    ImageNet class names when the model has the semantic token), bare and in a sentence."""
    if config.distill_weight <= 0 or config.distill_words <= 0:
        return [], None
    from mammut_search.train.text_init import common_english_words

    words = common_english_words(config.distill_words)
    if config.label_weight > 0 and net.config.semantic_dim:  # the class names too: queries name objects
        words = list(dict.fromkeys([*words, *(t for names in imagenet_label_texts(config)[1] for t in names)]))
    extra = [t for w in words for t in (w, td.sentence_query(w))]
    data_card["distill_words"] = len(words)
    return (_encode_rows(tokenizer, extra, net.config.max_text_len),
            minilm_targets(extra, Path(config.cache_dir), progress=runtime.main))


def with_unreadable(source: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The reader's summary of what it left out, plus the images that turned out unreadable when encoded (counted,
    the first few named)."""
    if not paths:
        return source
    left_out = {**source.get("left_out", {}), UNREADABLE: source.get("left_out", {}).get(UNREADABLE, 0) + len(paths)}
    shown = [*source.get("left_out_examples", []), *({"where": p, "reason": UNREADABLE} for p in paths[:5])]
    return {**source, "left_out": left_out, "left_out_examples": shown}


UNREADABLE = "unreadable image"


def validation_rows(config: TrainConfig, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The validation sets by name: the recipe's val_splits and, in a manifest with styles, "style:NAME" (every
    image of a style kept out of training)."""
    check_validation_names(config, frame)
    sets = {f"style:{style}": frame[frame["style"] == style]
            for style in (config.val_styles if "style" in frame.columns else [])}
    sets.update({split: frame[frame["split"] == split] for split in config.val_splits})
    return {name: rows.reset_index(drop=True) for name, rows in sets.items() if not rows.empty}


def check_validation_names(config: TrainConfig, frame: pd.DataFrame) -> None:
    """Validation splits (or styles) the manifest lacks: refused when it has other held-out ones (a misspelt
    name), said in a line when it has none at all (training images only: the last checkpoint is kept)."""
    splits = set(frame["split"])
    missing = [s for s in config.val_splits if s not in splits]
    held_out = sorted(map(str, splits - set(config.train_splits)))
    if "style" in frame.columns:
        styles = set(frame["style"])
        if any(s not in styles for s in config.val_styles):
            raise UserError(f"val_styles = {config.val_styles}: {config.manifest} has no style "
                            f"{', '.join(repr(s) for s in config.val_styles if s not in styles)}")
    if not missing:
        return
    named = ", ".join(map(repr, missing))
    if held_out:
        raise UserError(f"val_splits: {config.manifest} has no split {named} (its held-out splits: "
                        f"{', '.join(held_out)}); name the ones to validate on, or set val_splits = [] to train "
                        "without validation")
    tqdm.write(f"{config.manifest}: no split {named} and no other held-out images, so no validation: the last "
               "checkpoint is kept")


def share_encoding(paths: list[str], encode, store: Path, runtime: Runtime) -> None:
    """Under torchrun, each process first encodes its share (every world_size-th image) into the store, so that
    the cache is built once, not once per process; then every process reads it from there."""
    if runtime.world_size == 1:
        return
    td.build_input_cache(paths[runtime.rank::runtime.world_size], encode, store=store, progress=runtime.main,
                         in_memory=False)
    dist.barrier()


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
    left_out = [*config.exclude_styles, *config.val_styles]
    if left_out and "style" in rows.columns:
        rows = rows[~rows["style"].isin(left_out)]
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
    from mammut_search.model.minilm import MiniLMSentenceEncoder

    path = cache_root / f"minilm-{td.cache_key(texts)}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path)).float()
    embeddings = MiniLMSentenceEncoder().encode(texts, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npy(path, embeddings.half().numpy())
    return embeddings.half().float()


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save through the crash-safe writer (a file object: np.save would append .npy to a temp name)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def pad_rows(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r)
    return out


def step_batch(config: TrainConfig, data: PreparedData, tokenizer: Tokenizer, runtime: Runtime, step: int,
               cached_features: bool) -> dict[str, torch.Tensor | None]:
    """This process's share of step `step`'s batch, on the device, as the objective's keyword arguments.

    Random choices (kept image tokens, distillation words) are drawn for the global batch and then split like
    the sampler's rows (r::w), so that N processes train on exactly what one process would."""
    device, rows = runtime.device, slice(runtime.rank, None, runtime.world_size)
    batch = data.sampler.batch(step, runtime.rank, runtime.world_size)
    inputs = data.train_cache.batch(batch.images).to(device)
    text = pad_rows([data.caption_ids[i] for i in batch.captions], tokenizer.pad_id).to(device)
    if config.caption_target == "name":
        caption = pad_rows([data.name_ids[int(i)] for i in batch.images], tokenizer.pad_id).to(device)
    else:
        caption = text
    teacher = data.teacher[batch.captions].to(device) if data.teacher is not None else None
    keep_index = None
    if cached_features and config.token_keep < 1.0:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        tokens = data.grid_tokens  # only grid tokens are dropped, never the classifier token
        keep = max(1, round(tokens * config.token_keep))
        chosen = torch.rand(config.batch_size, tokens, generator=generator)[rows]
        keep_index = chosen.argsort(dim=1)[:, :keep].to(device)
    extra_text = extra_teacher = None
    if data.extra_teacher is not None:
        picks = np.random.default_rng([config.seed, step, 1]).choice(len(data.extra_ids), DISTILL_WORDS_BATCH)
        picks = picks[rows]
        if len(picks):
            extra_text = pad_rows([data.extra_ids[i] for i in picks], tokenizer.pad_id).to(device)
            extra_teacher = data.extra_teacher[torch.from_numpy(picks)].to(device)
    word_text, word_positives = step_words(config, data, tokenizer, runtime, step)
    return {"inputs": inputs, "text": text, "caption": caption, "groups": batch.groups.to(device),
            "teacher": teacher, "keep_index": keep_index, "extra_text": extra_text, "extra_teacher": extra_teacher,
            "word_text": word_text, "word_positives": word_positives,
            **step_labels(config, data, tokenizer, runtime, step)}


def step_labels(config: TrainConfig, data: PreparedData, tokenizer: Tokenizer, runtime: Runtime,
                step: int) -> dict[str, torch.Tensor]:
    """This process's share of the step's label-only examples: for each, a class, one of its texts (the
    contrastive text and the captioning target), and a stand-in vector: the class's embedding mixed with a
    random other class's (as a classifier hesitates) plus Gaussian noise."""
    if data.labels is None:
        return {}
    labels, rng = data.labels, np.random.default_rng([config.seed, step, 3])
    n = len(labels.class_text_ids)
    classes = rng.integers(0, n, LABEL_BATCH)
    others = rng.integers(0, n, LABEL_BATCH)
    own = rng.uniform(0.5, 1.0, LABEL_BATCH)
    texts = [labels.class_text_ids[c][rng.integers(len(labels.class_text_ids[c]))] for c in classes]
    noise = rng.normal(0.0, LABEL_NOISE, (LABEL_BATCH, labels.class_embeddings.shape[1]))
    rows = slice(runtime.rank, None, runtime.world_size)
    embeddings = labels.class_embeddings
    stand_in = (torch.from_numpy(own[:, None]).float() * embeddings[classes]
                + torch.from_numpy(1 - own[:, None]).float() * embeddings[others] + torch.from_numpy(noise).float())
    ids = pad_rows(texts[rows], tokenizer.pad_id).to(runtime.device)
    return {"label_semantic": stand_in[rows].to(runtime.device), "label_text": ids, "label_caption": ids,
            "label_groups": torch.from_numpy(classes[rows]).to(runtime.device)}


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
    picks = np.random.default_rng([config.seed, step, 2]).permutation(present)[:WORD_BATCH]
    picks = picks[runtime.rank::world]
    if not len(picks):
        return None, None
    text = pad_rows([data.word_ids[w] for w in picks], tokenizer.pad_id).to(runtime.device)
    positives = torch.tensor([[w in words for words in column_words] for w in picks], dtype=torch.float32)
    return text, positives.to(runtime.device)
