"""From unpacked sources to render jobs and manifest rows: which image shows which concept, in which split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mammut_search.train.corpus.captions import captions_for
from mammut_search.train.corpus.concepts import Concept, ConceptMatcher
from mammut_search.train.corpus.openclipart import ClipartInfo, parse_clipart
from mammut_search.train.corpus.render import RenderJob
from mammut_search.train.corpus.splits import OBJECTS_FRACTION, TRAIN, object_split, split_for, title_in_families


@dataclass
class Item:
    """One corpus image: how to render it and its manifest row (path relative to the corpus dir)."""

    job: RenderJob
    row: dict


@dataclass
class Context:
    """What every collector needs: the concepts, the held-out sets, and where images go."""

    concepts: dict[str, Concept]
    heldout: set[str]
    heldout_families: set[str]
    corpus_dir: Path
    size: int
    objects_fraction: float = OBJECTS_FRACTION

    def image_path(self, style: str, name: str) -> str:
        """Path of an image relative to the corpus dir; the size is part of it so sizes never mix."""
        return f"images/{self.size}/{style}/{name}.png"


def emoji_item(ctx: Context, style: str, source: str, licence: str, concept: Concept, job_kind: str,
               job_source: str, char: str = "") -> Item:
    """The item of one emoji concept drawn in one style."""
    rel = ctx.image_path(style, concept.concept_id)
    return Item(
        job=RenderJob(job_kind, job_source, str(ctx.corpus_dir / rel), char),
        row={
            "path": rel,
            "concept_id": concept.concept_id,
            "name": concept.name,
            "captions": captions_for(concept.name, concept.keywords, style, concept.group),
            "style": style,
            "split": split_for(style, concept.concept_id, ctx.heldout),
            "source": source,
            "licence": licence,
        },
    )


def vendor_png_items(ctx: Context, root: Path, vendor: str, licence: str) -> list[Item]:
    """emoji-datasource-<vendor>: the 64 px PNG of every concept that vendor draws."""
    folder = root / "package" / "img" / vendor / "64"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing; is this emoji-datasource-{vendor}?")
    items = []
    for c in ctx.concepts.values():
        png = folder / c.vendor_images.get(vendor, "-")
        if png.is_file():
            items.append(emoji_item(ctx, vendor, f"emoji-datasource-{vendor}@16.0.0", licence, c, "png", str(png)))
    return items


def openmoji_items(ctx: Context, root: Path) -> list[Item]:
    """OpenMoji: the colour and the black SVG of every concept (skin tones and extras are skipped)."""
    rows = json.loads((root / "package" / "data" / "openmoji.json").read_text(encoding="utf-8"))
    matcher = ConceptMatcher(ctx.concepts)
    items, seen = [], set()
    for r in rows:
        concept = None if r.get("skintone") else matcher.match_hex(r["hexcode"])
        if concept is None or concept.concept_id in seen:
            continue
        seen.add(concept.concept_id)
        for colour in ("color", "black"):
            svg = root / "package" / colour / "svg" / f"{r['hexcode']}.svg"
            if svg.is_file():
                items.append(emoji_item(ctx, f"openmoji-{colour}", "openmoji@17.0.0", "CC-BY-SA-4.0", concept,
                                        "svgfile", str(svg)))
    return items


def noto_font_items(ctx: Context, root: Path) -> list[Item]:
    """Noto Color Emoji: one glyph per concept (concepts the font lacks fail at render time and are skipped)."""
    fonts = sorted(root.rglob("NotoColorEmoji.ttf"))
    if not fonts:
        raise FileNotFoundError(f"{root}: no NotoColorEmoji.ttf inside")
    return [
        emoji_item(ctx, "noto-font", "fonts-noto-color-emoji (Debian)", "OFL-1.1", c, "font", str(fonts[0]), c.char)
        for c in ctx.concepts.values()
    ]


def iconify_svg(icon: dict, default_width: int, default_height: int) -> str:
    """A standalone SVG document from an Iconify icon body (monotone icons draw in black)."""
    left, top = icon.get("left", 0), icon.get("top", 0)
    width, height = icon.get("width", default_width), icon.get("height", default_height)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" color="#000000" '
        f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">{icon["body"]}</svg>'
    )


def iconify_licence(root: Path) -> str:
    """The SPDX licence of an Iconify set, from its info.json (or icons.json's info)."""
    for name in ("info.json", "icons.json"):
        path = root / "package" / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            info = data.get("info", data) if name == "icons.json" else data
            spdx = (info.get("license") or {}).get("spdx")
            if spdx:
                return spdx
    raise ValueError(f"{root}: no licence in info.json; refusing a set of unknown licence")


def iconify_items(ctx: Context, root: Path, set_name: str, version: str) -> list[Item]:
    """An Iconify set: every icon whose code points (chars.json) or CLDR slug name a concept; one per concept."""
    data = json.loads((root / "package" / "icons.json").read_text(encoding="utf-8"))
    chars_path = root / "package" / "chars.json"
    hex_of = {name: hexcode for hexcode, name in json.loads(chars_path.read_text()).items()} if chars_path.is_file() else {}
    alias_names: dict[str, list[str]] = {}
    for alias, spec in data.get("aliases", {}).items():
        if set(spec) == {"parent"}:  # aliases with rotations or flips draw something else
            alias_names.setdefault(spec["parent"], []).append(alias)
    matcher = ConceptMatcher(ctx.concepts)
    licence = iconify_licence(root)
    style = f"iconify-{set_name}"
    chosen: dict[str, tuple[bool, str]] = {}  # concept_id -> (hidden, icon name); visible icons win
    for name, icon in data["icons"].items():
        concept = matcher.match_hex(hex_of[name]) if name in hex_of else None
        for candidate in [name] + alias_names.get(name, []):
            if concept is None:
                concept = matcher.match_name(candidate)
        if concept is None:
            continue
        hidden = bool(icon.get("hidden"))
        if concept.concept_id not in chosen or chosen[concept.concept_id][0] > hidden:
            chosen[concept.concept_id] = (hidden, name)
    width, height = data.get("width", 16), data.get("height", 16)
    return [
        emoji_item(ctx, style, f"@iconify-json/{set_name}@{version}", licence, ctx.concepts[cid], "svg",
                   iconify_svg(data["icons"][name], width, height))
        for cid, (_, name) in sorted(chosen.items())
    ]


def openclipart_items(ctx: Context, root: Path) -> list[Item]:
    """OpenClipart: every SVG with a usable title, in train or val_objects; titles naming a held-out emoji family
    are dropped."""
    svg_root = root / "usr" / "share" / "openclipart" / "svg"
    if not svg_root.is_dir():
        raise FileNotFoundError(f"{svg_root}: missing; is this openclipart-svg?")
    items = []
    for path in sorted(svg_root.rglob("*.svg")):
        info = parse_clipart(path, svg_root)
        if info is None or title_in_families(info.title, ctx.heldout_families):
            continue
        rel_id = path.relative_to(svg_root).with_suffix("").as_posix()
        rel = ctx.image_path("openclipart", rel_id)
        items.append(Item(
            job=RenderJob("clipart", str(path), str(ctx.corpus_dir / rel)),
            row={
                "path": rel,
                "concept_id": f"openclipart/{rel_id}",
                "name": info.title,
                "style": "openclipart",
                "source": "openclipart-svg (Debian)",
                "licence": "public-domain",
                **clipart_split(info, ctx.objects_fraction),
            },
        ))
    return items


def clipart_split(info: ClipartInfo, fraction: float = OBJECTS_FRACTION) -> dict:
    """The split and captions of one clip-art item: training captions, or, in val_objects, the cleaned title
    first and then its keywords (the texts a person would search with)."""
    split = object_split(info.title, fraction)
    if split == TRAIN:
        return {"split": split, "captions": captions_for(info.title, info.keywords, "openclipart")}
    return {"split": split, "captions": list(dict.fromkeys([info.title] + info.keywords))}
