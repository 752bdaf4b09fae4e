"""Validation sets: Qt resource files, GCompris/scikit photos (val_photos) and the OpenClipart objects split."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mammut_search.train.corpus import splits
from mammut_search.train.corpus.build import MANIFEST_COLUMNS, build_validation_sets
from mammut_search.train.corpus.fetch import FetchError
from mammut_search.train.corpus.photos import gcompris_photos
from mammut_search.train.corpus.rcc import RccError, read_rcc
from mammut_search.train.corpus.sources import Package, check_allowed


def make_rcc(files: dict[str, bytes], *, version: int = 3, compress: tuple[str, ...] = ()) -> bytes:
    """A Qt resource file holding `files` ({"/a/b.txt": bytes}), laid out as Qt's rcc writes it."""
    tree: dict = {}
    for path, data in files.items():
        node = tree
        *dirs, leaf = path.strip("/").split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = (path, data)
    names, data_blob, entries = bytearray(), bytearray(), []
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(encoded) // 2, 0) + encoded)
        return name_offsets[name]

    entries.append(None)  # the root, filled in below
    queue = [(0, "", tree)]
    while queue:  # breadth first: a directory's children are consecutive entries
        index, name, node = queue.pop(0)
        first = len(entries)
        children = sorted(node.items())
        entries.extend([None] * len(children))
        entries[index] = ("dir", name, len(children), first)
        for k, (child_name, child) in enumerate(children):
            if isinstance(child, dict):
                queue.append((first + k, child_name, child))
            else:
                path, data = child
                flags = 0
                if path in compress:
                    data, flags = struct.pack(">I", len(data)) + zlib.compress(data), 1
                entries[first + k] = ("file", child_name, flags, len(data_blob))
                data_blob.extend(struct.pack(">I", len(data)) + data)
    tree_blob = bytearray()
    for kind, name, a, b in entries:
        offset = name_offset(name) if name else 0
        if kind == "dir":
            tree_blob += struct.pack(">IHII", offset, 2, a, b)
        else:
            tree_blob += struct.pack(">IHHHI", offset, a, 0, 0, b)
        if version >= 2:
            tree_blob += struct.pack(">Q", 0)
    header_size = 24 if version >= 3 else 20
    tree_at = header_size
    data_at = tree_at + len(tree_blob)
    names_at = data_at + len(data_blob)
    header = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 0)
    return bytes(header + tree_blob + data_blob + names)


def image_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_files_come_back_with_their_paths_compressed_or_not(tmp_path, version):
    files = {"/top/a.txt": b"hello", "/top/sub/b.bin": bytes(range(256)) * 4, "/c.qml": "ünïcode".encode()}
    path = tmp_path / "x.rcc"
    path.write_bytes(make_rcc(files, version=version, compress=("/top/sub/b.bin",)))
    assert read_rcc(path) == files
    assert read_rcc(path, ("/top/",)) == {k: v for k, v in files.items() if k.startswith("/top/")}


def test_a_broken_rcc_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.rcc"
    bad.write_bytes(b"not a resource file")
    with pytest.raises(RccError, match="bad.rcc"):
        read_rcc(bad)
    truncated = tmp_path / "cut.rcc"
    truncated.write_bytes(make_rcc({"/a/b.txt": b"x" * 100})[:40])
    with pytest.raises(RccError, match="cut.rcc"):
        read_rcc(truncated)


BOARD = """QtObject {
    property var tab : [
        {
            "image": "qrc:/gcompris/src/activities/explore_world_animals/resource/animals/question.svg",
            "title": qsTr("Polar Bear"),
            "text": qsTr("It lives in the Arctic."),
            "image2": "qrc:/gcompris/src/activities/explore_world_animals/resource/animals/polar_bear.webp"
        },
        {
            "title": qsTr("Unicorn"),
            "image2": "qrc:/gcompris/src/activities/explore_world_animals/resource/animals/unicorn.svg"
        }
    ]
}"""
MONUMENTS = """QtObject { property var tab : [ { "title": qsTr("Taj Mahal, India"),
 "image2": "qrc:/gcompris/src/activities/explore_monuments/resource/india/tajMahal.webp" } ] }"""


