"""Captioned sets that fight back: caption files that are pipes, devices, huge or links out of the folder; image paths
that lead outside the images root; values of the wrong JSON type; odd encodings and names. Each is counted and named
in one line, never a hang, a traceback or a silent read of something the user did not point at."""

import contextlib
import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mammut_search.captioned import read_captioned
from mammut_search.cli import main
from mammut_search.errors import UserError
from mammut_search.eval.evaluation import evaluate_captioned, format_table
from test_captioned import ColourModel

posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs and symlinks")


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a blocking open() of a pipe is interrupted by the alarm."""

    def expire(*_):
        raise TimeoutError(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def image(path: Path, caption: str | None = "a red square") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return path


def reasons(read) -> dict[str, str]:
    return {Path(p["where"]).name if "/" in p["where"] else p["where"]: p["reason"] for p in read.problems}


# ----- caption files beside images -----

@posix_only
def test_caption_files_that_are_pipes_devices_or_huge_are_listed_not_read(tmp_path):
    image(tmp_path / "good.png")
    image(tmp_path / "pipe.png", None)
    os.mkfifo(tmp_path / "pipe.txt")
    image(tmp_path / "zero.png", None)
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    image(tmp_path / "huge.png", None)
    with open(tmp_path / "huge.txt", "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of NULs, no disk used
    with deadline(20):
        read = read_captioned(tmp_path)
    assert read.frame["captions"].tolist() == [["a red square"]]
    found = reasons(read)
    assert found["pipe.txt"] == "caption file is not a regular file (a pipe, socket or device)"
    assert found["zero.txt"] == "caption file is not a regular file (a pipe, socket or device)"
    assert found["huge.txt"].startswith("caption file is larger than 1,048,576 bytes")
    assert read.summary()["left_out"]["caption file is not a regular file (a pipe, socket or device)"] == 2


@posix_only
def test_links_out_of_the_folder_are_followed_only_when_allowed_and_always_listed(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/sh\n")
    image(outside / "far.png", None)
    folder = tmp_path / "photos"
    image(folder / "good.png")
    image(folder / "leak.png", None)
    (folder / "leak.txt").symlink_to(outside / "passwd")
    (folder / "far.png").symlink_to(outside / "far.png")
    (folder / "far.txt").write_text("a far square\n")
    (folder / "near.png").symlink_to(folder / "good.png")  # a link inside the folder is fine
    (folder / "near.txt").write_text("a near square\n")
    (folder / "more").symlink_to(outside)  # a linked folder is not walked, and said so

    read = read_captioned(folder)
    assert sorted(Path(p).name for p in read.frame["path"]) == ["good.png", "near.png"]
    assert reasons(read) == {"leak.txt": "caption file is a link to outside the folder",
                             "far.png": "a link to outside the folder", "more": "a linked folder, not searched"}
    assert read.outside == []

    allowed = read_captioned(folder, allow_outside=True)
    assert sorted(Path(p).name for p in allowed.frame["path"]) == ["far.png", "good.png", "leak.png", "near.png"]
    assert sorted(Path(p).name for p in allowed.outside) == ["far.png", "leak.txt"]
    assert allowed.summary()["outside_root"]["files"] == 2
    result = evaluate_captioned(allowed, ColourModel(), ks=(1,), captions=False, progress=False)
    assert "read 2 files outside" in format_table(result)


def test_image_paths_outside_the_images_root_need_the_flag(tmp_path, capsys, model):
    root = tmp_path / "set"
    image(root / "in.png", None)
    secret = image(tmp_path / "private" / "secret.png", None)
    rows = [{"image": "in.png", "caption": "a red square"}, {"image": str(secret), "caption": "abs"},
            {"image": "../private/secret.png", "caption": "dots"}]
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    karpathy = {"images": [{"filename": name, "split": "test", "sentences": [{"raw": "x"}]}
                           for name in ("in.png", "../private/secret.png")]}
    (root / "k.json").write_text(json.dumps(karpathy))
    coco = {"images": [{"id": i, "file_name": name} for i, name in enumerate(("in.png", str(secret)))],
            "annotations": [{"image_id": i, "caption": "x"} for i in range(2)]}
    (root / "captions_val.json").write_text(json.dumps(coco))
    for source in ("pairs.csv", "k.json", "captions_val.json"):
        read = read_captioned(root / source)
        assert [Path(p).name for p in read.frame["path"]] == ["in.png"], source
        assert {p["reason"] for p in read.problems} == {"outside the images root"}, source
        allowed = read_captioned(root / source, allow_outside=True)
        assert allowed.outside == [str(secret)] and len(allowed.frame) == 2, source
    # a wider --images-root takes the absolute path in ("../private" now leads out of it)
    wider = read_captioned(root / "pairs.csv", images_root=tmp_path)
    assert wider.frame["path"].tolist() == [str(secret)] and wider.frame["captions"][0] == ["abs"]

    model.save(tmp_path / "ckpt")
    args = ["eval", "--captions", str(root / "pairs.csv"), "--checkpoint", str(tmp_path / "ckpt"), "--quiet",
            "--no-captions", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 outside the images root" in out and "--allow-outside-root" in out
    assert main(args + ["--allow-outside-root"]) == 0
    assert f"read 1 files outside {root}" in capsys.readouterr().out
    (root / "only.csv").write_text(f"image,caption\n{secret},x\n")
    with pytest.raises(UserError, match=r"outside the images root\); pass --allow-outside-root"):
        read_captioned(root / "only.csv")


def test_caption_file_encodings_and_names(tmp_path):
    image(tmp_path / "bom.png", None)
    (tmp_path / "bom.txt").write_bytes("\ufeffa bom caption\r\nsecond line\n".encode("utf-8"))
    image(tmp_path / "latin.png", None)
    (tmp_path / "latin.txt").write_bytes("un caf\xe9 cr\xe8me\n".encode("latin-1"))
    image(tmp_path / "Upper.PNG", None)
    (tmp_path / "Upper.TXT").write_text("an upper case caption\n")
    read = read_captioned(tmp_path)
    captions = {Path(p).name: list(c) for p, c in zip(read.frame["path"], read.frame["captions"])}
    assert captions == {"bom.png": ["a bom caption", "second line"], "Upper.PNG": ["an upper case caption"]}
    assert reasons(read) == {"latin.txt": "caption file is not UTF-8 text (byte 0xe9 at offset 6); save it as UTF-8"}


@posix_only
def test_odd_things_named_like_images_in_a_folder_are_counted(tmp_path):
    image(tmp_path / "good.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with deadline(20):
        read = read_captioned(tmp_path)
    assert len(read.frame) == 1
    assert reasons(read) == {"pipe.png": "not a regular file (a pipe, socket or device)",
                             "folder.png": "a folder, not a file", "loop.png": "a broken or looping link",
                             "dangling.png": "a broken or looping link"}


# ----- JSON values of the wrong kind -----

def test_karpathy_values_of_the_wrong_type_are_counted(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        image(tmp_path / name, None)
    entries = [{"filename": "a.png", "split": "test", "sentences": [{"raw": "a good one"}, {"raw": ["x", "y"]}]},
               {"filename": "b.png", "split": "test", "sentences": 5},
               {"filename": "c.png", "split": "test", "sentences": "a string, not a list"},
               {"filename": ["d.png"], "split": "test", "sentences": [{"raw": "listed name"}]},
               {"filename": "a.png", "split": "test", "sentences": [{"raw": "a second entry"}]},
               {"filename": "e.png", "split": ["test"], "sentences": [{"raw": 7}]}]
    (tmp_path / "dataset.json").write_text(json.dumps({"images": entries}))
    read = read_captioned(tmp_path / "dataset.json")
    assert {Path(p).name: list(c) for p, c in zip(read.frame["path"], read.frame["captions"])} == {
        "a.png": ["a good one"], "e.png": ["7"]}
    assert sorted((p["where"], p["reason"]) for p in read.problems) == [
        ("dataset.json: images[0].sentences[1]", "caption is not text"),
        ("dataset.json: images[1]", "sentences is a number, not a list"),
        ("dataset.json: images[2]", "sentences is text, not a list"),
        ("dataset.json: images[3]", "no filename"),
        ("dataset.json: images[4]", "duplicate entry: images[0] names a.png too")]


def test_deeply_nested_json_is_one_line(tmp_path):
    depth = 100_000
    (tmp_path / "deep.json").write_text('{"images": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(UserError, match="nested too deeply"):
        read_captioned(tmp_path / "deep.json")
    (tmp_path / "deep_list.json").write_text("[" * depth + "]" * depth)
    with pytest.raises(UserError, match="deep_list.json"):
        read_captioned(tmp_path / "deep_list.json")
    (tmp_path / "deep.jsonl").write_text('{"image": "a.png", "caption": ' + "[" * depth + "]" * depth + "}\n")
    with pytest.raises(UserError, match="deep.jsonl"):
        read_captioned(tmp_path / "deep.jsonl")


def test_coco_ids_of_the_wrong_type_orphans_and_duplicates_are_counted(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        image(tmp_path / name, None)
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": [2], "file_name": "b.png"},
                       {"id": "3", "file_name": "c.png"}, {"id": 1, "file_name": "d.png"}],
            "annotations": [{"image_id": 1, "caption": "a first"}, {"image_id": [1], "caption": "listed id"},
                            {"image_id": 3, "caption": "an int id"}, {"image_id": 9, "caption": "no such image"},
                            {"image_id": 1, "caption": ["not", "text"]}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(coco))
    read = read_captioned(tmp_path / "captions_val2017.json")
    assert [list(c) for c in read.frame["captions"]] == [["a first"]]
    found = sorted((p["where"].split(": ", 1)[1], p["reason"]) for p in read.problems)
    assert found == [
        ("annotations (image_id 3)", "caption of no image in images[]"),
        ("annotations (image_id 9)", "caption of no image in images[]"),
        ("annotations[1]", "image_id is a list, not a whole number or text"),
        ("annotations[4]", "caption is not text"),
        ("images[1]", "id is a list, not a whole number or text"),
        ("images[2]", "no caption: images[].id '3' is text, annotations[].image_id 3 is not; ids must match in "
                      "type"),
        ("images[3]", "duplicate id 1 (images[0] has it too)")]
    assert read.summary()["left_out"]["caption of no image in images[]"] == 2


# ----- messages -----

def test_unknown_split_and_group_column_name_what_the_user_can_give(tmp_path):
    image(tmp_path / "a.png", None)
    pd.DataFrame({"file": ["a.png"], "text": ["x"], "photographer": ["ann"]}).to_csv(tmp_path / "p.csv", index=False)
    read = read_captioned(tmp_path / "p.csv")
    with pytest.raises(UserError, match=r"no images in split 'nosuch'; splits there: \(no split\) \(1\); "
                                        "pass --split all"):
        read.select("nosuch")
    with pytest.raises(UserError) as refused:
        read.pairs(group_column="nosuch")
    assert "columns there: photographer" in str(refused.value) and "concept_id" not in str(refused.value)
    assert read.pairs(group_column="photographer")["group"].tolist() == ["ann"]


def test_printed_lines_escape_terminal_controls_in_file_names(tmp_path, capsys, model):
    image(tmp_path / "ok.png")
    (tmp_path / "pairs.csv").write_text('image,caption\nok.png,fine\n"bad\x1b[2Jname.png",x\n"nul\x00.png",y\n')
    model.save(tmp_path / "ckpt")
    assert main(["eval", "--captions", str(tmp_path / "pairs.csv"), "--checkpoint", str(tmp_path / "ckpt"),
                 "--quiet", "--no-captions", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bad\\x1b[2Jname.png: missing image file" in out and "nul\\x00.png" in out
    assert "\x1b" not in out and "\x00" not in out


def test_table_rows_that_do_not_fit_are_one_line(tmp_path):
    image(tmp_path / "a.png", None)
    (tmp_path / "wide.tsv").write_text("image\tcaption\na.png\tx\ty\tz\n")  # pandas would shift it into an index
    with pytest.raises(UserError, match="wide.tsv: a row has more fields than the header"):
        read_captioned(tmp_path / "wide.tsv")
    (tmp_path / "mixed.jsonl").write_text('{"image": "a.png", "caption": "x"}\n[1, 2]\n"text"\n')
    with pytest.raises(UserError, match="mixed.jsonl: cannot read as jsonl"):
        read_captioned(tmp_path / "mixed.jsonl")
    (tmp_path / "bom.csv").write_bytes("\ufeffimage,caption\na.png,a caption\n".encode("utf-8"))
    assert read_captioned(tmp_path / "bom.csv").frame["captions"].tolist() == [["a caption"]]
