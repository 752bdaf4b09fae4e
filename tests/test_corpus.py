"""The corpus recipe on a few generated sources: parsing, captions, splits, rendering, manifest, demo."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mammut_search.train.corpus import splits
from mammut_search.train.corpus.build import MANIFEST_COLUMNS, build_corpus
from mammut_search.train.corpus.captions import captions_for, with_article
from mammut_search.train.corpus.concepts import ConceptMatcher, load_concepts
from mammut_search.train.corpus.demo import make_demo
from mammut_search.train.corpus.fetch import FetchError, fetch
from mammut_search.train.corpus.openclipart import parse_clipart
from mammut_search.train.corpus.sources import Package, check_allowed
from mammut_search.errors import UserError

SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><circle cx="5" cy="5" r="4" fill="{c}"/></svg>'
BODY = '<circle cx="8" cy="8" r="6" fill="{c}"/>'

EMOJI = [  # (unified, Unicode name, category, subcategory, short name)
    ("1F419", "OCTOPUS", "Animals & Nature", "animal-marine", "octopus"),
    ("1F9D1-200D-1F373", "COOK", "People & Body", "person-role", "cook"),
    ("1F468-200D-1F373", "MAN COOK", "People & Body", "person-role", "male-cook"),
    ("1F469-200D-1F373", "WOMAN COOK", "People & Body", "person-role", "female-cook"),
    ("1F431", "CAT FACE", "Animals & Nature", "animal-mammal", "cat"),
    ("1F408", "CAT", "Animals & Nature", "animal-mammal", "cat2"),
    ("23F0", "ALARM CLOCK", "Travel & Places", "time", "alarm_clock"),
    ("1F550", "CLOCK FACE ONE OCLOCK", "Travel & Places", "time", "clock1"),
    ("1F55C", "CLOCK FACE ONE-THIRTY", "Travel & Places", "time", "clock130"),
    ("1F1EF-1F1F5", "JAPAN FLAG", "Flags", "country-flag", "jp"),
    ("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "Component", "skin-tone", "skin-tone-2"),
]
CLDR = {
    "1F419": ("octopus", "animal, creature, ocean"),
    "1F9D1-200D-1F373": ("cook", "chef, cooking"),
    "1F468-200D-1F373": ("man cook", "chef, cook, man"),
    "1F469-200D-1F373": ("woman cook", "chef, cook, woman"),
    "1F431": ("cat face", "animal, cat, face"),
    "1F408": ("cat", "animal, pet"),
    "23F0": ("alarm clock", "alarm, clock"),
    "1F550": ("one o’clock", "clock, time"),
    "1F55C": ("one-thirty", "clock, time"),
}


def _need_renderers() -> None:
    """Rendering needs the `corpus` extra (resvg-py, cairosvg with Debian's libcairo2)."""
    try:
        import cairosvg  # noqa: F401
        import resvg_py  # noqa: F401
    except (ImportError, OSError) as e:
        pytest.skip(f"corpus renderers not installed: {e}")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _clipart_svg(title: str, keywords: list[str], creator: str = "Some Body") -> str:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/" width="20" height="10">'
        f"<metadata><rdf:RDF><cc:Work><dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}</rdf:Bag>"
        f"</dc:subject><dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator></cc:Work>"
        '</rdf:RDF></metadata><rect x="1" y="1" width="18" height="8" fill="#3060c0"/></svg>'
    )


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory) -> dict[str, Path]:
    """Unpacked package trees laid out like the real ones, keyed by package name."""
    root = tmp_path_factory.mktemp("sources")
    trees = {}
    # emoji-datasource: the concept list
    entries = [
        {"name": n, "unified": u, "image": u.lower() + ".png", "category": cat, "subcategory": sub,
         "short_name": s, "short_names": [s], "has_img_google": True, "has_img_twitter": False}
        for u, n, cat, sub, s in EMOJI
    ]
    _write(root / "data/package/emoji.json", json.dumps(entries))
    trees["emoji-datasource"] = root / "data"
    # openmoji: CLDR names, keywords, SVGs (one skin-tone row that must be skipped)
    rows = [{"hexcode": u, "annotation": a, "tags": t, "openmoji_tags": "", "group": "g", "skintone": ""}
            for u, (a, t) in CLDR.items()]
    rows.append({"hexcode": "1F9D1-1F3FB-200D-1F373", "annotation": "cook: light skin tone", "tags": "",
                 "openmoji_tags": "", "group": "g", "skintone": 1})
    _write(root / "openmoji/package/data/openmoji.json", json.dumps(rows))
    for u in list(CLDR) + ["1F9D1-1F3FB-200D-1F373"]:
        _write(root / f"openmoji/package/color/svg/{u}.svg", SVG.format(c="#e04040"))
        _write(root / f"openmoji/package/black/svg/{u}.svg", SVG.format(c="#000000"))
    trees["openmoji"] = root / "openmoji"
    # emoji-datasource-google: 64 px PNGs (RGBA, to check compositing on white)
    for u in CLDR:
        png = root / f"google/package/img/google/64/{u.lower()}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (64, 64), (0, 128, 0, 0)).save(png)
    trees["emoji-datasource-google"] = root / "google"
    # Iconify: twemoji (slug names + chars.json) and fxemoji (squashed names, the validation style)
    icons = {"octopus": {"body": BODY.format(c="#a0a")}, "cook": {"body": BODY.format(c="#aa0")},
             "man-cook": {"body": BODY.format(c="#0aa")}, "cat-face": {"body": BODY.format(c="#fa0")},
             "one-o-clock": {"body": BODY.format(c="#333")}, "man-cook-light-skin-tone": {"body": BODY.format(c="#f00")},
             "flag-japan": {"body": BODY.format(c="#f00")}}
    _write(root / "twemoji/package/icons.json", json.dumps({"prefix": "twemoji", "icons": icons, "width": 16, "height": 16}))
    _write(root / "twemoji/package/chars.json", json.dumps({"1f419": "octopus"}))
    _write(root / "twemoji/package/info.json", json.dumps({"license": {"spdx": "CC-BY-4.0"}}))
    fx = {"octopus": {"body": BODY.format(c="#00f")}, "alarmclock": {"body": BODY.format(c="#0f0")},
          "womancook": {"body": BODY.format(c="#f0f")}, "foxweary": {"body": BODY.format(c="#f80")}}
    _write(root / "fxemoji/package/icons.json", json.dumps({"prefix": "fxemoji", "icons": fx, "width": 512, "height": 512}))
    _write(root / "fxemoji/package/info.json", json.dumps({"license": {"spdx": "Apache-2.0"}}))
    trees["@iconify-json/twemoji"] = root / "twemoji"
    trees["@iconify-json/fxemoji"] = root / "fxemoji"
    # OpenClipart: one clean title, one noisy title, one naming the "cook" family, one broken file
    svg_root = root / "clipart/usr/share/openclipart/svg"
    _write(svg_root / "animals/cute_octopus_some_bo_01.svg", _clipart_svg("Cute Octopus", ["sea", "hash", ""]))
    _write(svg_root / "food/pizza_slice_some_bo_01.svg", _clipart_svg("Part of the Flat Icon Collection", ["food"]))
    _write(svg_root / "people/happy_cook_01.svg", _clipart_svg("happy cook", ["kitchen"]))
    _write(svg_root / "unsorted/broken.svg", "<svg><dc:title>Broken thing</dc:title> not closed")
    trees["openclipart-svg"] = root / "clipart"
    return trees


