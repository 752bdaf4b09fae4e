"""Evaluate a checkpoint on captioned images: recall@k both ways, caption quality, and the approximate index's cost.

Inputs become a pairs table (one row per image-caption pair: `image` path, `caption`, optional `group`); each
image is decoded and encoded once, each distinct caption text is encoded once. See `mammut_search.eval.metrics` for
the scoring conventions; they are repeated in every report. `evaluate_captioned` runs the standard protocol on a
captioned set read by `mammut_search.captioned` (a Karpathy split file's test split: COCO 5k, Flickr30k 1k).
"""

from __future__ import annotations

import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from mammut_search.atomic import atomic_write
from mammut_search.captioned import OUTSIDE_HINT, CaptionedImages, describe_problems, went_outside
from mammut_search.errors import ImageLoadError, UserError
from mammut_search.eval import metrics
from mammut_search.files import printable
from mammut_search.inference import auto_batch_size
from mammut_search.model.config import CAPTION_BEAM_WIDTH, CAPTION_MAX_LEN

RANK = {"rank": "1 + number of gallery items scored strictly higher than the best right item (optimistic on ties)"}
DISTINCT_TEXTS = {
    "text_to_image": "share of captions (each distinct image-caption pair counts once) whose image is among the "
                     "top k images; when several images carry the identical caption text, any of them counts",
    "image_to_text": "share of images with at least one of their captions among the top k distinct caption texts",
    "gallery": "images: every readable image of the evaluated set (of its group, with groups); texts: every "
               "distinct caption text",
}
# The standard protocol (CLIP_benchmark's zeroshot_retrieval, and the papers' COCO 5k / Flickr30k 1k): every caption
# is its own query and gallery item, right only for the image it was written for, identical texts included.
PER_CAPTION = {
    "text_to_image": "share of captions whose own image is among the top k images (CLIP_benchmark: every caption is "
                     "a query, identical texts of other images are not right)",
    "image_to_text": "share of images with at least one of their own captions among the top k captions",
    "gallery": "images: every readable image of the evaluated set; texts: every caption of the evaluated set, "
               "identical texts of different images counted apart (CLIP_benchmark)",
}
OTHER_CONVENTIONS = {
    "BLEU-4": "corpus BLEU-4 of the generated caption vs all reference captions of the image, closest reference "
              "length, no smoothing; lower-cased, punctuation removed",
    "CIDEr-D": "coco-caption CIDEr-D (sigma 6, clipped, x10), document frequencies over the references of the "
               "evaluated set; mean over images",
    "index": "text->image through the FAISS index (approximate) vs exact search over the index's own vectors; "
             "gallery = all indexed images; eval images matched to index items by absolute path",
}
CONVENTIONS = {**RANK, **DISTINCT_TEXTS, **OTHER_CONVENTIONS}  # the default: each distinct caption text once
STANDARD_CONVENTIONS = {**RANK, **PER_CAPTION, **OTHER_CONVENTIONS}
STANDARD_CAPTIONS_PER_IMAGE = 5  # COCO's Karpathy test split has 25,010 captions of 5,000 images: papers keep 5 each

_TEXT_BATCH = {"cuda": 1024, "cpu": 256}


# ----- running the model -----

@dataclass
class EvalResult:
    """What an evaluation found: `metrics` (JSON-ready), per-caption and per-image tables, skipped images."""

    metrics: dict[str, Any]
    captions: pd.DataFrame  # image, caption, [group], rank [, index_rank_exact, index_rank_approx]
    images: pd.DataFrame    # image, [group], rank, references, generated, cider_d
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image": path, "reason": why}


@dataclass
class _Encoded:
    paths: list[str]
    latents: torch.Tensor  # (n l)
    generated: list[str] | None
    skipped: list[dict[str, str]]


