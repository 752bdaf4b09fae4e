"""Emoji concepts: one per base emoji of emoji.json (no flags, no skin tones), named and described by CLDR data."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SKIP_CATEGORIES = {"Flags", "Component"}
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}


@dataclass
class Concept:
    """One emoji concept, shared by every style that draws it."""

    concept_id: str  # emoji.json "unified", lower case, e.g. "1f419"
    name: str  # CLDR short name, e.g. "octopus"
    char: str  # the emoji itself
    keywords: list[str] = field(default_factory=list)  # CLDR keywords, e.g. ["animal", "creature", "ocean"]
    group: str = ""  # e.g. "animals & nature"
    subgroup: str = ""  # e.g. "animal-marine"
    aliases: list[str] = field(default_factory=list)  # Unicode name and short names, for matching icon names
    vendor_images: dict[str, str] = field(default_factory=dict)  # "google"/"twitter" -> PNG file name


def hex_key(hexcode: str) -> str:
    """Normalise a code point sequence ("2639-FE0F") so qualified and unqualified forms compare equal."""
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def slug(text: str) -> str:
    """Iconify-style slug of a name: "cat face" -> "cat-face", "o’clock" -> "o-clock"."""
    text = text.lower().replace("’", "-").replace("'", "-").replace("&", "and")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def squash(text: str) -> str:
    """A name with every non-alphanumeric removed, as FxEmoji names them ("alarm clock" -> "alarmclock")."""
    return re.sub(r"[^a-z0-9]+", "", text.lower().replace("&", "and"))


def _split_keywords(text: str) -> list[str]:
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def load_concepts(emoji_json: Path, openmoji_json: Path | None) -> dict[str, Concept]:
    """Concepts keyed by concept_id, from emoji.json, named with OpenMoji's CLDR annotations when available."""
    entries = json.loads(Path(emoji_json).read_text(encoding="utf-8"))
    cldr: dict[str, dict] = {}
    if openmoji_json is not None and Path(openmoji_json).exists():
        for row in json.loads(Path(openmoji_json).read_text(encoding="utf-8")):
            if not row.get("skintone"):
                cldr.setdefault(hex_key(row["hexcode"]), row)
    concepts: dict[str, Concept] = {}
    for e in entries:
        if e.get("category") in SKIP_CATEGORIES or SKIN_TONES & set(e["unified"].split("-")):
            continue
        info = cldr.get(hex_key(e["unified"]), {})
        unicode_name = (e.get("name") or "").lower()
        name = info.get("annotation") or unicode_name or e["short_name"].replace("_", " ")
        keywords = [k for k in _split_keywords(info.get("tags", "")) if k.lower() != name.lower()]
        keywords += [k for k in _split_keywords(info.get("openmoji_tags", "")) if k not in keywords]
        concept_id = e["unified"].lower()
        concepts[concept_id] = Concept(
            concept_id=concept_id,
            name=name,
            char="".join(chr(int(h, 16)) for h in e["unified"].split("-")),
            keywords=keywords,
            group=(e.get("category") or "").lower(),
            subgroup=e.get("subcategory") or "",
            aliases=[unicode_name] + [s.replace("_", " ") for s in e.get("short_names", [])],
            vendor_images={v: e["image"] for v in ("google", "twitter") if e.get(f"has_img_{v}") and e.get("image")},
        )
    return concepts


class ConceptMatcher:
    """Finds the concept an icon name or code point sequence stands for."""

    def __init__(self, concepts: dict[str, Concept]):
        self.by_hex = {hex_key(cid): c for cid, c in concepts.items()}
        self.by_slug: dict[str, Concept] = {}
        self.by_squash: dict[str, Concept] = {}
        # CLDR names first so they win over Unicode names and short names.
        for pass_names in (lambda c: [c.name], lambda c: c.aliases):
            for c in concepts.values():
                for n in pass_names(c):
                    self.by_slug.setdefault(slug(n), c)
                    self.by_squash.setdefault(squash(n), c)

    def match_hex(self, hexcode: str) -> Concept | None:
        """The concept of a code point sequence, or None (skin tones and flags are not concepts)."""
        return self.by_hex.get(hex_key(hexcode))

    def match_name(self, icon_name: str) -> Concept | None:
        """The concept of an icon name ("cat-face", "alarmclock"), or None."""
        return self.by_slug.get(slug(icon_name)) or self.by_squash.get(squash(icon_name))
