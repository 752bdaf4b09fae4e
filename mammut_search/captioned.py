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
image). Rows that cannot be used (missing image file, no caption, no file name, a value of the wrong type) are
left out and listed in `problems`, never fatal; relative image paths start from `images_root` (default: the
source's folder).

Only what the user named is read: an image path that leads outside the images root (absolute, or through `..`),
and in a folder a link (image or caption file) that leads outside the folder, is left out and listed unless
`allow_outside` is set; then it is read and listed in `outside`. Caption files are read only when they are
regular files of at most MAX_SIDECAR_BYTES (a pipe would block forever, a link to /dev/zero never ends), in
UTF-8 (a byte-order mark is dropped; other encodings are listed, not guessed).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from mammut_search.errors import UserError
from mammut_search.files import printable, read_regular
from mammut_search.images import has_image_extension

COLUMNS = ("path", "captions", "concept_id", "name", "split")
IMAGE_COLUMN_NAMES = ("image", "path", "file", "filename", "image_path", "filepath", "file_name", "img")
CAPTION_COLUMN_NAMES = ("caption", "captions", "text", "sentence", "description", "raw")
CONCEPT_COLUMN_NAMES = ("concept_id", "concept")
FOLDER_SPLITS = ("train", "restval", "val", "test")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json", ".parquet")
EXAMPLES = 20  # problems shown in summaries
MAX_SIDECAR_BYTES = 1 << 20  # a NAME.txt caption file of more is no caption file (a log, a dump, a device)
OUTSIDE_ROOT = "outside the images root"
LINK_OUTSIDE = "a link to outside the folder"
OUTSIDE_HINT = "pass --allow-outside-root to read what lies outside"


@dataclass
class CaptionedImages:
    """A captioned image set: the normalised table, what was left out while reading, and where it came from."""

    frame: pd.DataFrame  # one row per image: path, captions, concept_id, name, split, ...
    problems: list[dict[str, str]] = field(default_factory=list)  # {"where": file or file:line, "reason": why}
    format: str = "table"  # "karpathy", "coco", "table" or "folder"
    source: str = ""
    dataset: str = ""  # the Karpathy file's "dataset" field: "coco", "flickr30k", "flickr8k" ("" otherwise)
    root: str = ""  # the folder relative image paths start from (the folder itself, for a folder)
    outside: list[str] = field(default_factory=list)  # files read from outside `root` (allow_outside only)
    columns: dict[str, str] = field(default_factory=dict)  # the source's column names -> the frame's columns

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
            known = ", ".join(f"{k or '(no split)'} ({v})" for k, v in self.splits.items()) or "none"
            hint = "; pass --split all for every image" if "" in self.splits else ""
            raise UserError(f"{self.source}: no images in split {', '.join(map(repr, unknown))}; splits there: "
                            f"{known}{hint}")
        rows = self.frame[self.frame["split"].isin(wanted)].reset_index(drop=True)
        return replace(self, frame=rows)

    def pairs(self, *, max_captions: int | None = None, group_column: str | None = None) -> pd.DataFrame:
        """One row per image-caption pair: image, caption [, group] (the first `max_captions` of each image).
        `group_column` is a column of the source (as the user named it) or of the normalised table."""
        frame = self.frame
        captions = [list(c)[:max_captions] for c in frame["captions"]]
        pairs = pd.DataFrame({"image": np.repeat(frame["path"].to_numpy(), [len(c) for c in captions]),
                              "caption": [c for row in captions for c in row]})
        if group_column is not None:
            column = self.columns.get(group_column, group_column)
            if column not in frame.columns or column in ("path", "captions"):
                raise UserError(f"{self.source}: no column '{group_column}' to group by (columns there: "
                                f"{', '.join(self.group_columns()) or 'none'})")
            pairs["group"] = np.repeat(frame[column].astype(str).to_numpy(), [len(c) for c in captions])
        return pairs

    def group_columns(self) -> dict[str, str]:
        """The columns images can be grouped by, as the source names them -> the frame's column."""
        if self.columns:
            return {name: column for name, column in self.columns.items() if column not in ("path", "captions")}
        return {"split": "split"} if self.frame["split"].astype(bool).any() else {}

    def summary(self) -> dict[str, Any]:
        """Counts for reports: images, captions, splits, the problems by reason with a few examples, and the files
        read from outside the root (allow_outside)."""
        return {"format": self.format, "source": self.source, "dataset": self.dataset, "images": len(self.frame),
                "captions": int(sum(len(c) for c in self.frame["captions"])), "splits": self.splits,
                "left_out": dict(Counter(p["reason"].split(":")[0] for p in self.problems)),
                "left_out_examples": self.problems[:EXAMPLES],
                "outside_root": {"root": self.root, "files": len(self.outside), "examples": self.outside[:EXAMPLES]}}


def read_captioned(source: str | os.PathLike, *, images_root: str | os.PathLike | None = None,
                   image_column: str | None = None, caption_column: str | None = None,
                   check_files: bool = True, allow_outside: bool = False) -> CaptionedImages:
    """Read any of the supported formats (see the module docstring) into a CaptionedImages.

    `check_files`: leave out (and list) images whose file does not exist. `allow_outside`: read images (and, in a
    folder, linked files) outside the images root too, listed in `outside`.
    """
    path = Path(source)
    if path.is_dir():
        result = _read_folder(path, allow_outside)
    elif path.exists() and not path.is_file():
        raise UserError(f"{path}: not a regular file (a pipe, socket or device); give a captions file or a folder")
    elif not path.is_file():
        raise UserError(f"{path}: no such file or folder; give a Karpathy or COCO captions JSON, a CSV/JSONL of "
                        "image-caption pairs, or a folder of images with NAME.txt captions")
    elif path.suffix.lower() == ".json" and (document := _load_json(path)) is not None and isinstance(document, dict):
        result = _keep_within_root(_read_json_document(path, document, images_root), allow_outside)
    elif path.suffix.lower() in TABLE_SUFFIXES:
        result = _keep_within_root(_read_table_file(path, images_root, image_column, caption_column), allow_outside)
    else:
        raise UserError(f"{path}: unknown kind of captions file (expected {', '.join(TABLE_SUFFIXES)} or a folder)")
    if check_files:
        result = _drop_missing_files(result)
    if result.frame.empty:
        first = f" (first: {describe_problems(result.problems, 1)})" if result.problems else ""
        raise UserError(f"{path}: no usable captioned images; {len(result.problems)} left out{first}"
                        f"{'; ' + OUTSIDE_HINT if went_outside(p['reason'] for p in result.problems) else ''}")
    return result


def went_outside(reasons: Iterable[str]) -> bool:
    """Whether any of these reasons for leaving something out is that it lies outside the root (then OUTSIDE_HINT
    says how to read it)."""
    return any(reason == OUTSIDE_ROOT or reason.endswith(LINK_OUTSIDE) for reason in reasons)


def describe_problems(problems: Sequence[dict[str, str]], shown: int = 5) -> str:
    """"where: reason; where: reason ..." for the first `shown` problems, file names made printable."""
    text = "; ".join(f"{printable(p['where'])}: {printable(p['reason'])}" for p in problems[:shown])
    return text + (" ..." if len(problems) > shown else "")


# ----- JSON documents -----

def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to be a captions file") from None


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
    rows, problems, first_entry = [], [], {}
    for number, where, entry, filename in _named_entries(path, document["images"], "filename", problems):
        image = _absolute(root, os.path.join(_string(entry.get("filepath")), filename))
        if image in first_entry:
            problems.append({"where": where, "reason": f"duplicate entry: images[{first_entry[image]}] names {filename}"
                                                       " too"})
            continue
        first_entry[image] = number
        sentences = entry.get("sentences")
        if sentences is not None and not isinstance(sentences, list):
            problems.append({"where": where, "reason": f"sentences is {_kind(sentences)}, not a list"})
            continue
        captions = []
        for k, sentence in enumerate(sentences or []):
            text = _caption_text(sentence.get("raw") if isinstance(sentence, dict) else sentence)
            if text is None:
                problems.append({"where": f"{where}.sentences[{k}]", "reason": "caption is not text"})
            else:
                captions.append(text)
        rows.append((image, captions, _string(entry.get("split"))))
    frame, more = _image_rows(rows)
    return CaptionedImages(frame, problems + more, "karpathy", str(path), _string(document.get("dataset")), root)


def _named_entries(path: Path, images: list, key: str, problems: list[dict[str, str]]) -> Iterable[tuple]:
    """(number, where, entry, its `key`) for each images[] entry that names a file; the others are problems."""
    for number, entry in enumerate(images):
        where = f"{path.name}: images[{number}]"
        name = _string(entry.get(key)) if isinstance(entry, dict) else ""
        if name:
            yield number, where, entry, name
        else:
            problems.append({"where": where, "reason": f"no {key}"})


def _read_coco(path: Path, document: dict, images_root) -> CaptionedImages:
    """COCO captions: images[] {id, file_name} + annotations[] {image_id, caption}; split from the file name."""
    root = os.path.abspath(images_root if images_root is not None else _coco_images_folder(path))
    captions, problems = _coco_captions(path, document["annotations"])
    rows, number_of_id = [], {}
    for number, where, entry, file_name in _named_entries(path, document["images"], "file_name", problems):
        image_id = entry.get("id")
        if not _is_id(image_id):
            problems.append({"where": where, "reason": f"id is {_kind(image_id)}, not a whole number or text"})
            continue
        if image_id in number_of_id:
            problems.append({"where": where, "reason": f"duplicate id {image_id!r} (images[{number_of_id[image_id]}] "
                                                       "has it too)"})
            continue
        number_of_id[image_id] = number
        texts = captions.get(image_id, [])
        if not texts and _other_type(image_id) in captions:
            problems.append({"where": where, "reason": f"no caption: images[].id {image_id!r} is "
                                                       f"{_kind(image_id)}, annotations[].image_id "
                                                       f"{_other_type(image_id)!r} is not; ids must match in type"})
            continue
        rows.append((_absolute(root, file_name), texts, _coco_split(path.stem)))
    for image_id, texts in captions.items():  # each annotation whose image is not in images[] counts once
        if image_id not in number_of_id:
            problems += [{"where": f"{path.name}: annotations (image_id {image_id!r})",
                          "reason": "caption of no image in images[]"}] * len(texts)
    frame, more = _image_rows(rows)
    return CaptionedImages(frame, problems + more, "coco", str(path), "coco", root)


def _coco_captions(path: Path, annotations: list) -> tuple[dict[Any, list[str]], list[dict[str, str]]]:
    """annotations[] -> ({image_id: captions}, problems)."""
    captions: dict[Any, list[str]] = {}
    problems = []
    for number, annotation in enumerate(annotations):
        where = f"{path.name}: annotations[{number}]"
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            problems.append({"where": where, "reason": "no image_id"})
            continue
        image_id = annotation["image_id"]
        text = _caption_text(annotation.get("caption"))
        if not _is_id(image_id):
            problems.append({"where": where, "reason": f"image_id is {_kind(image_id)}, not a whole number or text"})
        elif text is None:
            problems.append({"where": where, "reason": "caption is not text"})
        else:
            captions.setdefault(image_id, []).append(text)
    return captions, problems


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _other_type(image_id: int | str) -> int | str | None:
    """12 -> "12", "12" -> 12: the same id in the other JSON type (None when there is none)."""
    if isinstance(image_id, int):
        return str(image_id)
    return int(image_id) if image_id.strip().lstrip("-").isdigit() else None


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
        image = _string(image)
        if not image:
            problems.append({"where": f"{path.name}:{number + header}", "reason": "no image path"})
            continue
        captions = _caption_list(value)
        if None in captions:
            problems.append({"where": f"{path.name}:{number + header}", "reason": "caption is not text"})
            captions = [c for c in captions if c is not None]
        if not any(captions) and names is not None and names[number]:
            captions = [names[number]]  # the corpus manifest: a concept's name is its caption of last resort
        rows.append((_absolute(root, image), captions, number))
    frame, more = _image_rows([(p, c, "") for p, c, _ in rows])
    columns = _table_columns(frame, table, [r[0] for r in rows], [r[2] for r in rows], image_column, caption_column)
    return CaptionedImages(frame, problems + more, "table", str(path), root=root, columns=columns)


def _table_columns(frame: pd.DataFrame, table: pd.DataFrame, paths: list[str], numbers: list[int],
                   image_column: str, caption_column: str | None) -> dict[str, str]:
    """Copy the table's other columns into `frame` (first value per image); -> source name: frame column."""
    first_row: dict[str, int] = {}
    for p, number in zip(paths, numbers):
        first_row.setdefault(p, number)
    order = [first_row[p] for p in frame["path"]]
    columns = {str(image_column): "path"}
    if caption_column is not None:
        columns[str(caption_column)] = "captions"
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
        columns[str(column)] = target
    return columns


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pd.read_json(path, lines=suffix != ".json", dtype=False)
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        with warnings.catch_warnings():  # a row longer than the header: refused, not shifted into an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # keep_default_na=False: a caption "NA" or "null" is text, not a missing value
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                               index_col=False)
    except pd.errors.ParserWarning:
        raise UserError(f"{path}: a row has more fields than the header; quote fields that hold the "
                        "separator") from None
    except TypeError:  # pandas' reading of a JSON line that is not an object
        raise UserError(f"{path}: cannot read as {suffix.lstrip('.')} (every record must be a JSON object)") from None
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give a CSV, TSV or JSONL file of image-caption pairs") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a table of image-caption pairs") from None
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