def _fetcher(trees: dict[str, Path]):
    def fake_fetch(package: Package, cache_dir: Path, members: tuple[str, ...] = ()) -> Path:
        check_allowed(package.name)
        if package.name not in trees:
            raise FetchError(f"{package.name}: not reachable in this test")
        return trees[package.name]

    return fake_fetch


SOURCES = ["google", "openmoji", "noto-font", "iconify-twemoji", "iconify-fxemoji", "openclipart"]
FRACTION = 0.5  # so that the few test families fall on both sides


@pytest.mark.parametrize(
    "name, expected",
    [("octopus", "an octopus"), ("cat face", "a cat face"), ("unicorn", "a unicorn"), ("hourglass", "an hourglass"),
     ("ATM sign", "an ATM sign"), ("SOS button", "an SOS button"), ("UFO", "a UFO"), ("one-piece swimsuit",
     "a one-piece swimsuit"), ("8-ball", "an 8-ball"), ("sunglasses", "sunglasses"), ("men holding hands",
     "men holding hands"), ("cactus", "a cactus"), ("European castle", "a European castle"), ("ewe", "a ewe")],
)
def test_article(name, expected):
    assert with_article(name) == expected


def test_captions_vary_templates_and_sentences():
    caps = captions_for("octopus", ["animal", "creature", "ocean"], "google", "animals & nature")
    assert "octopus" in caps and "an octopus" in caps and "octopus: animal, creature, ocean" in caps
    assert "An octopus." in caps and "A picture of an octopus." in caps
    assert len(caps) == len(set(caps))
    black = captions_for("apple", [], "openmoji-black")
    assert "A black and white line drawing of an apple." in black