def evaluate(pairs: pd.DataFrame, model, *, ks: Iterable[int] = (1, 5, 10), image_column: str = "image",
             caption_column: str = "caption", group_column: str | None = None, captions: bool = True,
             beam_width: int = CAPTION_BEAM_WIDTH, max_len: int = CAPTION_MAX_LEN, index=None, batch_size: int | None = None,
             progress: bool = True, load: Callable[[str], Image.Image] | None = None,
             per_caption: bool = False) -> EvalResult:
    """Recall@k both ways (within each group when `group_column` is given), caption quality, index recall.

    `pairs` has one row per image-caption pair; several rows per image are several captions. `index` is an
    opened IndexStore (or None). `load(path)` decodes one image (default: the one image pipeline of
    mammut_search.inference, as indexing and re-ranking use it).
    `per_caption`: every caption is its own query and gallery text, right only for its own image (CLIP_benchmark,
    STANDARD_CONVENTIONS); otherwise identical caption texts are one text, right for all their images (CONVENTIONS).
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise UserError(f"k values must be positive integers, got {ks}")
    table, counts = _clean_pairs(pairs, image_column, caption_column, group_column)
    if table.empty:
        raise UserError(f"no image-caption pairs with both an image and a caption among {len(pairs)} rows")
    encoded = _encode_images(model, table["image"].unique().tolist(), captions=captions, beam_width=beam_width,
                             max_len=max_len, batch_size=batch_size, progress=progress, load=load)
    table = table[table["image"].isin(set(encoded.paths))].reset_index(drop=True)
    if table.empty:
        first = encoded.skipped[0] if encoded.skipped else {"image": "?", "reason": "?"}
        raise UserError(f"no usable image-caption pairs: {len(encoded.skipped)} images could not be read "
                        f"(first: {first['image']}: {first['reason']})")
    texts = table["caption"].unique().tolist()
    text_latents = _encode_texts(model, texts, batch_size=batch_size, progress=progress)
    latent_of_text = dict(zip(texts, text_latents))
    latent_of_image = dict(zip(encoded.paths, encoded.latents))
    caption_table, image_table, by_group = _rank_within_groups(table, latent_of_image, latent_of_text, ks,
                                                               model.device, grouped=group_column is not None,
                                                               per_caption=per_caption)
    report: dict[str, Any] = {
        "conventions": STANDARD_CONVENTIONS if per_caption else CONVENTIONS,
        "ks": ks,
        "counts": {**counts, "pairs": len(table), "images": len(encoded.paths), "distinct_captions": len(texts),
                   "skipped_images": len(encoded.skipped)},
        "text_to_image": metrics.recall_from_ranks(caption_table["rank"], ks),
        "image_to_text": metrics.recall_from_ranks(image_table["rank"], ks),
        "gallery_sizes": {"images": int(image_table.groupby(_group_key(image_table)).size().max()),
                          "texts": int(caption_table.groupby(_group_key(caption_table))["caption"]
                                       .agg("size" if per_caption else "nunique").max())},
    }
    if by_group:
        report["groups"] = by_group
    references = table.groupby("image", sort=False)["caption"].agg(list)
    image_table["references"] = [len(references[p]) for p in image_table["image"]]
    if encoded.generated is not None:
        generated = dict(zip(encoded.paths, encoded.generated))
        report["captioning"] = {**_caption_quality(generated, references, image_table),
                                "beam_width": beam_width, "max_len": max_len}
    if index is not None:
        report["index"], exact, approx = index_recall(index, text_latents, texts, table, ks)
        caption_table["index_rank_exact"] = pd.array([exact.get(t) for t in caption_table["caption"]], dtype="Int64")
        caption_table["index_rank_approx"] = pd.array([approx.get(t) for t in caption_table["caption"]], dtype="Int64")
    report["skipped"] = encoded.skipped
    report["model"] = {"checkpoint_sha256": getattr(model, "checkpoint_sha256", ""), "device": str(model.device)}
    return EvalResult(report, caption_table, image_table, encoded.skipped)


@dataclass
class Protocol:
    """How a captioned set is evaluated: which split, how many captions per image, whether each caption is a text."""

    split: str | None  # None: every image
    captions_per_image: int | None  # None: all
    per_caption: bool

    @classmethod
    def default_for(cls, captioned: CaptionedImages) -> "Protocol":
        """The papers' protocol for a Karpathy file (test split, 5 captions per image, each caption a query) and
        for COCO captions (5 per image, each a query); every caption of every image, distinct texts, otherwise."""
        if captioned.format == "karpathy":
            return cls("test" if "test" in captioned.splits else None, STANDARD_CAPTIONS_PER_IMAGE, True)
        if captioned.format == "coco":
            return cls(None, STANDARD_CAPTIONS_PER_IMAGE, True)
        return cls(None, None, False)


def evaluate_captioned(captioned: CaptionedImages, model, *, split: str | None = None,
                       captions_per_image: int | None = None, per_caption: bool | None = None,
                       group_column: str | None = None, **options: Any) -> EvalResult:
    """Evaluate a captioned set (see mammut_search.captioned) under its default Protocol, any part of which the
    arguments override (split "all": every split). `options` go to `evaluate`. The report adds the protocol and
    what reading left out."""
    default = Protocol.default_for(captioned)
    protocol = Protocol(default.split if split is None else (None if split == "all" else split),
                        captions_per_image or default.captions_per_image,
                        default.per_caption if per_caption is None else per_caption)
    chosen = captioned.select(protocol.split)
    pairs = chosen.pairs(max_captions=protocol.captions_per_image, group_column=group_column)
    result = evaluate(pairs, model, group_column="group" if group_column else None,
                      per_caption=protocol.per_caption, **options)
    result.metrics["protocol"] = {
        "name": protocol_name(chosen, protocol.split),
        "split": protocol.split or "all", "captions_per_image": protocol.captions_per_image or "all",
        "texts": "each caption its own query (CLIP_benchmark)" if protocol.per_caption else "distinct caption texts",
    }
    result.metrics["data"] = {**captioned.summary(), "evaluated_images": len(chosen.frame)}
    return result


def protocol_name(captioned: CaptionedImages, split: str | None) -> str:
    """"COCO 5k test (Karpathy split)" and "Flickr30k 1k test (Karpathy split)" where the set is that; a plain
    description otherwise."""
    images = len(captioned.frame)
    if captioned.format == "karpathy" and split == "test":
        if captioned.dataset == "coco" and images == 5000:
            return "COCO 5k test (Karpathy split)"
        if captioned.dataset == "flickr30k" and images == 1000:
            return "Flickr30k 1k test (Karpathy split)"
    name = captioned.dataset or captioned.format
    return f"{name}, {'split ' + split if split else 'all splits'}, {images} images"


def _rank_within_groups(table: pd.DataFrame, latent_of_image: dict, latent_of_text: dict, ks: list[int],
                        device, *, grouped: bool, per_caption: bool = False,
                        ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Rank every caption among its group's images and every image among its group's distinct captions (or,
    `per_caption`, among all its group's captions, each its own text)."""
    caption_frames, image_frames, by_group = [], [], {}
    for group, rows in (table.groupby("group", sort=True) if grouped else [(None, table)]):
        captions = rows["caption"].tolist()
        keys = list(range(len(rows))) if per_caption else captions  # what makes two caption rows one text
        images, texts, t2i, i2t = metrics.pair_targets(rows["image"].tolist(), keys)
        text_of = dict(zip(keys, captions))
        image_latents = torch.stack([latent_of_image[p] for p in images]).to(device)
        text_latents = torch.stack([latent_of_text[text_of[t]] for t in texts]).to(device)
        text_ranks = metrics.retrieval_ranks(text_latents, image_latents, t2i)
        image_ranks = metrics.retrieval_ranks(image_latents, text_latents, i2t)
        rank_of_text = dict(zip(texts, text_ranks.tolist()))
        caption_frames.append(rows.assign(rank=[rank_of_text[t] for t in keys]))
        image_frame = pd.DataFrame({"image": images, "rank": image_ranks})
        if grouped:
            image_frame.insert(1, "group", group)
            by_group[str(group)] = {
                "images": len(images), "captions": len(rows),
                "text_to_image": metrics.recall_from_ranks(text_ranks, ks),
                "image_to_text": metrics.recall_from_ranks(image_ranks, ks),
            }
        image_frames.append(image_frame)
    return pd.concat(caption_frames, ignore_index=True), pd.concat(image_frames, ignore_index=True), by_group