def _caption_list(value: Any) -> list[str | None]:
    """A caption cell -> its captions (None for one that is not text): a list (JSONL, parquet), a JSON list
    written as text (CSV), or one text."""
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            pass
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_caption_text(v) for v in value]
    return [_caption_text(value)]


# ----- folders -----

def _read_folder(folder: Path, allow_outside: bool) -> CaptionedImages:
    """Images under `folder` (recursively) with NAME.txt beside them (any case), one caption per line."""
    root = os.path.realpath(folder)
    entries = sorted(folder.rglob("*"))
    sidecars = _sidecars(entries)
    rows, problems, outside = [], [], []
    for entry in entries:
        if not has_image_extension(entry):
            if entry.is_symlink() and entry.is_dir():  # the folder walk does not follow linked folders: say so
                problems.append({"where": str(entry), "reason": "a linked folder, not searched"})
            continue
        reason = _not_readable_here(entry, root, allow_outside, outside)
        if reason:
            problems.append({"where": str(entry), "reason": reason})
            continue
        sidecar = sidecars.get((entry.parent, entry.with_suffix(".txt").name)) or sidecars.get(
            (entry.parent, entry.with_suffix(".txt").name.lower()))
        lines: list[str] = []
        if sidecar is not None:
            reason = _not_readable_here(sidecar, root, allow_outside, outside) or ""
            text = "" if reason else _read_sidecar(sidecar)
            if reason or isinstance(text, _Refused):
                problems.append({"where": str(sidecar), "reason": f"caption file is {reason or text}"})
                continue
            lines = [line.strip() for line in text.splitlines() if line.strip()]
        parts = entry.relative_to(folder).parts
        rows.append((os.path.abspath(entry), lines, parts[0] if parts[0] in FOLDER_SPLITS and len(parts) > 1 else ""))
    if not rows and not problems:
        raise UserError(f"{folder}: no images found; give a folder of images with NAME.txt captions beside them")
    frame, more = _image_rows(rows)
    return CaptionedImages(frame, problems + more, "folder", str(folder), root=root,
                           outside=outside)


