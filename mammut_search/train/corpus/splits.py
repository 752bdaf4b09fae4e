"""Concept splits: whole word families of emoji concepts are held out, so no held-out family is ever trained on.

A concept's family is the head word of its name: the last word of its first phrase, once generic words are
stripped ("face", "button", directions) and person words dropped. So "cook", "man cook" and "woman cook" are
family "cook"; "cat", "cat face" and "grinning cat with smiling eyes" are family "cat"; "man in tuxedo" is
family "tuxedo"; all clock faces are one family. A family is held out when the hash of its head word falls
below the held-out fraction, with every style and variant of every concept in it.

OpenClipart items whose title names a held-out emoji family are dropped. Of the rest, a slice of title
families (same head-word rule, a differently salted hash, so the slice is independent of the emoji one) is
the objects validation set: "bored dog" and "dog 2" fall on the same side.
"""

from __future__ import annotations

import hashlib
import re

from mammut_search.train.corpus.concepts import Concept
from mammut_search.train.corpus.sources import VALIDATION_STYLE

TRAIN = "train"
HELDOUT_CONCEPTS = "heldout_concepts"  # training styles, unseen concepts: never trained on
VAL = "val"  # the validation style, seen concepts
VAL_UNSEEN = "val_unseen"  # the validation style, unseen concepts
VAL_OBJECTS = "val_objects"  # held-out OpenClipart title families: never trained on
VAL_PHOTOS = "val_photos"  # real photos: validation only
SPLITS = (TRAIN, HELDOUT_CONCEPTS, VAL, VAL_UNSEEN, VAL_OBJECTS, VAL_PHOTOS)

HELDOUT_FRACTION = 0.10
OBJECTS_FRACTION = 0.10
OBJECTS_SALT = "objects:"
PERSON_WORDS = {"man", "woman", "men", "women", "person", "people", "adult", "boy", "girl", "older"}
GENERIC_TAIL = {"face", "button", "sign", "symbol", "up", "down", "left", "right", "mark"}
PHRASE_BREAK = re.compile(r"\s+(?:with|without|in|on|of|behind|over|at|for|from|and)\s+")
CLOCK = re.compile(r"o’clock|o'clock|-thirty")


def words(text: str) -> list[str]:
    """Lower-case word stems of a name or title ("Grinning Cats" -> ["grinning", "cat"])."""
    out = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if len(w) > 4 and w.endswith("ies"):
            w = w[:-3] + "y"
        elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        out.append(w)
    return out


def family_of(name: str) -> str:
    """The family (head word) of a concept name: "woman cook" -> "cook", "cat face" -> "cat"."""
    lowered = name.lower()
    if CLOCK.search(lowered):
        return "clock face"
    main = re.sub(r"\(.*?\)", " ", lowered.split(":")[0])
    for phrase in PHRASE_BREAK.split(main):
        ws = words(phrase)
        while ws and ws[-1] in GENERIC_TAIL:
            ws.pop()
        ws = [w for w in ws if w not in PERSON_WORDS]
        if ws:
            return ws[-1]
    fallback = words(main)
    return fallback[0] if fallback else lowered


def is_heldout_family(family: str, fraction: float = HELDOUT_FRACTION, salt: str = "") -> bool:
    """Deterministic: the same family is held out on every machine and every run."""
    digest = hashlib.sha256((salt + family).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def heldout_families(concepts: dict[str, Concept], fraction: float = HELDOUT_FRACTION) -> set[str]:
    """The held-out family head words."""
    return {f for f in (family_of(c.name) for c in concepts.values()) if is_heldout_family(f, fraction)}


def heldout_concepts(concepts: dict[str, Concept], fraction: float = HELDOUT_FRACTION) -> set[str]:
    """The concept_ids of held-out families."""
    return {cid for cid, c in concepts.items() if is_heldout_family(family_of(c.name), fraction)}


def title_in_families(title: str, families: set[str]) -> bool:
    """True when a clip-art title names a held-out family ("Bored dog" when "dog" is held out)."""
    return bool(set(words(title)) & families)


def object_split(title: str, fraction: float = OBJECTS_FRACTION) -> str:
    """The split of one clip-art item: its title's family decides train or the objects validation set."""
    return VAL_OBJECTS if is_heldout_family(family_of(title), fraction, OBJECTS_SALT) else TRAIN


def split_for(style: str, concept_id: str, heldout: set[str]) -> str:
    """The split of one emoji image: its style decides train vs validation, its concept seen vs unseen."""
    unseen = concept_id in heldout
    if style == VALIDATION_STYLE:
        return VAL_UNSEEN if unseen else VAL
    return HELDOUT_CONCEPTS if unseen else TRAIN