def test_families_group_variants_and_clock_faces():
    assert splits.family_of("man cook") == splits.family_of("woman cook") == splits.family_of("cook")
    assert splits.family_of("cat face") == splits.family_of("grinning cat with smiling eyes") == splits.family_of("cat")
    assert splits.family_of("one o’clock") == splits.family_of("twelve-thirty")
    assert splits.family_of("man in tuxedo") == splits.family_of("woman in tuxedo")
    assert splits.family_of("octopus") != splits.family_of("cook")


def test_heldout_is_deterministic_and_near_the_fraction():
    names = [f"thing{i}" for i in range(2000)]
    held = [n for n in names if splits.is_heldout_family(n, 0.1)]
    assert held == [n for n in names if splits.is_heldout_family(n, 0.1)]
    assert 120 < len(held) < 280


def test_concepts_skip_flags_and_skin_tones_and_match_icon_names(fake_sources):
    concepts = load_concepts(fake_sources["emoji-datasource"] / "package/emoji.json",
                             fake_sources["openmoji"] / "package/data/openmoji.json")
    names = {c.name for c in concepts.values()}
    assert "octopus" in names and "one o’clock" in names
    assert not any("flag" in n or "skin" in n or "fitzpatrick" in n for n in names)
    matcher = ConceptMatcher(concepts)
    assert matcher.match_name("alarmclock").name == "alarm clock"
    assert matcher.match_name("one-o-clock").name == "one o’clock"
    assert matcher.match_name("man-cook-light-skin-tone") is None


@pytest.mark.parametrize("name", ["apple", "emoji-datasource-apple", "emoji-datasource-facebook",
                                  "fluent-emoji", "@iconify-json/fluent-emoji", "streamline", "noto-emoji-extra"])
def test_reserved_and_unknown_sets_are_refused(name, tmp_path):
    with pytest.raises(UserError):
        check_allowed(name)
    with pytest.raises(UserError):
        fetch(Package("npm", name, "1.0.0"), tmp_path)  # refused before any download
    with pytest.raises(UserError):
        build_corpus(tmp_path, sources=[name], fetcher=lambda *a, **k: pytest.fail("fetched a refused source"))