def _sidecars(entries: list[Path]) -> dict[tuple[Path, str], Path]:
    """(folder, name) -> caption file, under its own name and its lower-cased name (NAME.TXT is found too)."""
    found: dict[tuple[Path, str], Path] = {}
    for entry in entries:
        if entry.suffix.lower() == ".txt":
            found[(entry.parent, entry.name)] = entry
            found.setdefault((entry.parent, entry.name.lower()), entry)
    return found


def _not_readable_here(entry: Path, root: str, allow_outside: bool, outside: list[str]) -> str | None:
    """Why a file found in a folder is not read ("" or None: it is; a link leading outside `root` is then
    noted in `outside`)."""
    try:
        info = entry.stat()
    except OSError as e:
        return "a broken or looping link" if entry.is_symlink() else f"unreadable ({e.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if entry.is_symlink() and not _within(root, os.path.realpath(entry)):
        if not allow_outside:
            return LINK_OUTSIDE
        outside.append(str(entry))
    return None


class _Refused(str):
    """Why a caption file was not read."""


def _read_sidecar(path: Path) -> str | _Refused:
    """The text of a caption file: a regular file of at most MAX_SIDECAR_BYTES in UTF-8 (BOM dropped)."""
    try:
        data = read_regular(path, max_bytes=MAX_SIDECAR_BYTES)
    except OSError as e:
        if e.errno == errno.EFBIG:
            return _Refused(f"larger than {MAX_SIDECAR_BYTES:,} bytes")
        return _Refused(f"unreadable ({e.strerror})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return _Refused(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8")


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


def _keep_within_root(result: CaptionedImages, allow_outside: bool) -> CaptionedImages:
    """Leave out (and list) the images whose path leads outside the images root, absolute or through `..`;
    with `allow_outside`, keep them and note them in `outside`."""
    inside = np.array([_within(result.root, p) for p in result.frame["path"]], dtype=bool)
    if inside.all():
        return result
    away = result.frame["path"][~inside].tolist()
    if allow_outside:
        return replace(result, outside=result.outside + away)
    return replace(result, frame=result.frame[inside].reset_index(drop=True),
                   problems=result.problems + [{"where": p, "reason": OUTSIDE_ROOT} for p in away])


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


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


def _kind(value: Any) -> str:
    """A JSON value's kind in words: "a list", "text", "a number"."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a decimal number"
    return {list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


def _caption_text(value: Any) -> str | None:
    """A caption value -> its text ("" for none), None when it is not text (a list, an object)."""
    if value is None or isinstance(value, str) or isinstance(value, (int, float)) and not isinstance(value, bool):
        return _text(value)
    return None


def _string(value: Any) -> str:
    """A name or path field: its text, stripped; "" for anything that is not text."""
    return value.strip() if isinstance(value, str) else ""


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()