def _caption_quality(generated: dict[str, str], references: pd.Series, image_table: pd.DataFrame) -> dict[str, float]:
    """BLEU-4 and CIDEr-D of the generated captions; adds `generated` and `cider_d` columns to image_table."""
    candidates = [generated[p] for p in references.index]
    cider = metrics.cider_d_per_item(candidates, references.tolist())
    cider_of = dict(zip(references.index, cider.tolist()))
    image_table["generated"] = [generated[p] for p in image_table["image"]]
    image_table["cider_d"] = [cider_of[p] for p in image_table["image"]]
    return {"BLEU-4": metrics.bleu4(candidates, references.tolist()), "CIDEr-D": float(cider.mean())}


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _group_key(frame: pd.DataFrame):
    return frame["group"] if "group" in frame.columns else np.zeros(len(frame), dtype=int)


def _clean_pairs(pairs: pd.DataFrame, image_column: str, caption_column: str,
                 group_column: str | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep the pairs with an image and a caption, once each; count what was left out."""
    for column in (image_column, caption_column, group_column):
        if column is not None and column not in pairs.columns:
            raise UserError(f"the pairs table has no column '{column}' (columns: {', '.join(map(str, pairs.columns))})")
    table = pd.DataFrame({"image": [_text(v) for v in pairs[image_column]],
                          "caption": [_text(v) for v in pairs[caption_column]]})
    if group_column is not None:
        table["group"] = [_text(v) for v in pairs[group_column]]
    usable = (table["image"] != "") & (table["caption"] != "")
    without = int((~usable).sum())
    table = table[usable]
    before = len(table)
    table = table.drop_duplicates(ignore_index=True)
    return table, {"rows_without_image_or_caption": without, "duplicate_pairs": before - len(table)}


def _encode_images(model, paths: list[str], *, captions: bool, beam_width: int, max_len: int,
                   batch_size: int | None, progress: bool, load) -> _Encoded:
    """Decode (threads), encode once, and caption every image; unreadable images are listed, not fatal."""
    batch_size = batch_size or auto_batch_size(model)

    def pixels(path: str) -> torch.Tensor | str:
        try:  # the one image pipeline, unless the caller brings its own loader
            return model.preprocess_files([path])[0] if load is None else model.preprocess([load(path)])[0]
        except ImageLoadError as e:
            return str(e)
        except Exception as e:  # a loader outside the safe one may raise anything: name it, go on
            return f"{path}: {type(e).__name__}: {e}"

    kept, latents, generated, skipped = [], [], [], []
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    bar = tqdm(total=len(paths), desc="images", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pending = [pool.submit(pixels, p) for p in batches[0]] if batches else []
        for number, batch in enumerate(batches):
            results = [f.result() for f in pending]
            if number + 1 < len(batches):  # decode the next batch while this one runs through the model
                pending = [pool.submit(pixels, p) for p in batches[number + 1]]
            good = [(p, r) for p, r in zip(batch, results) if isinstance(r, torch.Tensor)]
            skipped += [{"image": p, "reason": _reason(p, r)} for p, r in zip(batch, results) if isinstance(r, str)]
            if good:
                features = model.image_features(torch.stack([r for _, r in good]))
                latents.append(model.latents_from_features(features))
                if captions:
                    generated += model.captions_from_features(features, beam_width=beam_width, max_len=max_len)
                kept += [p for p, _ in good]
            bar.update(len(batch))
    bar.close()
    latent_dim = model.latent_dim
    return _Encoded(kept, torch.cat(latents) if latents else torch.zeros(0, latent_dim),
                    generated if captions else None, skipped)


def _reason(path: str, message: str) -> str:
    # ImageLoadError messages read "path: reason"; keep the reason only, the path is its own column
    return message[len(path) + 2:] if message.startswith(path + ": ") else message


def _encode_texts(model, texts: list[str], *, batch_size: int | None, progress: bool) -> torch.Tensor:
    step = max(batch_size or 0, _TEXT_BATCH.get(model.device.type, _TEXT_BATCH["cpu"]))
    chunks = [model.encode_text(texts[i:i + step])
              for i in tqdm(range(0, len(texts), step), desc="captions", unit="batch", disable=not progress)]
    return torch.cat(chunks)


# ----- the index -----

def index_recall(store, text_latents: torch.Tensor, texts: list[str], pairs: pd.DataFrame,
                 ks: Sequence[int]) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """Text->image recall through the index (approximate) and by exact search over the index's vectors.

    Recall counts every pair whose caption has a right image in the index, as the main recall does. Returns
    the report section and, per caption text, the exact and approximate 1-based ranks (a text whose right
    images are not in the approximate top max(ks) has no approximate rank).
    """
    ok = store.items[store.items["status"] == "ok"]
    id_of_path = {os.path.abspath(p): int(i) for p, i in zip(ok["path"], ok["id"])}
    id_of_real = {os.path.realpath(p): i for p, i in id_of_path.items()}

    def item_id(path: str) -> int | None:
        found = id_of_path.get(os.path.abspath(path))
        return found if found is not None else id_of_real.get(os.path.realpath(path))

    text_ids = {t: set() for t in texts}
    for image, caption in zip(pairs["image"], pairs["caption"]):
        found = item_id(image)
        if found is not None:
            text_ids[caption].add(found)
    queries = [i for i, t in enumerate(texts) if text_ids[t]]
    unmatched_images = sorted({p for p in pairs["image"] if item_id(p) is None})
    section: dict[str, Any] = {
        "indexed_items": len(ok), "description": getattr(store.vectors, "description", {}),
        "eval_images_not_in_index": len(unmatched_images), "unmatched_examples": unmatched_images[:10],
    }
    if not queries:
        section["note"] = "no image of the evaluated set is in the index (matched by absolute path)"
        return section, {}, {}
    query_latents = text_latents[queries].float().cpu().numpy()
    targets = [text_ids[texts[i]] for i in queries]
    exact = _exact_index_ranks(store.vectors, ok["id"].to_numpy(np.int64), query_latents, targets)
    approx = _approximate_index_ranks(store.vectors, query_latents, targets, max(ks))
    names = [texts[i] for i in queries]
    exact_of, approx_of = dict(zip(names, exact.tolist())), dict(zip(names, approx.tolist()))
    rows = [t for t in pairs["caption"] if t in exact_of]
    section["captions"] = len(rows)
    section["exact"] = metrics.recall_from_ranks([exact_of[t] for t in rows], ks)
    section["approximate"] = metrics.recall_from_ranks([approx_of[t] for t in rows], ks)
    section["recall_lost"] = {k: section["exact"][k] - section["approximate"][k] for k in section["exact"]}
    return section, exact_of, {t: r for t, r in approx_of.items() if r <= max(ks)}


def _exact_index_ranks(vectors, ids: np.ndarray, queries: np.ndarray, targets: list[set[int]],
                       chunk: int = 16384) -> np.ndarray:
    """Optimistic ranks over every vector of the index by brute force (q)."""
    target_ids = sorted(set().union(*targets))
    target_scores = queries @ np.asarray(vectors.reconstruct(np.array(target_ids, dtype=np.int64))).T  # (q t)
    column = {t: j for j, t in enumerate(target_ids)}
    best = np.array([max(target_scores[q, column[t]] for t in ts) for q, ts in enumerate(targets)])
    above = np.zeros(len(queries), dtype=np.int64)
    for start in tqdm(range(0, len(ids), chunk), desc="exact search", unit="chunk", disable=len(ids) <= chunk):
        block = np.asarray(vectors.reconstruct(ids[start:start + chunk]), dtype=np.float32)  # (c d)
        above += (queries @ block.T > best[:, None]).sum(axis=1)
    return above + 1


def _approximate_index_ranks(vectors, queries: np.ndarray, targets: list[set[int]], k: int) -> np.ndarray:
    """Optimistic ranks within the index's top k (k + 1 = not found there) (q)."""
    scores, ids = vectors.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    ranks = np.full(len(queries), k + 1, dtype=np.int64)
    for q, right in enumerate(targets):
        hits = [j for j, i in enumerate(ids[q]) if int(i) in right]
        if hits:
            ranks[q] = 1 + int((scores[q] > scores[q, hits[0]]).sum())
    return ranks


# ----- the report -----

def format_table(result: EvalResult) -> str:
    """The recall table (and caption scores) as printed text."""
    m = result.metrics
    rows = {"text→image": m["text_to_image"], "image→text": m["image_to_text"]}
    if "exact" in m.get("index", {}):
        rows["text→image, index exact"] = m["index"]["exact"]
        rows["text→image, index approximate"] = m["index"]["approximate"]
    table = (pd.DataFrame(rows).T * 100).round(2)
    lines = [f"recall@k in % ({m['counts']['pairs']} pairs, {m['counts']['images']} images, "
             f"{m['counts']['distinct_captions']} distinct captions)", table.to_string()]
    if "protocol" in m:
        p = m["protocol"]
        lines.insert(0, f"{p['name']}: {p['captions_per_image']} captions per image, {p['texts']}")
    if "index" in m:
        index = m["index"]
        lines.append(f"index: {index['indexed_items']} items ({index['description'].get('type', '?')}); "
                     f"{index.get('captions', 0)} captions with an image in it; "
                     f"{index['eval_images_not_in_index']} evaluated images not in it")
    if "captioning" in m:
        lines.append(pd.DataFrame([{k: round(m["captioning"][k], 4) for k in ("BLEU-4", "CIDEr-D")}],
                                  index=["captions"]).to_string())
    data = m.get("data", {})
    if data.get("left_out"):
        lines.append(f"left out while reading {printable(data['source'])}: "
                     + ", ".join(f"{n} {reason}" for reason, n in data["left_out"].items())
                     + f" ({describe_problems(data['left_out_examples'])})"
                     + (f"; {OUTSIDE_HINT}" if went_outside(data["left_out"]) else ""))
    outside = data.get("outside_root", {})
    if outside.get("files"):
        names = ", ".join(printable(p) for p in outside["examples"][:3])
        lines.append(f"read {outside['files']} files outside {printable(outside['root'])} as allowed: {names}"
                     + (" ..." if outside["files"] > 3 else ""))
    if result.skipped:
        lines.append(f"{len(result.skipped)} image{'s' if len(result.skipped) != 1 else ''} left out (unreadable): "
                     + describe_problems([{"where": s["image"], "reason": s["reason"]} for s in result.skipped]))
    return "\n\n".join(lines)


REPORT_FILES = ("report.json", "captions.csv", "images.csv", "recall_curve.png")
FORMULA_STARTS = tuple("=+-@\t\r＝＋－＠")  # a spreadsheet reads a cell starting so as a formula


def check_report_folder(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Make sure a report can be written to `out_dir` before any work: refuse a file, a folder that holds a report
    (unless `overwrite`) and a folder that cannot be created or written; returns the folder (created)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: a file, not a folder; give --out a folder for the report")
    existing = [name for name in REPORT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise UserError(f"{out}: holds a report already ({', '.join(existing)}); pass --overwrite to replace it, "
                        "or give another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{out}: cannot write the report there ({e.strerror or e})") from None
    return out


def write_report(result: EvalResult, out_dir: str | os.PathLike, *, inputs: dict[str, Any] | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write report.json, captions.csv, images.csv and recall_curve.png into `out_dir`; return their paths.

    Each file is written whole or not at all (a temporary file renamed over it), report.json last; a folder
    holding a report is refused unless `overwrite`. Text cells that a spreadsheet would run as a formula are
    written with a leading apostrophe."""
    out = check_report_folder(out_dir, overwrite=overwrite)
    paths = {name: out / name for name in REPORT_FILES}
    report = json.dumps({"inputs": inputs or {}, **result.metrics}, indent=2, ensure_ascii=False,
                        default=_plain) + "\n"
    writers = {"captions.csv": lambda tmp: spreadsheet_safe(result.captions).to_csv(tmp, index=False),
               "images.csv": lambda tmp: spreadsheet_safe(result.images).to_csv(tmp, index=False),
               "recall_curve.png": lambda tmp: plot_recall_curves(result, tmp, format="png"),
               "report.json": lambda tmp: Path(tmp).write_text(report, encoding="utf-8")}
    try:
        for name, write in writers.items():
            atomic_write(paths[name], write)
    except OSError as e:
        raise UserError(f"{out}: cannot write the report ({e.strerror or e}); files not yet written keep their "
                        "old contents") from None
    return paths


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell that starts like a formula (= + - @ tab, CR) prefixed with an apostrophe, so
    that a spreadsheet shows a caption such as "=cmd|' /C calc'!A0" as text instead of running it."""
    safe = frame.copy()
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = [f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
                            for v in safe[column]]
    return safe


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def plot_recall_curves(result: EvalResult, path: str | os.PathLike, format: str | None = None) -> None:
    """Recall@k against k for both directions, as a PNG (`format`: when the name does not say)."""
    import matplotlib.pyplot as plt

    fig = recall_figure(result)
    fig.savefig(path, dpi=120, format=format)
    plt.close(fig)


def recall_figure(result: EvalResult):
    """The matplotlib figure of `plot_recall_curves` (k on a log axis labelled 1, 10, 100 past k = 20)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    sizes = result.metrics["gallery_sizes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    longest = 1
    for label, ranks, size in (("text→image", result.captions["rank"], sizes["images"]),
                               ("image→text", result.images["rank"], sizes["texts"])):
        max_k = max(1, min(size, 100))
        longest = max(longest, max_k)
        ax.plot(np.arange(1, max_k + 1), 100 * metrics.recall_curve(ranks.to_numpy(), max_k), label=label,
                marker="o" if max_k <= 20 else None, markersize=3)
    if longest > 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 1, 10, 100; not 1.0
    ax.set_title(f"Recall@k: {sizes['texts']} captions, {sizes['images']} images")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