def test_cli_refuses_a_reserved_source_with_one_line_error(tmp_path, capsys):
    from mammut_search.cli import main

    assert main(["corpus", "build", "--cache-dir", str(tmp_path), "--sources", "emoji-datasource-apple"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: emoji-datasource-apple") and "\n" not in err


@pytest.fixture(scope="module")
def built(fake_sources, tmp_path_factory):
    _need_renderers()
    cache = tmp_path_factory.mktemp("cache")
    summary = build_corpus(cache, SOURCES, size=32, workers=2, fetcher=_fetcher(fake_sources),
                           heldout_fraction=FRACTION)
    return cache, summary, pd.read_parquet(cache / "corpus/manifest.parquet")


def test_build_writes_manifest_images_and_summary(built):
    cache, summary, manifest = built
    assert list(manifest.columns) == MANIFEST_COLUMNS
    for rel in manifest["path"]:
        image = Image.open(cache / "corpus" / rel)
        assert image.mode == "RGB" and image.size == (32, 32)
    transparent_png = manifest[(manifest["style"] == "google") & (manifest["name"] == "octopus")]["path"].iloc[0]
    assert Image.open(cache / "corpus" / transparent_png).getpixel((16, 16)) == (255, 255, 255)
    assert set(manifest["style"]) == {"google", "openmoji-color", "openmoji-black", "iconify-twemoji",
                                      "iconify-fxemoji", "openclipart"}
    assert json.loads((cache / "corpus/summary.json").read_text()) == summary
    assert summary["images"] == len(manifest)
    assert "noto-font" in summary["failed_sources"]  # a source that cannot be fetched is reported; others go on
    assert summary["render_failures"] == 1  # the broken clip art, skipped


def test_manifest_rows_have_captions_licences_and_no_variants(built):
    _, _, manifest = built
    assert not manifest["name"].str.contains("skin tone|flag", case=False).any()
    octo = manifest[(manifest["style"] == "iconify-fxemoji") & (manifest["name"] == "octopus")].iloc[0]
    assert octo["licence"] == "Apache-2.0" and "A picture of an octopus." in list(octo["captions"])
    assert set(manifest[manifest["style"] == "iconify-twemoji"]["name"]) == {"octopus", "cook", "man cook",
                                                                            "cat face", "one o’clock"}
    clipart = manifest[manifest["style"] == "openclipart"]
    assert set(clipart["licence"]) == {"public-domain"}
    assert all(split == splits.object_split(name) for split, name in zip(clipart["split"], clipart["name"]))
    assert "pizza slice" in set(clipart["name"])
    assert ("cute octopus" in set(clipart["name"])) != splits.is_heldout_family("octopus", FRACTION)
    assert all(len(c) >= 3 for c in manifest["captions"])


def test_splits_follow_style_and_family(built):
    _, _, manifest = built
    emoji = manifest[manifest["style"] != "openclipart"]
    assert set(emoji[emoji["style"] == "iconify-fxemoji"]["split"]) <= {"val", "val_unseen"}
    assert set(emoji[emoji["style"] != "iconify-fxemoji"]["split"]) <= {"train", "heldout_concepts"}
    unseen = emoji["split"].isin(["heldout_concepts", "val_unseen"])
    assert unseen.any() and not unseen.all()
    for family, group in emoji.assign(unseen=unseen).groupby(emoji["name"].map(splits.family_of)):
        assert group["unseen"].nunique() == 1, f"family {family} is on both sides"


def test_everything_heldout_drops_matching_clipart(fake_sources, tmp_path):
    _need_renderers()
    build_corpus(tmp_path, ["iconify-fxemoji", "iconify-twemoji", "openclipart"], size=16, workers=1,
                 fetcher=_fetcher(fake_sources), heldout_fraction=1.0)
    manifest = pd.read_parquet(tmp_path / "corpus/manifest.parquet")
    emoji = manifest[manifest["style"] != "openclipart"]
    assert set(emoji["split"]) == {"heldout_concepts", "val_unseen"}
    clip_names = set(manifest[manifest["style"] == "openclipart"]["name"])
    assert "happy cook" not in clip_names and "cute octopus" not in clip_names and "pizza slice" in clip_names


def test_clipart_titles_are_cleaned(fake_sources):
    svg_root = fake_sources["openclipart-svg"] / "usr/share/openclipart/svg"
    info = parse_clipart(svg_root / "food/pizza_slice_some_bo_01.svg", svg_root)
    assert info.title == "pizza slice" and info.keywords == ["food"]
    octo = parse_clipart(svg_root / "animals/cute_octopus_some_bo_01.svg", svg_root)
    assert octo.title == "cute octopus" and octo.keywords == ["sea", "animals"]


def test_demo_copies_validation_images_with_captions(built, tmp_path):
    cache, _, manifest = built
    written = make_demo(cache, tmp_path / "demo", count=2, size=32)
    assert written == 2
    lines = (tmp_path / "demo/captions.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "image,caption" and len(lines) == 3
    fx_names = set(manifest[manifest["style"] == "iconify-fxemoji"]["name"])
    for line in lines[1:]:
        image, caption = line.split(",", 1)
        assert (tmp_path / "demo" / image).is_file() and caption in fx_names
    assert "Apache" in (tmp_path / "demo/ATTRIBUTION.md").read_text()


def test_demo_without_a_corpus_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="corpus build"):
        make_demo(tmp_path, tmp_path / "demo")


def test_an_unreasonable_size_is_refused(tmp_path):
    with pytest.raises(UserError, match="--size 4"):
        build_corpus(tmp_path, ["iconify-fxemoji"], size=4, fetcher=lambda *a, **k: pytest.fail("fetched"))
