"""Captioned image sets in the formats the field uses, read into one normalised table (one row per image).

Formats, recognised from the path:
- Karpathy split JSON (`dataset_coco.json`, `dataset_flickr30k.json`): `images[]` with `filepath` (COCO only),
  `filename`, `split` (train / restval / val / test) and `sentences[].raw`.
- COCO captions JSON (`captions_train2017.json`): `images[]` (`id`, `file_name`) and `annotations[]`
  (`image_id`, `caption`); the split comes from the file name (`captions_val2017.json` -> "val"). Images are
  looked for beside the file, or in `../val2017/` when the file sits in COCO's `annotations/` folder.
- A table (CSV, TSV, JSONL, a JSON list of records, parquet): an image column and a caption column, several
  rows per image or a list of captions per row; optional `split`, `concept_id` and `name` columns. The corpus
  manifest that `mammut corpus build` writes is such a table.
- A folder of images with `NAME.txt` beside each, one caption per line; a first-level subfolder named
  train / restval / val / test gives its images that split.

The table: `path` (absolute), `captions` (list of non-empty strings), `concept_id` (the image's own path unless a
column says otherwise: each image is its own concept), `name` (the concept's name: the first caption unless a
column says otherwise), `split` ("" when the source has none), and a table's other columns (first value per
image). Rows that cannot be used (missing image file, no caption, no file name) are left out and listed in
`problems`, never fatal; relative image paths start from `images_root` (default: the source's folder).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from mammut_search.errors import UserError
from mammut_search.images import has_image_extension

COLUMNS = ("path", "captions", "concept_id", "name", "split")
IMAGE_COLUMN_NAMES = ("image", "path", "file", "filename", "image_path", "filepath", "file_name", "img")
CAPTION_COLUMN_NAMES = ("caption", "captions", "text", "sentence", "description", "raw")
CONCEPT_COLUMN_NAMES = ("concept_id", "concept")
FOLDER_SPLITS = ("train", "restval", "val", "test")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json", ".parquet")
EXAMPLES = 20  # problems shown in summaries


@dataclass
class CaptionedImages:
    """A captioned image set: the normalised table, what was left out while reading, and where it came from."""

    frame: pd.DataFrame  # one row per image: path, captions, concept_id, name, split, ...
    problems: list[dict[str, str]] = field(default_factory=list)  # {"where": file or file:line, "reason": why}
    format: str = "table"  # "karpathy", "coco", "table" or "folder"
    source: str = ""
    dataset: str = ""  # the Karpathy file's "dataset" field: "coco", "flickr30k", "flickr8k" ("" otherwise)

    @property
    def splits(self) -> dict[str, int]:
        """Images per split."""
        return {str(k): int(v) for k, v in self.frame["split"].value_counts(sort=False).items()}

    def select(self, splits: str | Sequence[str] | None) -> "CaptionedImages":
        """Only the images of the given split(s) (None: all); an unknown split is an error naming the known ones."""
        if splits is None:
            return self
        wanted = [splits] if isinstance(splits, str) else list(splits)
        unknown = [s for s in wanted if s not in self.splits]
        if unknown:
            known = ", ".join(f"{k} ({v})" for k, v in self.splits.items()) or "none"
            raise UserError(f"{self.source}: no images in split {', '.join(map(repr, unknown))}; splits there: {known}")
        rows = self.frame[self.frame["split"].isin(wanted)].reset_index(drop=True)
        return replace(self, frame=rows)

    def pairs(self, *, max_captions: int | None = None, group_column: str | None = None) -> pd.DataFrame:
        """One row per image-caption pair: image, caption [, group] (the first `max_captions` of each image)."""
        frame = self.frame
        captions = [list(c)[:max_captions] for c in frame["captions"]]
        pairs = pd.DataFrame({"image": np.repeat(frame["path"].to_numpy(), [len(c) for c in captions]),
                              "caption": [c for row in captions for c in row]})
        if group_column is not None:
            if group_column not in frame.columns:
                raise UserError(f"{self.source}: no column '{group_column}' "
                                f"(columns: {', '.join(map(str, frame.columns))})")
            pairs["group"] = np.repeat(frame[group_column].astype(str).to_numpy(), [len(c) for c in captions])
        return pairs

    def summary(self) -> dict[str, Any]:
        """Counts for reports: images, captions, splits, and the problems by reason with a few examples."""
        return {"format": self.format, "source": self.source, "dataset": self.dataset, "images": len(self.frame),
                "captions": int(sum(len(c) for c in self.frame["captions"])), "splits": self.splits,
                "left_out": dict(Counter(p["reason"].split(":")[0] for p in self.problems)),
                "left_out_examples": self.problems[:EXAMPLES]}


def read_captioned(source: str | os.PathLike, *, images_root: str | os.PathLike | None = None,
                   image_column: str | None = None, caption_column: str | None = None,
                   check_files: bool = True) -> CaptionedImages:
    """Read any of the supported formats (see the module docstring) into a CaptionedImages.

    `check_files`: leave out (and list) images whose file does not exist.
    """
    path = Path(source)
    if path.is_dir():
        result = _read_folder(path)
    elif not path.is_file():
        raise UserError(f"{path}: no such file or folder; give a Karpathy or COCO captions JSON, a CSV/JSONL of "
                        "image-caption pairs, or a folder of images with NAME.txt captions")
    elif path.suffix.lower() == ".json" and (document := _load_json(path)) is not None and isinstance(document, dict):
        result = _read_json_document(path, document, images_root)
    elif path.suffix.lower() in TABLE_SUFFIXES:
        result = _read_table_file(path, images_root, image_column, caption_column)
    else:
        raise UserError(f"{path}: unknown kind of captions file (expected {', '.join(TABLE_SUFFIXES)} or a folder)")
    if check_files:
        result = _drop_missing_files(result)
    if result.frame.empty:
        first = f" (first: {result.problems[0]['where']}: {result.problems[0]['reason']})" if result.problems else ""
        raise UserError(f"{path}: no usable captioned images; {len(result.problems)} left out{first}")
    return result


# ----- JSON documents -----

def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _read_json_document(path: Path, document: dict, images_root) -> CaptionedImages:
    images = document.get("images")
    if isinstance(images, list) and isinstance(document.get("annotations"), list):
        return _read_coco(path, document, images_root)
    if isinstance(images, list) and (not images or isinstance(images[0], dict) and "sentences" in images[0]):
        return _read_karpathy(path, document, images_root)
    raise UserError(f"{path}: a JSON object that is neither a Karpathy split file (images[].sentences) nor COCO "
                    "captions (images[] + annotations[]); a table of image-caption records is a JSON list")


def _read_karpathy(path: Path, document: dict, images_root) -> CaptionedImages:
    """Karpathy's split file: images[] {filepath, filename, split, sentences[].raw}."""
    root = os.path.abspath(images_root if images_root is not None else path.parent)
    rows, problems = [], []
    for number, entry in enumerate(document["images"]):
        if not isinstance(entry, dict) or not _text(entry.get("filename")):
            problems.append({"where": f"{path.name}: images[{number}]", "reason": "no filename"})
            continue
        image = _absolute(root, os.path.join(_text(entry.get("filepath")), _text(entry["filename"])))
        sentences = entry.get("sentences") or []
        captions = [_text(s.get("raw") if isinstance(s, dict) else s) for s in sentences]
        rows.append((image, captions, _text(entry.get("split"))))
    frame, more = _image_rows(rows)
    return CaptionedImages(frame, problems + more, "karpathy", str(path), _text(document.get("dataset")))


