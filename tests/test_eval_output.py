"""What `mammut eval` and `mammut caption` write and accept: a report is never replaced without --overwrite, a folder
that cannot take it is refused before any work, a failed write leaves the old report whole, spreadsheets never run
a caption as a formula, and decoding options out of range are a sentence."""

import errno
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mammut_search.cli import main
from mammut_search.errors import UserError
from mammut_search.eval import evaluation
from mammut_search.eval.evaluation import evaluate, write_report

FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "@SUM(1)", "-2+3", "a plain caption"]


def captioned_folder(folder: Path, captions=FORMULAS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number, caption in enumerate(captions):
        Image.new("RGB", (16, 16), (40 * number, 255 - 40 * number, 90)).save(folder / f"img{number}.png")
        (folder / f"img{number}.txt").write_text(caption + "\n")
    return folder


def pairs_of(folder: Path) -> pd.DataFrame:
    return pd.DataFrame({"image": [str(p) for p in sorted(folder.glob("*.png"))],
                         "caption": [p.with_suffix(".txt").read_text().strip() for p in sorted(folder.glob("*.png"))]})


def test_formula_like_cells_are_written_as_text(model, tmp_path):
    result = evaluate(pairs_of(captioned_folder(tmp_path / "set")), model, ks=(1,), max_len=4, progress=False)
    result.images["generated"] = "=HYPERLINK(\"http://x\")"
    paths = write_report(result, tmp_path / "out")
    captions = pd.read_csv(paths["captions.csv"], keep_default_na=False)["caption"].tolist()
    assert sorted(captions) == sorted(["'=cmd|' /C calc'!A0", "'+1+1", "'@SUM(1)", "'-2+3", "a plain caption"])
    assert set(pd.read_csv(paths["images.csv"])["generated"]) == {"'=HYPERLINK(\"http://x\")"}
    assert json.loads(paths["report.json"].read_text())["counts"]["pairs"] == 5  # the JSON keeps the text as is


def test_eval_out_is_checked_before_the_work_and_never_replaced_silently(model, tmp_path, capsys):
    folder = captioned_folder(tmp_path / "set", ["a red square", "a green square"])
    model.save(tmp_path / "ckpt")
    base = ["eval", "--folder", str(folder), "--quiet", "--no-captions", "--device", "cpu"]
    out = tmp_path / "report"
    assert main(base + ["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    first = (out / "report.json").read_text()
    capsys.readouterr()
    # refused before the checkpoint is even looked at: a missing checkpoint would be the error otherwise
    missing = ["--checkpoint", str(tmp_path / "no-such-checkpoint")]
    assert main(base + missing + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a report already" in err and "--overwrite" in err and err.count("\n") == 1
    assert (out / "report.json").read_text() == first
    (tmp_path / "a-file").write_text("x")
    for bad in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
        assert main(base + missing + ["--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / "a-file") in err and err.count("\n") == 1 and "checkpoint" not in err
    assert main(base + ["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--overwrite"]) == 0


def test_a_failed_report_write_keeps_the_old_report_whole(model, tmp_path, monkeypatch):
    result = evaluate(pairs_of(captioned_folder(tmp_path / "set", ["a red square", "a green square"])), model,
                      ks=(1,), captions=False, progress=False)
    out = tmp_path / "out"
    write_report(result, out)
    before = {name: (out / name).read_bytes() for name in evaluation.REPORT_FILES}

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation, "plot_recall_curves", disk_full)
    with pytest.raises(UserError, match="cannot write the report \\(No space left on device\\)"):
        write_report(result, out, overwrite=True)
    assert {name: (out / name).read_bytes() for name in evaluation.REPORT_FILES}["report.json"] == before["report.json"]
    assert (out / "recall_curve.png").read_bytes() == before["recall_curve.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(evaluation.REPORT_FILES)  # no temporary file left


@pytest.mark.parametrize("option,value", [("--beam-width", "0"), ("--beam-width", "-1"), ("--beam-width", "100000"),
                                          ("--max-len", "0"), ("--max-len", "1"), ("--max-len", "100000"),
                                          ("--beam-width", "wide")])
def test_decoding_options_out_of_range_are_a_sentence(option, value, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as stopped:
        main(["caption", str(tmp_path / "a.png"), option, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in err and "whole number from" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["eval", "--folder", str(tmp_path), option, value])
    assert "whole number from" in capsys.readouterr().err


def test_caption_lines_escape_terminal_controls(model, tmp_path, capsys, monkeypatch):
    from mammut_search import inference

    model.save(tmp_path / "ckpt")
    name = tmp_path / "evil\x1b[2Jname.png"
    Image.new("RGB", (8, 8)).save(name)
    monkeypatch.setattr(inference.MammutModel, "caption", lambda self, pixels, **_: ["a \x1b]0;owned\x07 caption"])
    assert main(["caption", str(name), "--checkpoint", str(tmp_path / "ckpt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b[2Jname.png\ta \\x1b]0;owned\\x07 caption" in out
