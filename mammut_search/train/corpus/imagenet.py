"""The 1,000 ImageNet-1k classes in classifier order, with names, synonyms, glosses and hypernyms.

Class order, names and glosses come from data files in the `timm` wheel (`timm/data/_info/`, read from the
unpacked wheel, never imported); synonyms and hypernym chains from the WordNet 3.0 noun database of Debian's
`wordnet-base` (`usr/share/wordnet/data.noun`, parsed directly). An ImageNet id "n01440764" is the WordNet
noun at byte offset 01440764. The result is cached as cache_dir/imagenet/classes.json.

data.noun lines (see wndb(5)): `offset lex_filenum ss_type w_cnt word lex_id ... p_cnt ptr... | gloss`, with
w_cnt in hexadecimal, and each pointer `symbol offset pos source/target`; "@" is a hypernym, "@i" an
instance hypernym. Lines starting with spaces are the licence header.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from mammut_search.train.corpus.fetch import fetch
from mammut_search.train.corpus.sources import TIMM, WORDNET

TIMM_INFO = "timm/data/_info/"
TIMM_FILES = ("imagenet_synsets.txt", "imagenet_synset_to_lemma.txt", "imagenet_synset_to_definition.txt")
# Nodes too general to name anything a picture shows: the hypernym chain stops before the first of these.
GENERAL_NODES = frozenset({
    "entity", "physical entity", "object", "physical object", "whole", "unit", "artifact", "artefact", "organism",
    "being", "living thing", "animate thing", "abstraction", "abstract entity", "matter", "thing", "causal agent",
    "psychological feature", "group", "grouping", "attribute", "relation", "communication", "measure",
    "instrumentality", "instrumentation",
})
CLASSES_FILE = Path("imagenet") / "classes.json"
NUM_CLASSES = 1000


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class: its WordNet id, names (first = preferred), gloss, hypernym names nearest first."""

    index: int
    wnid: str
    lemmas: list[str]
    gloss: str
    hypernyms: list[str]

    @property
    def name(self) -> str:
        return self.lemmas[0]


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset: its words and hypernym offsets."""

    words: list[str]
    hypernyms: list[str]


def imagenet_classes(cache_dir: str | Path = "data/cache", fetcher: Callable[..., Path] = fetch) -> list[ImageNetClass]:
    """The 1,000 classes in classifier order, from cache_dir/imagenet/classes.json (built when missing)."""
    path = Path(cache_dir) / CLASSES_FILE
    if path.is_file():
        return [ImageNetClass(**row) for row in json.loads(path.read_text(encoding="utf-8"))]
    timm_root = fetcher(TIMM, Path(cache_dir), tuple(TIMM_INFO + f for f in TIMM_FILES))
    wordnet_root = fetcher(WORDNET, Path(cache_dir))
    classes = build_classes(timm_root / TIMM_INFO, wordnet_root / "usr" / "share" / "wordnet" / "data.noun")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(c) for c in classes], indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return classes


def build_classes(timm_info: Path, data_noun: Path, num_classes: int = NUM_CLASSES) -> list[ImageNetClass]:
    """Join timm's class list, names and glosses with WordNet's synonyms and hypernyms."""
    wnids = _lines(timm_info / TIMM_FILES[0])
    if len(wnids) != num_classes:
        raise ValueError(f"{timm_info / TIMM_FILES[0]}: {len(wnids)} classes, expected {num_classes}")
    lemmas = dict(line.split("\t", 1) for line in _lines(timm_info / TIMM_FILES[1]))
    glosses = dict(line.split("\t", 1) for line in _lines(timm_info / TIMM_FILES[2]))
    synsets = read_nouns(data_noun)
    classes = []
    for index, wnid in enumerate(wnids):
        offset = wnid.lstrip("n")
        synset = synsets.get(offset)
        names = [n.strip() for n in lemmas.get(wnid, "").split(",") if n.strip()]
        if synset is not None:
            names += synset.words
        names = _unique(names)
        if not names:
            raise ValueError(f"{wnid}: no name in {timm_info} or {data_noun}")
        classes.append(ImageNetClass(index, wnid, names, glosses.get(wnid, "").strip(),
                                     hypernym_chain(offset, synsets)))
    return classes


def hypernym_chain(offset: str, synsets: dict[str, Synset]) -> list[str]:
    """First-named hypernyms from nearest to farthest along the first hypernym path, stopping before a general node."""
    chain: list[str] = []
    seen = {offset}
    synset = synsets.get(offset)
    while synset is not None and synset.hypernyms:
        parent = synset.hypernyms[0]
        synset = synsets.get(parent)
        if synset is None or parent in seen or any(w.lower() in GENERAL_NODES for w in synset.words[:1]):
            break
        seen.add(parent)
        chain.append(synset.words[0])
    return chain


def read_nouns(data_noun: Path) -> dict[str, Synset]:
    """WordNet's noun synsets by offset ("02123045"): words (underscores as spaces) and hypernym offsets."""
    synsets: dict[str, Synset] = {}
    with open(data_noun, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue
            fields = line.split(" | ", 1)[0].split()
            count = int(fields[3], 16)
            words = [_word(fields[4 + 2 * i]) for i in range(count)]
            at = 4 + 2 * count
            pointers = int(fields[at])
            hypernyms = [fields[at + 2 + 4 * i] for i in range(pointers) if fields[at + 1 + 4 * i] in ("@", "@i")]
            synsets[fields[0]] = Synset(words, hypernyms)
    return synsets


def _unique(names: list[str]) -> list[str]:
    """Names without case-insensitive repeats, in first-seen order and spelling."""
    seen: dict[str, str] = {}
    for n in names:
        seen.setdefault(n.lower(), n)
    return list(seen.values())


def _word(raw: str) -> str:
    """"Tinca_tinca" -> "Tinca tinca"; adjective markers like "(a)" are dropped."""
    return raw.split("(")[0].replace("_", " ")


def _lines(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