def _read_coco(path: Path, document: dict, images_root) -> CaptionedImages:
    """COCO captions: images[] {id, file_name} + annotations[] {image_id, caption}; split from the file name."""
    root = os.path.abspath(images_root if images_root is not None else _coco_images_folder(path))
    split = _coco_split(path.stem)
    captions: dict[Any, list[str]] = {}
    problems = []
    for number, annotation in enumerate(document["annotations"]):
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            problems.append({"where": f"{path.name}: annotations[{number}]", "reason": "no image_id"})
            continue
        captions.setdefault(annotation["image_id"], []).append(_text(annotation.get("caption")))
    rows = []
    for number, entry in enumerate(document["images"]):
        if not isinstance(entry, dict) or not _text(entry.get("file_name")):
            problems.append({"where": f"{path.name}: images[{number}]", "reason": "no file_name"})
            continue
        rows.append((_absolute(root, _text(entry["file_name"])), captions.get(entry.get("id"), []), split))
    frame, more = _image_rows(rows)
    return CaptionedImages(frame, problems + more, "coco", str(path), "coco")


def _coco_split(stem: str) -> str:
    """captions_train2017 -> "train"; captions_val2014 -> "val"; anything else -> ""."""
    match = re.search(r"(train|val|test)", stem.lower())
    return match.group(1) if match else ""


def _coco_images_folder(path: Path) -> Path:
    """COCO's layout keeps annotations/captions_val2017.json beside val2017/: use that folder when it exists."""
    name = path.stem.split("_", 1)[-1]  # captions_val2017 -> val2017
    candidate = path.parent.parent / name
    if path.parent.name == "annotations" and candidate.is_dir():
        return candidate
    return path.parent


# ----- tables -----

