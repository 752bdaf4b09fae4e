"""ImageNet class knowledge from timm's data files and a WordNet noun database, both generated here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammut_search.train.corpus.imagenet import NUM_CLASSES, imagenet_classes, read_nouns

# offset, words, hypernym offsets, gloss; the database's licence header lines start with spaces
NOUNS = [
    ("00001740", ["entity"], [], "that which is perceived to exist"),
    ("00004258", ["living_thing", "animate_thing"], ["00001740"], "a living entity"),
    ("00004475", ["organism", "being"], ["00004258"], "a living thing"),
    ("00015388", ["animal", "animate_being", "beast"], ["00004475"], "a living organism"),
    ("02083346", ["canine", "canid"], ["00015388"], "a dog-like mammal"),
    ("02084071", ["dog", "domestic_dog", "Canis_familiaris"], ["02083346"], "a domesticated canid"),
]


def _noun_line(offset: str, words: list[str], hypernyms: list[str], gloss: str) -> str:
    word_part = " ".join(f"{w} 0" for w in words)
    pointers = " ".join(f"@ {h} n 0000" for h in hypernyms) + " ~ 00000000 n 0000"  # a hyponym pointer is skipped
    return f"{offset} 05 n {len(words):02x} {word_part} {len(hypernyms) + 1:03d} {pointers} | {gloss}  \n"


@pytest.fixture()
def fake_packages(tmp_path) -> dict[str, Path]:
    """An unpacked timm wheel (its three class files) and wordnet-base (data.noun) with 1,000 dog breeds."""
    breeds = [(f"{i + 10**7:08d}", [f"breed_{i}", f"Breed{i}_dog"], ["02084071"], f"breed number {i}")
              for i in range(NUM_CLASSES)]
    wordnet = tmp_path / "wordnet" / "usr/share/wordnet"
    wordnet.mkdir(parents=True)
    lines = ["  1 This software and database is being provided\n", "  2 to you, the LICENSEE, by Princeton\n"]
    (wordnet / "data.noun").write_text("".join(lines + [_noun_line(*n) for n in NOUNS + breeds]), encoding="utf-8")
    info = tmp_path / "timm" / "timm/data/_info"
    info.mkdir(parents=True)
    order = [f"n{b[0]}" for b in breeds][::-1]  # the classifier order is the file's, not the offsets'
    (info / "imagenet_synsets.txt").write_text("\n".join(order) + "\n")
    (info / "imagenet_synset_to_lemma.txt").write_text(
        "".join(f"n{o}\tbreed {i}, hound {i}\n" for i, (o, *_) in enumerate(breeds)) + "n02084071\tdog\n")
    (info / "imagenet_synset_to_definition.txt").write_text(
        "".join(f"n{o}\tthe gloss of {o}\n" for o, *_ in breeds))
    return {"timm": tmp_path / "timm", "wordnet-base": tmp_path / "wordnet"}


def test_wordnet_nouns_give_words_and_hypernyms(fake_packages):
    nouns = read_nouns(fake_packages["wordnet-base"] / "usr/share/wordnet/data.noun")
    assert nouns["02084071"].words == ["dog", "domestic dog", "Canis familiaris"]
    assert nouns["02084071"].hypernyms == ["02083346"]  # not the hyponym
    assert len(nouns) == len(NOUNS) + NUM_CLASSES


def test_classes_follow_the_classifier_order_with_names_and_hypernyms(fake_packages, tmp_path):
    fetched = []

    def fetcher(package, cache_dir, members=()):
        fetched.append(package.name)
        return fake_packages[package.name]

    cache = tmp_path / "cache"
    classes = imagenet_classes(cache, fetcher)
    assert len(classes) == NUM_CLASSES and sorted(fetched) == ["timm", "wordnet-base"]
    first = classes[0]  # the last breed in offset order comes first in the classifier file
    last = NUM_CLASSES - 1
    assert (first.index, first.wnid) == (0, f"n{last + 10**7:08d}")
    # timm's names first, then WordNet's synonyms; "breed_N" in WordNet is the same name as "breed N"
    assert first.lemmas == [f"breed {last}", f"hound {last}", f"Breed{last} dog"]
    assert first.name == first.lemmas[0]
    assert first.gloss == f"the gloss of {last + 10**7:08d}"
    assert first.hypernyms == ["dog", "canine", "animal"]  # nearest first, stopping before "organism"
    saved = json.loads((cache / "imagenet/classes.json").read_text())
    assert saved[0]["wnid"] == first.wnid and saved[0]["hypernyms"] == first.hypernyms

    def offline(*args, **kwargs):
        raise AssertionError("fetched although classes.json exists")

    assert imagenet_classes(cache, offline) == classes


def test_a_class_list_of_the_wrong_length_is_refused(fake_packages, tmp_path):
    synsets = fake_packages["timm"] / "timm/data/_info/imagenet_synsets.txt"
    synsets.write_text("\n".join(synsets.read_text().split()[:10]) + "\n")
    with pytest.raises(ValueError, match="10 classes, expected 1000"):
        imagenet_classes(tmp_path / "cache", lambda package, cache_dir, members=(): fake_packages[package.name])
