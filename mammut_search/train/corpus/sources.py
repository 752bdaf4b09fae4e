"""The pinned, allowed corpus sources and the reserved collections that must never be used."""

from __future__ import annotations

from dataclasses import dataclass

from mammut_search.errors import UserError


@dataclass(frozen=True)
class Package:
    """One pinned package in a registry."""

    registry: str  # "npm" or "deb"
    name: str
    version: str  # "" for Debian packages: apt-get downloads the distribution's current one


@dataclass(frozen=True)
class Source:
    """One corpus source: the packages it needs, its styles and its licence."""

    name: str
    packages: tuple[Package, ...]
    licence: str
    description: str


EMOJI_DATA = Package("npm", "emoji-datasource", "16.0.0")  # emoji.json: the concept list (MIT)
OPENMOJI = Package("npm", "openmoji", "17.0.0")  # also the CLDR names and keywords of every concept

ICONIFY_SETS = {  # set name -> version; licences are read from each set's info.json
    "noto": "1.2.9",
    "noto-v1": "1.2.5",
    "twemoji": "1.2.5",
    "emojione": "1.2.3",
    "emojione-v1": "1.2.3",
    "emojione-monotone": "1.2.1",
    "fxemoji": "1.2.2",
}

# The validation style: never trained on.
VALIDATION_STYLE = "iconify-fxemoji"

SOURCES: dict[str, Source] = {
    "google": Source(
        "google",
        (Package("npm", "emoji-datasource-google", "16.0.0"),),
        "Apache-2.0",
        "Noto emoji 64 px PNGs (emoji-datasource-google)",
    ),
    "twitter": Source(
        "twitter",
        (Package("npm", "emoji-datasource-twitter", "16.0.0"),),
        "CC-BY-4.0",
        "Twemoji 64 px PNGs (emoji-datasource-twitter)",
    ),
    "openmoji": Source("openmoji", (OPENMOJI,), "CC-BY-SA-4.0", "OpenMoji colour and black SVGs"),
    "noto-font": Source(
        "noto-font",
        (Package("deb", "fonts-noto-color-emoji", ""),),
        "OFL-1.1",
        "Noto Color Emoji font glyphs (Debian fonts-noto-color-emoji)",
    ),
    **{
        f"iconify-{s}": Source(
            f"iconify-{s}",
            (Package("npm", f"@iconify-json/{s}", v),),
            "see info.json",
            f"Iconify set {s}",
        )
        for s, v in ICONIFY_SETS.items()
    },
    "openclipart": Source(
        "openclipart",
        (Package("deb", "openclipart-svg", ""),),
        "public-domain",
        "OpenClipart public-domain clip art (Debian openclipart-svg)",
    ),
}

# Collections kept for independent evaluation or not licensed for this use: refused by name.
RESERVED_WORDS = ("apple", "facebook", "fluent", "streamline")


def check_allowed(name: str) -> None:
    """Raise UserError unless `name` is an allowed source or package (reserved collections are refused)."""
    lowered = name.lower()
    for word in RESERVED_WORDS:
        if word in lowered:
            raise UserError(f"{name}: reserved collection, never used for training or validation (see ASSETS.md)")
    allowed_packages = {EMOJI_DATA.name} | {p.name for s in SOURCES.values() for p in s.packages}
    if name not in SOURCES and name not in allowed_packages:
        raise UserError(f"{name}: not an allowed corpus source; choose from {', '.join(SOURCES)}")
