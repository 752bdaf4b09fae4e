"""Real photos with short captions, for validation only (split "val_photos"; training reads split "train").

Sources (see ASSETS.md): scikit-image's and scikit-learn's sample photos, named by hand from their telling
file names, and GCompris's photos inside Qt resource files: the "explore" activities (animals, farm animals,
monuments; each photo has a title in its board file), and photos whose file names say what they show
(the "erase" animals, the "categorization" objects, mapped by hand; unclear ones are left out).
Drawings, paintings and puzzle pieces are left out. A photo's main caption is its name with an article
("a cat"), or the name itself for a proper name ("Eiffel Tower").
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mammut_search.train.corpus.captions import sentence, with_article
from mammut_search.train.corpus.rcc import read_rcc

PHOTO_STYLE = "photos"
MAX_SIDE = 512  # longer side of a saved photo

SKIMAGE_PHOTOS = {  # file under skimage/data/ -> what it shows
    "astronaut.png": "astronaut",
    "brick.png": "brick wall",
    "camera.png": "man with a camera",
    "chelsea.png": "cat",
    "coffee.png": "cup of coffee",
    "coins.png": "coins",
    "grass.png": "grass",
    "gravel.png": "gravel",
    "hubble_deep_field.jpg": "galaxies",
    "moon.png": "moon surface",
    "motorcycle_left.png": "motorcycle",  # motorcycle_right is the other image of a stereo pair
    "retina.jpg": "retina",
    "rocket.jpg": "rocket",
}
SKLEARN_PHOTOS = {"china.jpg": "temple", "flower.jpg": "flower"}

GCOMPRIS_ACTIVITIES = "/gcompris/src/activities/"
EXPLORE_ACTIVITIES = ("explore_world_animals", "explore_farm_animals", "explore_monuments")
PROPER_NAME_ACTIVITIES = ("explore_monuments",)  # titles are names of places: kept as written
# Photos named by their file: "<activity>/<folder>/<stem without trailing digits>" -> name.
GCOMPRIS_FILE_NAMES = {
    **{f"erase/resource/{stem}": stem.replace("_", " ") for stem in (
        "alpaca", "bee", "butterfly", "calf", "camels", "caterpillar", "cheetah", "crab", "dolphin", "flying_fox",
        "gibbon", "giraffe", "goat", "gorilla", "gosling", "heron", "horse", "kingfisher", "kitten", "macaque",
        "meerkats", "northern_harrier", "penguin", "pika", "red_panda", "rhinoceros", "spoonbills", "squirrel",
        "swans", "toucan")},
    "erase/resource/chamaeleon": "chameleon",
    "erase/resource/long_nosed_monkey": "proboscis monkey",
    "erase/resource/nubian_ibex": "ibex",
    "categorization/resource/images/fishes/fish": "fish",
    **{f"categorization/resource/images/tools/{stem}": name for stem, name in {
        "hammer": "hammer", "measuringTape": "measuring tape", "multimeter": "multimeter",
        "nailCutter": "nail clipper", "plier": "pliers", "scissors": "scissors", "screwDriver": "screwdriver",
        "sickle": "sickle", "sideCutter": "wire cutters", "spray": "spray bottle", "tweezer": "tweezers",
        "wrench": "wrench"}.items()},
    **{f"categorization/resource/images/renewable/{stem}": name for stem, name in {
        "dam": "dam", "solar": "solar panel", "windmill": "windmill"}.items()},
    **{f"categorization/resource/images/others/{stem}": name for stem, name in {
        "baseball": "baseball", "blackslate": "blackboard", "bucket": "bucket", "buffetset": "teacup",
        "bulb": "light bulb", "chair": "chair", "cup": "cup", "erasers": "eraser", "igloo": "igloo",
        "knife": "cutlery", "pan": "frying pan", "pencil": "pencil", "pillow": "pillow", "plate": "plate",
        "spoons": "spoons", "volleyball": "volleyball", "weighingMachine": "weighing scale"}.items()},
    **{f"categorization/resource/images/monuments/{stem}": name for stem, name in {
        "IndiaGate": "India Gate", "arcDeTriomphe": "Arc de Triomphe", "brandenburgGate": "Brandenburg Gate",
        "burj": "Burj Khalifa", "cathedral": "cathedral", "christTheRedeemer": "Christ the Redeemer",
        "colosseum": "Colosseum", "eiffelTower": "Eiffel Tower", "empireState": "Empire State Building",
        "greatPyramid": "Great Pyramid of Giza", "greatWall": "The Great Wall of China",
        "kutubMinar": "Qutub Minar", "leaningTowerOfPisa": "Leaning Tower of Pisa",
        "mountRushmore": "Mount Rushmore", "operaHouse": "Sydney Opera House", "parthenon": "Parthenon",
        "statueOfLiberty": "Statue of Liberty", "tajMahal": "Taj Mahal", "usCapitol": "United States Capitol",
        "victoriaMemorial": "Victoria Memorial", "zimniPalace": "Winter Palace"}.items()},
}
# Exceptions to the stem rule: these files show something else.
GCOMPRIS_FILE_OVERRIDES = {
    "categorization/resource/images/renewable/solar1": "solar cooker",
    "categorization/resource/images/renewable/solar2": "solar cooker",
    "categorization/resource/images/renewable/windmill6": "wind turbine",
}
PHOTO_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")
QML_OBJECT = re.compile(r"\{[^{}]*\}")
QML_TITLE = re.compile(r'"title"\s*:\s*qsTr\("((?:[^"\\]|\\.)*)"\)')
QML_IMAGE2 = re.compile(r'"image2"\s*:\s*"qrc:(/[^"]+)"')


@dataclass
class Photo:
    """One validation photo: its bytes, what it shows, and where it came from."""

    key: str  # unique, path-like: "gcompris/erase/alpaca"
    name: str
    data: bytes
    source: str
    licence: str
    proper_name: bool = False


def photo_captions(name: str, proper_name: bool = False) -> list[str]:
    """Main caption first ("a cat"; a proper name as it is), then the bare name and a sentence."""
    main = name if proper_name else with_article(name)
    return list(dict.fromkeys([main, name, sentence(f"a photo of {main}")]))


def photo_row(photo: Photo) -> dict:
    """The manifest row of one photo (its image is written by `save_photo`)."""
    return {
        "path": f"images/{PHOTO_STYLE}/{photo.key}.jpg",
        "concept_id": f"{PHOTO_STYLE}/{photo.key}",
        "name": photo.name,
        "captions": photo_captions(photo.name, photo.proper_name),
        "style": PHOTO_STYLE,
        "split": "val_photos",
        "source": photo.source,
        "licence": photo.licence,
    }


def save_photo(data: bytes, out_path: Path) -> None:
    """Decode, shrink so the longer side is at most MAX_SIDE, and save as RGB JPEG (atomically)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
            canvas.alpha_composite(image)
            image = canvas
        image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp.jpg")
    image.save(tmp, quality=90)
    tmp.replace(out_path)