@pytest.fixture()
def gcompris_tree(tmp_path) -> Path:
    """An unpacked gcompris-qt-data: an explore board with titles, photos named by file, and non-photos."""
    rcc = tmp_path / "gcompris/usr/share/gcompris-qt/rcc"
    rcc.mkdir(parents=True)
    act = "/gcompris/src/activities"
    (rcc / "explore_world_animals.rcc").write_bytes(make_rcc({
        f"{act}/explore_world_animals/resource/board/board1.qml": BOARD.encode(),
        f"{act}/explore_world_animals/resource/animals/polar_bear.webp": image_bytes((200, 200, 210), fmt="WEBP"),
        f"{act}/explore_world_animals/resource/animals/unicorn.svg": b"<svg/>",
    }, compress=(f"{act}/explore_world_animals/resource/board/board1.qml",)))
    (rcc / "explore_monuments.rcc").write_bytes(make_rcc({
        f"{act}/explore_monuments/resource/board/board1.qml": MONUMENTS.encode(),
        f"{act}/explore_monuments/resource/india/tajMahal.webp": image_bytes((250, 250, 250), (900, 600)),
    }))
    (rcc / "categorization.rcc").write_bytes(make_rcc({
        f"{act}/categorization/resource/images/tools/hammer3.webp": image_bytes((90, 60, 30)),
        f"{act}/categorization/resource/images/renewable/windmill6.webp": image_bytes((90, 90, 200)),
        f"{act}/categorization/resource/images/monuments/monument1.webp": image_bytes((1, 2, 3)),  # unclear: left out
    }))
    (rcc / "erase.rcc").write_bytes(make_rcc({f"{act}/erase/resource/alpaca.webp": b"not an image"}))
    (rcc / "lang.rcc").write_bytes(make_rcc({f"{act}/lang/resource/words_sample/cat.webp": image_bytes((0, 0, 0))}))
    return tmp_path / "gcompris"


def test_gcompris_photos_are_named_by_titles_or_hand_mapped_file_names(gcompris_tree):
    named = {p.key: (p.name, p.proper_name) for p in gcompris_photos(gcompris_tree)}
    assert named == {
        "gcompris/explore_world_animals/resource/animals/polar_bear": ("polar bear", False),
        "gcompris/explore_monuments/resource/india/tajMahal": ("Taj Mahal", True),
        "gcompris/categorization/resource/images/tools/hammer3": ("hammer", False),
        "gcompris/categorization/resource/images/renewable/windmill6": ("wind turbine", False),
        "gcompris/erase/resource/alpaca": ("alpaca", False),  # unreadable: dropped when saved
    }


def _clipart_svg(title: str, keywords: list[str]) -> str:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return ('<svg xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF><cc:Work>'
            f"<dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>"
            "</cc:Work></rdf:RDF></metadata></svg>")


def _fake_fetcher(trees: dict[str, Path]):
    def fetcher(package: Package, cache_dir: Path, members: tuple[str, ...] = ()) -> Path:
        check_allowed(package.name)
        if package.name not in trees:
            raise FetchError(f"{package.name}: not reachable in this test")
        return trees[package.name]

    return fetcher