def _read_table_file(path: Path, images_root, image_column: str | None, caption_column: str | None) -> CaptionedImages:
    table = _read_table(path)
    image_column = image_column or _find_column(table, IMAGE_COLUMN_NAMES, path, "--image-column")
    caption_column = caption_column or _find_column(table, CAPTION_COLUMN_NAMES, path, "--caption-column",
                                                    required="name" not in table.columns)
    for column in (image_column, caption_column):
        if column is not None and column not in table.columns:
            raise UserError(f"{path}: no column '{column}' (columns: {', '.join(map(str, table.columns))})")
    root = os.path.abspath(images_root if images_root is not None else path.parent)
    header = 2 if path.suffix.lower() in (".csv", ".tsv", ".tab") else 1  # file line of the first row
    names = table["name"].map(_text).tolist() if "name" in table.columns else None
    raw_captions = table[caption_column].tolist() if caption_column is not None else [None] * len(table)
    problems, rows = [], []
    for number, (image, value) in enumerate(zip(table[image_column].tolist(), raw_captions)):
        image = _text(image)
        if not image:
            problems.append({"where": f"{path.name}:{number + header}", "reason": "no image path"})
            continue
        captions = _caption_list(value)
        if not any(captions) and names is not None and names[number]:
            captions = [names[number]]  # the corpus manifest: a concept's name is its caption of last resort
        rows.append((_absolute(root, image), captions, number))
    frame, more = _image_rows([(p, c, "") for p, c, _ in rows])
    first_row = {}
    for p, _, number in rows:
        first_row.setdefault(p, number)
    order = [first_row[p] for p in frame["path"]]
    for column in table.columns:
        if column in (image_column, caption_column):
            continue
        values = table[column].iloc[order].tolist()
        target = {"concept": "concept_id"}.get(str(column), str(column))
        if target in COLUMNS[2:]:
            values = [_text(v) for v in values]
            frame[target] = [v or default for v, default in zip(values, frame[target])]
        elif target not in frame.columns:
            frame[target] = values
    return CaptionedImages(frame, problems + more, "table", str(path))


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pd.read_json(path, lines=suffix != ".json", dtype=False)
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        # keep_default_na=False: a caption "NA" or "null" is text, not a missing value
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give a CSV, TSV or JSONL file of image-caption pairs") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise UserError(f"{path}: cannot read as {suffix.lstrip('.') or 'CSV'} ({str(e).splitlines()[0]})") from None


def _find_column(table: pd.DataFrame, names: Sequence[str], path: Path, flag: str,
                 required: bool = True) -> str | None:
    by_lower = {str(c).lower(): c for c in table.columns}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    if not required:
        return None
    raise UserError(f"{path}: none of the columns {', '.join(map(str, table.columns))} looks like "
                    f"{'/'.join(names[:4])}; name it with {flag}")


def _caption_list(value: Any) -> list[str]:
    """A caption cell -> its captions: a list (JSONL, parquet) or a JSON list written as text (CSV) or one text."""
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_text(v) for v in value]
    return [_text(value)]


# ----- folders -----

def _read_folder(folder: Path) -> CaptionedImages:
    """Images under `folder` (recursively) with NAME.txt beside them, one caption per line."""
    rows = []
    for image in sorted(p for p in folder.rglob("*") if has_image_extension(p) and p.is_file()):
        try:
            lines = image.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:  # no caption file (or an unreadable one): listed as uncaptioned
            lines = []
        first = image.relative_to(folder).parts[0]
        split = first if first in FOLDER_SPLITS and len(image.relative_to(folder).parts) > 1 else ""
        rows.append((os.path.abspath(image), [_text(line) for line in lines if _text(line)], split))
    if not rows:
        raise UserError(f"{folder}: no images found; give a folder of images with NAME.txt captions beside them")
    frame, problems = _image_rows(rows)
    return CaptionedImages(frame, problems, "folder", str(folder))


# ----- shared -----

def _image_rows(rows: Iterable[tuple[str, list[str], str]]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """(image path, captions, split) rows, several per image allowed -> the normalised table and what was left out.

    An image's captions are merged in order; empty ones are dropped (and listed); an image with none is left out."""
    captions: dict[str, list[str]] = {}
    splits: dict[str, str] = {}
    empty: Counter = Counter()
    for image, texts, split in rows:
        captions.setdefault(image, []).extend(t for t in texts if t)
        empty[image] += sum(1 for t in texts if not t)
        splits.setdefault(image, split)
    problems = [{"where": image, "reason": "no caption" if not texts else "empty caption"}
                for image, texts in captions.items() for _ in range(empty[image] if texts else 1)]
    kept = [image for image, texts in captions.items() if texts]
    frame = pd.DataFrame({"path": pd.Series(kept, dtype=object),
                          "captions": pd.Series([captions[p] for p in kept], dtype=object),
                          "concept_id": pd.Series(kept, dtype=object),
                          "name": pd.Series([captions[p][0] for p in kept], dtype=object),
                          "split": pd.Series([splits[p] for p in kept], dtype=object)})
    return frame, problems


def _drop_missing_files(result: CaptionedImages) -> CaptionedImages:
    exists = np.array([os.path.isfile(p) for p in result.frame["path"]], dtype=bool)
    if exists.all():
        return result
    missing = [{"where": p, "reason": "missing image file"} for p in result.frame["path"][~exists]]
    return replace(result, frame=result.frame[exists].reset_index(drop=True), problems=result.problems + missing)


def _absolute(root: str, image: str) -> str:
    """`image` from the absolute folder `root`; normpath, not realpath: the index builder keeps paths as found
    (through symlinks)."""
    return os.path.normpath(os.path.join(root, image))


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()