def named_files(folder: Path, names: dict[str, str], key_prefix: str, source: str, licence: str) -> list[Photo]:
    """The files of `names` found in `folder` (a missing one is skipped: versions differ)."""
    return [
        Photo(f"{key_prefix}/{Path(file).stem}", name, (folder / file).read_bytes(), source, licence)
        for file, name in names.items() if (folder / file).is_file()
    ]


def skimage_photos(root: Path, version: str) -> list[Photo]:
    """scikit-image's sample photos (an unpacked wheel)."""
    return named_files(root / "skimage" / "data", SKIMAGE_PHOTOS, "scikit-image",
                       f"scikit-image=={version} (PyPI)", "BSD-3-Clause; see skimage/data/README.txt")


def sklearn_photos(root: Path, version: str) -> list[Photo]:
    """scikit-learn's two sample photos (an unpacked wheel)."""
    return named_files(root / "sklearn" / "datasets" / "images", SKLEARN_PHOTOS, "scikit-learn",
                       f"scikit-learn=={version} (PyPI)", "CC-BY-2.0; see sklearn/datasets/images/README.txt")


def gcompris_photos(root: Path) -> list[Photo]:
    """GCompris's photos with a clear name, read from the activities' .rcc files (an unpacked Debian package)."""
    rcc_dir = root / "usr" / "share" / "gcompris-qt" / "rcc"
    if not rcc_dir.is_dir():
        raise FileNotFoundError(f"{rcc_dir}: missing; is this gcompris-qt-data?")
    source, licence = "gcompris-qt-data (Debian)", "GPL-3.0-or-later; see each activity's README"
    photos: list[Photo] = []
    activities = sorted({key.split("/")[0] for key in GCOMPRIS_FILE_NAMES} | set(EXPLORE_ACTIVITIES))
    for activity in activities:
        rcc = rcc_dir / f"{activity}.rcc"
        if not rcc.is_file():
            continue
        files = read_rcc(rcc, (GCOMPRIS_ACTIVITIES + activity + "/",))
        named = explore_titles(files) if activity in EXPLORE_ACTIVITIES else {}
        for path, data in sorted(files.items()):
            if not path.lower().endswith(PHOTO_SUFFIXES):
                continue
            rel = path[len(GCOMPRIS_ACTIVITIES):].rsplit(".", 1)[0]
            title = named.get(path)
            if title:  # animals are common nouns ("Polar Bear" -> "polar bear"); "Taj Mahal, India" -> "Taj Mahal"
                name = title.split(",")[0] if activity in PROPER_NAME_ACTIVITIES else title.lower()
            else:
                name = GCOMPRIS_FILE_OVERRIDES.get(rel) or GCOMPRIS_FILE_NAMES.get(rel.rstrip("0123456789"))
            if name:
                photos.append(Photo(f"gcompris/{rel}", name, data, source, licence, proper_name=name[:1].isupper()))
    return photos


def explore_titles(files: dict[str, bytes]) -> dict[str, str]:
    """{photo path: title} from an explore activity's board files ({"title": qsTr("Jaguar"), "image2": ...})."""
    titles: dict[str, str] = {}
    for path, data in files.items():
        if not path.endswith(".qml"):
            continue
        for block in QML_OBJECT.findall(data.decode("utf-8", errors="replace")):
            title, image = QML_TITLE.search(block), QML_IMAGE2.search(block)
            if title and image:
                titles[image.group(1)] = title.group(1).replace('\\"', '"').strip()
    return titles