def test_validation_sets_resplit_clipart_and_add_photos_without_rendering(tmp_path, gcompris_tree):
    # OpenClipart: several titles per family, so whole families must land on one side
    titles = [f"{adj} {noun}" for noun in ("dog", "car", "tree", "house", "apple", "boat", "lamp", "guitar",
                                            "bird", "chair", "clock", "shoe", "cloud", "train", "rocket")
              for adj in ("red", "happy", "old")]
    clip = tmp_path / "clipart"
    rows = []
    for i, title in enumerate(titles):
        rel = f"things/{title.replace(' ', '_')}_{i}"
        svg = clip / f"usr/share/openclipart/svg/{rel}.svg"
        svg.parent.mkdir(parents=True, exist_ok=True)
        svg.write_text(_clipart_svg(title.title(), ["thing", "red"]), encoding="utf-8")
        rows.append({"path": f"images/64/openclipart/{rel}.png", "concept_id": f"openclipart/{rel}", "name": title,
                     "captions": [title, f"a {title}"], "style": "openclipart", "split": "train",
                     "source": "openclipart-svg (Debian)", "licence": "public-domain"})
    rows.append({"path": "images/64/iconify-fxemoji/x.png", "concept_id": "x", "name": "octopus",
                 "captions": ["octopus"], "style": "iconify-fxemoji", "split": "val", "source": "s", "licence": "l"})
    skimage = tmp_path / "skimage"
    (skimage / "skimage/data").mkdir(parents=True)
    (skimage / "skimage/data/chelsea.png").write_bytes(image_bytes((120, 100, 80), (1000, 700)))
    (skimage / "skimage/data/text.png").write_bytes(image_bytes((255, 255, 255)))  # not a photo: not listed
    cache = tmp_path / "cache"
    (cache / "corpus").mkdir(parents=True)
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_parquet(cache / "corpus/manifest.parquet", index=False)
    fetcher = _fake_fetcher({"openclipart-svg": clip, "scikit-image": skimage, "gcompris-qt-data": gcompris_tree})

    summary = build_validation_sets(cache, fetcher, objects_fraction=0.3)
    manifest = pd.read_parquet(cache / "corpus/manifest.parquet")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert summary["validation_failed_sources"] == {"photos:scikit-learn": "FetchError: scikit-learn: not "
                                                    "reachable in this test"}
    clipart = manifest[manifest["style"] == "openclipart"]
    assert set(clipart["split"]) == {"train", "val_objects"}
    for family, group in clipart.groupby(clipart["name"].str.split().str[-1]):
        assert group["split"].nunique() == 1, f"family {family} is on both sides"
        assert (group["split"].iloc[0] == "val_objects") == splits.is_heldout_family(family, 0.3, splits.OBJECTS_SALT)
    held = clipart[clipart["split"] == "val_objects"].iloc[0]
    assert list(held["captions"]) == [held["name"], "thing", "red", "things"]  # title, keywords, folders
    trained = clipart[clipart["split"] == "train"].iloc[0]
    assert f"A picture of a {trained['name']}." in list(trained["captions"])
    assert manifest[manifest["style"] == "iconify-fxemoji"]["split"].tolist() == ["val"]

    photos = manifest[manifest["split"] == "val_photos"]
    assert sorted(photos["name"]) == ["Taj Mahal", "cat", "hammer", "polar bear", "wind turbine"]
    assert set(photos["style"]) == {"photos"}
    cat = photos[photos["name"] == "cat"].iloc[0]
    assert list(cat["captions"])[0] == "a cat"
    assert list(photos[photos["name"] == "Taj Mahal"]["captions"].iloc[0])[0] == "Taj Mahal"
    for rel in photos["path"]:
        with Image.open(cache / "corpus" / rel) as image:
            assert image.format == "JPEG" and max(image.size) <= 512
    assert Image.open(cache / "corpus" / cat["path"]).size == (512, 358)
    assert summary["per_split"]["val_photos"] == 5

    again = build_validation_sets(cache, fetcher, objects_fraction=0.3)  # idempotent: rows are replaced
    assert again["images"] == summary["images"] == len(manifest)
    assert pd.read_parquet(cache / "corpus/manifest.parquet")["split"].tolist() == manifest["split"].tolist()


def test_objects_split_is_deterministic_near_the_fraction_and_independent_of_emoji():
    families = [f"thing{i}" for i in range(3000)]
    held = [f for f in families if splits.object_split(f"big {f}") == splits.VAL_OBJECTS]
    assert held == [f for f in families if splits.object_split(f"small {f}") == splits.VAL_OBJECTS]
    assert 200 < len(held) < 400
    emoji_held = {f for f in families if splits.is_heldout_family(f)}
    assert len(emoji_held & set(held)) < len(held) / 3  # a differently salted hash: not the same slice
