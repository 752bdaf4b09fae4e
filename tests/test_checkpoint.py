"""Checkpoint directories: round trip, refusal of corrupt or mismatched files, the API and the CLI."""

import json

import pytest
import torch
from PIL import Image

from mammut_search import CheckpointError, load_model
from mammut_search.cli import main
from mammut_search.testing import tiny_model


def pictures():
    return [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGBA", (20, 30), (0, 0, 255, 100))]


def test_save_then_load_gives_identical_outputs(model, tmp_path):
    sha = model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded = load_model(tmp_path / "ckpt", device="cpu")
    assert loaded.checkpoint_sha256 == sha and len(sha) == 64
    assert torch.equal(model.encode_image(pictures()), loaded.encode_image(pictures()))
    assert torch.equal(model.encode_text(["a red apple"]), loaded.encode_text(["a red apple"]))
    assert model.caption(pictures()) == loaded.caption(pictures())
    assert loaded.config == model.config


def test_preprocessing_is_saved_with_the_checkpoint(tmp_path):
    m = tiny_model()
    m.config.image_encoder.background = (0, 0, 0)
    m.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["image_encoder"]["background"] == [0, 0, 0]
    assert load_model(tmp_path / "ckpt").config.image_encoder.background == (0, 0, 0)


def test_truncated_weights_are_refused_naming_the_file(model, tmp_path):
    model.save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "ckpt")


def test_garbage_weights_are_refused(model, tmp_path):
    model.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "ckpt")


def test_shape_mismatch_is_refused(model, tmp_path):
    model.save(tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["dim_latents"] = 24
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tmp_path / "ckpt")


def test_missing_directory_and_bad_config_are_refused(model, tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_model(tmp_path / "nowhere")
    model.save(tmp_path / "ckpt")
    for text in ("{not json", "[1, 2]", '"a string"'):
        (tmp_path / "ckpt" / "config.json").write_text(text)
        with pytest.raises(CheckpointError, match="config.json"):
            load_model(tmp_path / "ckpt")


def test_fp16_checkpoint_loads_close_to_fp32(model, tmp_path):
    model.save(tmp_path / "half", dtype=torch.float16)
    half = load_model(tmp_path / "half")
    assert torch.allclose(half.encode_text(["an octopus"]), model.encode_text(["an octopus"]), atol=1e-2)


def test_cli_caption(model, tmp_path, capsys):
    model.save(tmp_path / "ckpt")
    Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "bad.jpg").write_text("not an image")
    code = main(["caption", str(tmp_path / "red.png"), str(tmp_path / "bad.jpg"), "--checkpoint", str(tmp_path / "ckpt")])
    out, err = capsys.readouterr()
    assert code == 1  # one image failed, the other was still captioned
    assert "red.png" in out and "bad.jpg" in err


def test_cli_reports_missing_checkpoint_on_one_line(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    assert main(["caption", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and "\n" not in err
