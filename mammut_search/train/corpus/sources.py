"""The pinned, allowed corpus sources and the reserved collections that must never be used."""

from __future__ import annotations

from dataclasses import dataclass

from mammut_search.errors import UserError


@dataclass(frozen=True)
class Package:
    """One pinned package in a registry."""

    registry: str  # "npm", "deb" or "pypi" (a wheel, read as a zip; never installed)
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

# Real photos with text: validation only, never trained on (split "val_photos").
SKIMAGE = Package("pypi", "scikit-image", "0.25.2")  # skimage/data/: sample photos with telling file names
SKLEARN = Package("pypi", "scikit-learn", "1.7.2")  # sklearn/datasets/images/: china.jpg, flower.jpg
GCOMPRIS = Package("deb", "gcompris-qt-data", "")  # photos with titles inside Qt .rcc resource files
PHOTO_PACKAGES = (SKIMAGE, SKLEARN, GCOMPRIS)

# ImageNet class knowledge: class names and glosses (timm's data files, read, never imported) and WordNet.
TIMM = Package("pypi", "timm", "1.0.22")
WORDNET = Package("deb", "wordnet-base", "")
KNOWLEDGE_PACKAGES = (TIMM, WORDNET)

# Collections kept for independent evaluation or not licensed for this use: refused by name.
RESERVED_WORDS = ("apple", "facebook", "fluent", "streamline")


def check_allowed(name: str) -> None:
    """Raise UserError unless `name` is an allowed source or package (reserved collections are refused)."""
    lowered = name.lower()
    for word in RESERVED_WORDS:
        if word in lowered:
            raise UserError(f"{name}: reserved collection, never used for training or validation (see ASSETS.md)")
    allowed_packages = ({EMOJI_DATA.name} | {p.name for s in SOURCES.values() for p in s.packages}
                        | {p.name for p in PHOTO_PACKAGES + KNOWLEDGE_PACKAGES})
    if name not in SOURCES and name not in allowed_packages:
        raise UserError(f"{name}: not an allowed corpus source; choose from {', '.join(SOURCES)}")
