"""A converted open_clip MaMMUT (random weights, tiny widths, the real CLIP vocabulary and context) is a checkpoint
like any other: `mammut convert open-clip` writes it; index build (with captions), text and image search,
re-ranking, caption, eval and the UI use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mammut_search.cli import main
from mammut_search.inference import load_model, preprocess_images
from mammut_search.model.openmammut import OpenClipVisionConfig
from mammut_search.testing import write_open_clip_mammut

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40)}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(checkpoint directory, folder of captioned images)"""
    root = tmp_path_factory.mktemp("openmammut")
    weights, config = write_open_clip_mammut(root / "hub")
    assert main(["convert", "open-clip", str(weights), "--config", str(config), "--out", str(root / "ckpt")]) == 0
    images = root / "images"
    images.mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (48, 40), colour).save(images / f"{name}.png")
        (images / f"{name}.txt").write_text(f"a {name} square\n")
    return root / "ckpt", images


def test_conversion_writes_a_checkpoint_of_the_open_clip_kind(converted):
    checkpoint, _ = converted
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["kind"] == "open_clip_mammut" and config["tokenizer"] == "clip_bpe"
    assert config["image_encoder"]["mean"] == [0.5] * 3 and config["image_encoder"]["centre_crop"]
    model = load_model(checkpoint, device="cpu")
    assert model.latent_dim == 32 and model.tokenizer.vocab_size == 49408
    latents = model.encode_text(["a red square", "a photo of a cat"])
    assert latents.shape == (2, 32) and torch.allclose(latents.norm(dim=-1), torch.ones(2))


def test_converting_onto_an_existing_checkpoint_is_refused_in_one_line(converted, tmp_path, capsys):
    checkpoint, _ = converted
    weights, config = write_open_clip_mammut(tmp_path / "hub")
    assert main(["convert", "open-clip", str(weights), "--config", str(config), "--out", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(checkpoint) in err and "\n" not in err


def test_a_file_that_is_not_such_a_model_is_refused_in_one_line(tmp_path, capsys):
    weights, config = write_open_clip_mammut(tmp_path / "hub")
    other = json.loads(config.read_text())
    other["model_cfg"]["text_cfg"]["layers"] = 4  # the weights hold two text blocks
    config.write_text(json.dumps(other))
    assert main(["convert", "open-clip", str(weights), "--config", str(config), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing [text.cross_attn.1.*, text.resblocks.2.*, text.resblocks.3.*]" in err
    assert "extra none" in err and "\n" not in err
    assert not (tmp_path / "c" / "config.json").exists()


def test_index_search_rerank_caption_and_ui(converted, tmp_path, capsys):
    from mammut_search.search import Searcher
    from ui import app as ui_app

    checkpoint, images = converted
    index = tmp_path / "photos.index"
    assert main(["index", "build", str(images), "--out", str(index), "--checkpoint", str(checkpoint),
                 "--workers", "0", "--batch-size", "2", "--device", "cpu"]) == 0
    searcher = Searcher.open(index, device="cpu")
    items = searcher.store.items
    assert (items["status"] == "ok").sum() == 4 and items["caption"].str.len().min() > 0
    plain = searcher.search_text("a red square", 4, rerank=False)
    reranked = searcher.search_text("a red square", 4, rerank=True)
    assert len(plain.ids) == 4 and sorted(reranked.ids) == sorted(plain.ids) and reranked.reranked
    by_image = searcher.search_image(images / "blue.png", 1)
    assert searcher.store.items.set_index("id").loc[by_image.ids[0], "path"].endswith("blue.png")
    ui_app.build_app(searcher)
    gallery, message, ids = ui_app.search_text(searcher, "a red square", 3, False)
    assert len(gallery) == len(ids) == 3, message

    capsys.readouterr()
    assert main(["search", "a green square", "--index", str(index), "--json", "--device", "cpu"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 4
    assert main(["caption", str(images / "red.png"), "--checkpoint", str(checkpoint), "--device", "cpu",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)  # the exact text (plain lines escape control characters)
    assert answer["caption"] == items.set_index("path").loc[str(images / "red.png"), "caption"]


def test_eval_reads_a_captioned_folder_with_it(converted, tmp_path):
    checkpoint, images = converted
    assert main(["eval", "--folder", str(images), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "r"),
                 "--quiet", "--max-len", "8", "-k", "1", "2", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["counts"]["images"] == 4 and set(report["text_to_image"]) == {"R@1", "R@2"}


def test_images_are_resized_and_cut_to_the_centre_square_as_open_clip_does():
    """A wide image: its shortest side fills the square and the sides are cut (our own encoders letterbox)."""
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20], wide[:, 20:40], wide[:, 40:] = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    config = OpenClipVisionConfig(image_size=10, patch_size=5, mean=(0, 0, 0), std=(1, 1, 1))
    pixels = preprocess_images([Image.fromarray(wide)], config)[0]  # (3 10 10), the blue middle third
    assert pixels.shape == (3, 10, 10)
    assert pixels[2, :, 2:8].min() > 0.9 and pixels[0, :, 2:8].max() < 0.1 and pixels[1].max() < 0.1


def test_from_hub_downloads_the_two_files_then_converts(tmp_path, monkeypatch, capsys):
    import sys
    import types

    weights, config = write_open_clip_mammut(tmp_path / "hub")
    asked = []

    def hf_hub_download(repo, filename):
        asked.append((repo, filename))
        if filename == "open_clip_model.safetensors":
            raise FileNotFoundError(filename)  # a repository with only the pickle
        return str({"open_clip_config.json": config, "open_clip_pytorch_model.bin": pickle}[filename])

    pickle = tmp_path / "hub" / "open_clip_pytorch_model.bin"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), pickle)
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=hf_hub_download))
    out = tmp_path / "ckpt"
    assert main(["convert", "open-clip", "--from-hub", "laion/some-mammut", "--out", str(out)]) == 0
    assert [name for _, name in asked] == ["open_clip_config.json", "open_clip_model.safetensors",
                                           "open_clip_pytorch_model.bin"]
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    assert main(["convert", "open-clip", "--from-hub", "laion/some-mammut", "--out", str(tmp_path / "c2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "huggingface_hub" in err and "\n" not in err


def test_ctrl_c_during_a_conversion_says_what_to_do_with_the_partial_folder(tmp_path, monkeypatch, capsys):
    from mammut_search.model import open_clip_convert

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(open_clip_convert, "convert_open_clip", interrupted)
    assert main(["convert", "open-clip", "w.safetensors", "--config", "c.json", "--out", str(tmp_path / "c")]) == 130
    err = capsys.readouterr().err.strip()
    assert "partial checkpoint" in err and "\n" not in err
