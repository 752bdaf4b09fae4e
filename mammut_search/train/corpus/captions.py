"""Caption templates: a concept's name alone, with its article, with its keywords, and in short sentences."""

from __future__ import annotations

import re

# How each style is described in sentences ("A black and white drawing of an octopus.").
STYLE_NOUNS = {
    "google": "emoji",
    "twitter": "emoji",
    "noto-font": "emoji",
    "openmoji-color": "emoji",
    "openmoji-black": "black and white line drawing",
    "iconify-noto": "emoji",
    "iconify-noto-v1": "emoji",
    "iconify-twemoji": "emoji",
    "iconify-emojione": "emoji",
    "iconify-emojione-v1": "emoji",
    "iconify-emojione-monotone": "black and white icon",
    "iconify-fxemoji": "emoji",
    "openclipart": "clip art drawing",
}

PLURAL_WORDS = {"people", "men", "women", "children", "feet", "teeth", "mice", "geese"}
MASS_ENDINGS = ("ss", "us", "is", "ous")
# Letters whose spoken name starts with a vowel sound: "an SOS button", "an NG button", but "a UFO".
VOWEL_SOUND_LETTERS = set("AEFHILMNORSX")
CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uter", "eu", "one", "once", "ewe", "ufo", "ure")
SILENT_H = ("hour", "honest", "honor", "honour", "heir")


def is_plural(name: str) -> bool:
    """True for names that take no article: "sunglasses", "men holding hands", "hundred points"."""
    main = re.split(r"[:(]", name)[0].strip().lower()
    ws = re.findall(r"[a-z]+", main)
    if not ws:
        return False
    if PLURAL_WORDS & set(ws):
        return True
    last = ws[-1]
    return len(last) > 3 and last.endswith("s") and not last.endswith(MASS_ENDINGS)


def article(name: str) -> str:
    """The indefinite article for a name: "a", "an", or "" for plurals."""
    if is_plural(name):
        return ""
    first = re.sub(r"^[^A-Za-z0-9]+", "", name)
    if not first:
        return "a"
    word = re.match(r"[A-Za-z0-9]+", first).group(0)
    if word.isdigit():
        return "an" if word.startswith("8") or word in ("11", "18") or re.fullmatch(r"18\d\d\d?", word) else "a"
    if len(word) > 1 and word.isupper():  # acronyms are spelled out: "an ATM sign", "a UFO"
        return "an" if word[0] in VOWEL_SOUND_LETTERS and word not in ("UFO", "UP") else "a"
    if len(word) == 1:
        return "an" if word.upper() in VOWEL_SOUND_LETTERS else "a"
    lowered = word.lower()
    if lowered.startswith(SILENT_H):
        return "an"
    if lowered.startswith(CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if lowered[0] in "aeiou" else "a"


def with_article(name: str) -> str:
    """A name with its indefinite article: "an octopus", "a unicorn", "sunglasses"."""
    art = article(name)
    return f"{art} {name}" if art else name


def sentence(text: str) -> str:
    """Capitalise the first letter and end with a full stop."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def captions_for(name: str, keywords: list[str], style: str, group: str = "") -> list[str]:
    """Every caption of one image: name, article, keywords, group and sentences, no duplicates."""
    name = name.strip()
    keywords = [k for k in keywords if k and k.lower() != name.lower()]
    noun = STYLE_NOUNS.get(style, "picture")
    a_name = with_article(name)
    out = [
        name,
        a_name,
        sentence(a_name),
        sentence(f"a picture of {a_name}"),
        sentence(f"{with_article(noun)} of {a_name}"),
    ]
    if keywords:
        out.append(f"{name}: {', '.join(keywords[:6])}")
        out.append(sentence(f"a drawing of {a_name} ({', '.join(keywords[:3])})"))
    if group:
        out.append(f"{name} ({group})")
    return list(dict.fromkeys(out))
