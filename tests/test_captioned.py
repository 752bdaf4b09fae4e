"""Captioned image sets in every supported format read into one table, and the standard retrieval protocol on them
agrees with recall computed by hand."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mammut_search.captioned import read_captioned
from mammut_search.cli import main
from mammut_search.errors import UserError
from mammut_search.eval.evaluation import Protocol, evaluate_captioned, format_table

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
       "white": (255, 255, 255)}
# The test split: four images, two captions each (red has a third, beyond --captions-per-image 2). "blue square"
# is written for green and blue; "yellow square" for red and yellow. White is the training split.
CAPTIONS = {
    "red": ["a red square", "a yellow square", "a blue thing"],
    "green": ["a green square", "a blue square"],
    "blue": ["a square", "a dark square"],
    "yellow": ["a yellow square", "a red and green square"],
}
SPLITS = {"red": "test", "green": "test", "blue": "test", "yellow": "test", "white": "train"}
WORDS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}


class ColourModel:
    """A model whose latents are known by hand: an image's latent is its mean colour, a text's the sum of its
    colour words (white when it has none); both unit length."""

    device = torch.device("cpu")
    latent_dim = 3
    checkpoint_sha256 = ""
    config = SimpleNamespace(image_encoder=SimpleNamespace(image_size=32))

    def preprocess(self, images):
        return torch.tensor(np.stack([np.asarray(i.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255
                                      for i in images]))

    def preprocess_files(self, paths):
        return self.preprocess([Image.open(p) for p in paths])

    def image_features(self, pixels):
        return pixels

    def latents_from_features(self, features):
        return F.normalize(features, dim=-1)

    def captions_from_features(self, features, **_):
        return ["a " + min(WORDS, key=lambda w: -float(torch.tensor(WORDS[w], dtype=torch.float32) @ f)) + " square"
                for f in F.normalize(features, dim=-1)]

    def encode_text(self, texts):
        vectors = [np.sum([WORDS[w] for w in t.split() if w in WORDS] or [(1, 1, 1)], axis=0) for t in texts]
        return F.normalize(torch.tensor(np.array(vectors), dtype=torch.float32), dim=-1)


# Hand-computed ranks (optimistic ties), test split, first two captions of each image:
# text->image, each caption its own query, right only for its own image:
#   red: "a red square" 1, "a yellow square" 2 (yellow scores 1 > 0.71); green: 1, "a blue square" 2 (blue image);
#   blue: "a square" 2, "a dark square" 2 (yellow scores 0.82 > 0.58); yellow: 1, 1
PER_CAPTION_T2I = {"R@1": 4 / 8, "R@2": 8 / 8}
# image->text over all 8 captions: red 1, green 1, blue 2 (green's "a blue square" scores 1 > 0.58), yellow 1
PER_CAPTION_I2T = {"R@1": 3 / 4, "R@2": 4 / 4}
# distinct texts: "a yellow square" is one text, right for red and yellow, so red's copy ranks 1
DISTINCT_T2I = {"R@1": 5 / 8, "R@2": 8 / 8}


def write_all_formats(root):
    """The same captioned set as images on disk and in every format; returns {format: source path}."""
    for colour, rgb in RGB.items():
        folder = root / "images" / SPLITS[colour]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), rgb).save(folder / f"{colour}.png")
        captions = CAPTIONS.get(colour, ["a white square"])
        (folder / f"{colour}.txt").write_text("\n".join(captions) + "\n")
    entries = [{"filepath": SPLITS[c], "filename": f"{c}.png", "split": SPLITS[c], "imgid": i,
                "sentences": [{"raw": t, "tokens": t.split()} for t in CAPTIONS.get(c, ["a white square"])]}
               for i, c in enumerate(RGB)]
    (root / "images" / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    (root / "annotations").mkdir()
    test = [c for c in RGB if SPLITS[c] == "test"]
    coco = {"images": [{"id": 10 + i, "file_name": f"{c}.png"} for i, c in enumerate(test)],
            "annotations": [{"id": k, "image_id": 10 + i, "caption": t}
                            for i, c in enumerate(test) for k, t in enumerate(CAPTIONS[c])]}
    (root / "annotations" / "captions_test2017.json").write_text(json.dumps(coco))
    (root / "test2017").symlink_to(root / "images" / "test")  # COCO's layout: annotations/ beside test2017/
    rows = [{"image": f"{SPLITS[c]}/{c}.png", "caption": t, "split": SPLITS[c]}
            for c in RGB for t in CAPTIONS.get(c, ["a white square"])]
    pd.DataFrame(rows).to_csv(root / "images" / "pairs.csv", index=False)
    pd.DataFrame(rows).to_json(root / "images" / "pairs.jsonl", orient="records", lines=True)
    return {"karpathy": root / "images" / "dataset_coco.json", "coco": root / "annotations" / "captions_test2017.json",
            "csv": root / "images" / "pairs.csv", "jsonl": root / "images" / "pairs.jsonl",
            "folder": root / "images"}


@pytest.fixture
def sources(tmp_path):
    return write_all_formats(tmp_path)


# ----- reading -----


def test_every_format_reads_into_the_same_table(sources):
    tables = {name: read_captioned(path) for name, path in sources.items()}
    assert {name: t.format for name, t in tables.items()} == {
        "karpathy": "karpathy", "coco": "coco", "csv": "table", "jsonl": "table", "folder": "folder"}
    expected = {str((sources["folder"] / SPLITS[c] / f"{c}.png").resolve()): CAPTIONS.get(c, ["a white square"])
                for c in RGB}
    for name, table in tables.items():
        frame = table.frame
        got = {str(Path(p).resolve()): list(c) for p, c in zip(frame["path"], frame["captions"])}
        want = {p: c for p, c in expected.items() if name != "coco" or "white" not in p}
        assert got == want, name
        # no concept columns: each image is its own concept, named by its first caption
        assert list(frame["concept_id"]) == list(frame["path"]) and frame["name"].tolist() == [c[0] for c in frame["captions"]]
        assert table.problems == []
        assert table.select("test").splits == {"test": 4}, name


def test_bad_rows_are_counted_and_listed_not_fatal(tmp_path):
    (tmp_path / "a.png").write_bytes(b"a real file is enough for reading")
    rows = pd.DataFrame({"image": ["a.png", "gone.png", "a.png", "", "b.png"],
                         "caption": ["a cat", "a dog", "", "a bird", "   "]})
    rows.to_csv(tmp_path / "pairs.csv", index=False)
    (tmp_path / "b.png").write_bytes(b"x")
    read = read_captioned(tmp_path / "pairs.csv")
    assert read.frame["captions"].tolist() == [["a cat"]]
    assert sorted((p["where"].rsplit("/", 1)[-1], p["reason"]) for p in read.problems) == [
        ("a.png", "empty caption"), ("b.png", "no caption"), ("gone.png", "missing image file"),
        ("pairs.csv:5", "no image path")]
    assert read.summary()["left_out"] == {"empty caption": 1, "no caption": 1, "missing image file": 1,
                                          "no image path": 1}

    karpathy = {"images": [{"filename": "a.png", "split": "test", "sentences": [{"raw": "a cat"}]},
                           {"filename": "gone.png", "split": "test", "sentences": [{"raw": "a dog"}]},
                           {"split": "test", "sentences": [{"raw": "no file name"}]},
                           {"filename": "b.png", "split": "test", "sentences": [{"raw": ""}]}]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    read = read_captioned(tmp_path / "k.json")
    assert len(read.frame) == 1 and sorted(p["reason"] for p in read.problems) == [
        "missing image file", "no caption", "no filename"]


def test_unusable_sources_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        read_captioned(tmp_path / "nothing.json")
    (tmp_path / "odd.json").write_text('{"images": [{"file": "a.png"}], "something": 1}')
    with pytest.raises(UserError, match="neither a Karpathy"):
        read_captioned(tmp_path / "odd.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_captioned(tmp_path / "broken.json")
    pd.DataFrame({"image": ["gone.png"], "caption": ["x"]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(UserError, match="no usable captioned images.*missing image file"):
        read_captioned(tmp_path / "p.csv")
    Image.new("RGB", (4, 4)).save(tmp_path / "one.png")
    (tmp_path / "one.json").write_text(
        json.dumps({"images": [{"filename": "one.png", "split": "test", "sentences": [{"raw": "x"}]}]}))
    with pytest.raises(UserError, match="no images in split 'val'; splits there: test"):
        read_captioned(tmp_path / "one.json").select("val")


def test_tables_take_caption_lists_named_columns_and_concepts(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"file": "a.png", "captions": ["x", "y"], "concept": "cats"}\n'
                                      '{"file": "b.png", "captions": ["z"], "concept": "cats"}\n'
                                      '{"file": "a.png", "captions": ["w"], "concept": "cats"}\n')
    read = read_captioned(tmp_path / "p.jsonl", check_files=False)
    assert read.frame["captions"].tolist() == [["x", "y", "w"], ["z"]]
    assert read.frame["concept_id"].tolist() == ["cats", "cats"]  # a concept column groups images
    pd.DataFrame({"pic": ["a.png"], "words": ["NA"]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(UserError, match="--image-column"):
        read_captioned(tmp_path / "p.csv", check_files=False)
    read = read_captioned(tmp_path / "p.csv", image_column="pic", caption_column="words", check_files=False)
    assert read.frame["captions"].tolist() == [["NA"]]  # "NA" is a caption, not a missing value


def test_the_corpus_manifest_reads_as_a_table(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    manifest = pd.DataFrame({"path": ["a.png"], "concept_id": ["c1"], "name": ["octopus"], "split": ["train"],
                             "style": ["noto"], "captions": [["octopus", "an octopus emoji"]]})
    manifest.to_parquet(tmp_path / "manifest.parquet")
    frame = read_captioned(tmp_path / "manifest.parquet").frame
    row = frame.iloc[0]
    assert (row["path"], list(row["captions"]), row["concept_id"], row["name"], row["split"], row["style"]) == (
        str(tmp_path / "a.png"), ["octopus", "an octopus emoji"], "c1", "octopus", "train", "noto")


# ----- the standard protocol -----


@pytest.mark.parametrize("name", ["karpathy", "coco", "csv", "jsonl", "folder"])
def test_standard_protocol_agrees_with_hand_computed_recall(sources, name):
    captioned = read_captioned(sources[name])
    result = evaluate_captioned(captioned, ColourModel(), split="test", captions_per_image=2, per_caption=True,
                                ks=(1, 2), progress=False)
    assert result.metrics["text_to_image"] == pytest.approx(PER_CAPTION_T2I)
    assert result.metrics["image_to_text"] == pytest.approx(PER_CAPTION_I2T)
    assert result.metrics["counts"]["pairs"] == 8 and result.metrics["gallery_sizes"] == {"images": 4, "texts": 8}
    generated = {Path(p).stem: g for p, g in zip(result.images["image"], result.images["generated"])}
    assert generated == {"red": "a red square", "green": "a green square", "blue": "a blue square",
                         "yellow": "a yellow square"}
    assert result.metrics["captioning"]["CIDEr-D"] > 0  # three of the four are among their references
    distinct = evaluate_captioned(captioned, ColourModel(), split="test", captions_per_image=2, per_caption=False,
                                  ks=(1, 2), captions=False, progress=False)
    assert distinct.metrics["text_to_image"] == pytest.approx(DISTINCT_T2I)


def test_a_karpathy_file_defaults_to_the_papers_protocol(sources):
    captioned = read_captioned(sources["karpathy"])
    assert Protocol.default_for(captioned) == Protocol("test", 5, True)
    assert Protocol.default_for(read_captioned(sources["csv"])) == Protocol(None, None, False)
    result = evaluate_captioned(captioned, ColourModel(), ks=(1,), captions=False, progress=False)
    assert result.metrics["counts"]["images"] == 4 and result.metrics["counts"]["pairs"] == 9  # red's third caption
    assert result.metrics["protocol"]["split"] == "test" and "CLIP_benchmark" in result.metrics["protocol"]["texts"]
    every = evaluate_captioned(captioned, ColourModel(), split="all", ks=(1,), captions=False, progress=False)
    assert every.metrics["counts"]["images"] == 5


def test_cli_eval_split_and_protocol_report(sources, tmp_path, capsys, model):
    model.save(tmp_path / "ckpt")
    args = ["eval", "--captions", str(sources["karpathy"]), "--checkpoint", str(tmp_path / "ckpt"), "--quiet",
            "--max-len", "4", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert main(args + ["--split", "train"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["counts"]["images"] == 1 and report["protocol"]["split"] == "train"
    assert report["data"]["splits"] == {"test": 4, "train": 1}
    assert main(args + ["--captions-per-image", "1", "--distinct-texts", "--overwrite"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["counts"]["pairs"] == 4 and report["protocol"]["texts"] == "distinct caption texts"
    assert "coco, split test, 4 images: 1 captions per image" in capsys.readouterr().out
    assert main(args + ["--split", "val", "--overwrite"]) == 2
    assert "no images in split 'val'" in capsys.readouterr().err


def test_protocol_names_the_papers_test_sets(tmp_path):
    from mammut_search.captioned import CaptionedImages
    from mammut_search.eval.evaluation import protocol_name

    frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(1000)], "split": "test"})
    assert protocol_name(CaptionedImages(frame, format="karpathy", dataset="flickr30k"), "test") == \
        "Flickr30k 1k test (Karpathy split)"
    assert protocol_name(CaptionedImages(frame, format="karpathy", dataset="coco"), "test") == \
        "coco, split test, 1000 images"


def test_missing_rows_show_in_the_printed_report(sources):
    (sources["folder"] / "test" / "red.png").unlink()
    result = evaluate_captioned(read_captioned(sources["karpathy"]), ColourModel(), ks=(1,), progress=False)
    assert "missing image file" in format_table(result) and result.metrics["data"]["left_out"] == {
        "missing image file": 1}
