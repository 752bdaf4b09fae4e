"""Training on your own captions: a few steps from a Karpathy split file and from a folder with .txt sidecars end
in a checkpoint that loads, indexes and serves; a cache streamed from disk trains exactly like one in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from mammut_search import load_model
from mammut_search.model.config import ImageEncoderConfig
from mammut_search.train.data import cache_bytes_per_image, stream_from_disk
from mammut_search.train.loop import train
from mammut_search.train.recipe import load_config
from test_train import PLAIN_VALIDATION_AND_MODEL

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "orange": (250, 150, 20)}
SHAPES = ("circle", "square", "triangle")


def photo(shape: str, colour: tuple[int, int, int], shift: int) -> Image.Image:
    image = Image.new("RGB", (40, 32), (250 - 20 * shift, 250, 240))
    d = ImageDraw.Draw(image)
    box = (6 + shift, 4 + shift, 30 + shift, 28)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(18 + shift, 4), (box[0], 28), (box[2], 28)], fill=colour)
    return image


def captioned_images(root):
    """Coloured shapes as photos with three captions each; shift 0-1 train, 2 val; yields (relative path,
    captions, split)."""
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            for shift in range(3):
                split = "val" if shift == 2 else "train"
                relative = f"{split}/{colour}-{shape}-{shift}.jpg"
                (root / split).mkdir(parents=True, exist_ok=True)
                photo(shape, rgb, shift).save(root / relative)
                yield relative, [f"a {colour} {shape}", f"a photo of a {colour} {shape}.",
                                 f"{shape} painted {colour}"], split


def write_karpathy(root):
    images = [{"filepath": rel.split("/")[0], "filename": rel.split("/")[1], "split": split,
               "sentences": [{"raw": c, "tokens": c.split()} for c in captions]}
              for rel, captions, split in captioned_images(root)]
    images.append({"filepath": "train", "filename": "gone.jpg", "split": "train",
                   "sentences": [{"raw": "a missing photo"}]})  # listed, left out
    (root / "dataset_shapes.json").write_text(json.dumps({"images": images, "dataset": "shapes"}))
    return root / "dataset_shapes.json"


def write_sidecar_folder(root):
    for rel, captions, _ in captioned_images(root):
        (root / rel).with_suffix(".txt").write_text("\n".join(captions) + "\n")
    photo("circle", (0, 0, 0), 0).save(root / "train" / "uncaptioned.jpg")  # no .txt: listed, left out
    return root


def tiny_recipe(tmp_path, manifest, **changes):
    overrides = [
        f"manifest='{manifest}'", "common_words=0", "text_init=false", "distill_weight=0.0",
        "distill_words=0", "word_weight=0.0", "batch_size=8", "images_per_concept=1",
        "caption_target='caption'", "exclude_styles=[]", "max_minutes=0",
        "lr=3e-3", "warmup_steps=1", "steps=4", "log_every=2", "eval_every=2", "save_every=2", "device='cpu'",
        f"cache_dir='{tmp_path / 'cache'}'", f"export='{tmp_path / 'export'}'",
        "model.dim=32", "model.depth=1", "model.heads=2", "model.dim_head=16", "model.ff_mult=2",
        "model.num_img_queries=4", "model.dim_latents=16", "model.max_text_len=16", "model.image_grid_latent=false",
        "model.image_encoder={kind='vit', image_size=32, patch_size=8, vit_dim=32, vit_depth=1, vit_heads=2, "
        "grid=0, classifier_token=false}",
        *PLAIN_VALIDATION_AND_MODEL, "val_splits=['val']",
    ]
    return load_config(None, overrides + [f"{k}={v}" for k, v in changes.items()])


def index_and_serve(checkpoint, images, tmp_path):
    """The index builder and the UI accept the checkpoint: build an index of `images`, answer a query in the UI."""
    from index_builder.build import BuildOptions, build_index
    from mammut_search.search import Searcher
    from ui import app as ui_app

    model = load_model(checkpoint, device="cpu")
    store = build_index([images], tmp_path / "photos.index", model, checkpoint_dir=checkpoint,
                        options=BuildOptions(batch_size=8, workers=0, progress=False))
    assert (store.items["status"] == "ok").sum() >= 24
    searcher = Searcher.open(tmp_path / "photos.index", device="cpu")
    ui_app.build_app(searcher)
    gallery, message, ids = ui_app.search_text(searcher, "a red square", 5, False)
    assert not message.startswith("⚠️") and len(gallery) == len(ids) <= 5, message
    assert searcher.search_text("a red square", 5, rerank=False).ids  # the model's ranking, before any cut-off
    return store


@pytest.mark.parametrize("source", ["karpathy", "folder"])
def test_a_few_steps_from_captions_end_in_a_checkpoint_that_indexes_and_serves(tmp_path, source):
    images = tmp_path / "images"
    images.mkdir()
    manifest = write_karpathy(images) if source == "karpathy" else write_sidecar_folder(images)
    card = train(tiny_recipe(tmp_path, manifest), tmp_path / "run", progress=False)
    assert card["steps"] == 4 and card["data"]["train_images"] == 24 and card["data"]["train_concepts"] == 24
    assert card["data"]["splits"] == {"train": 24, "val": 12}
    reason = "missing image file" if source == "karpathy" else "no caption"
    assert card["data"]["source"]["left_out"] == {reason: 1}
    assert set(card["validation"]) == {"val"}
    assert "t2i_sentence_R@1" not in card["validation"]["val"]  # its "names" are captions: no "A picture of ..."
    model = load_model(tmp_path / "export", device="cpu")
    assert model.config.training["data"]["source"]["format"] == source
    index_and_serve(tmp_path / "export", images, tmp_path)


def test_a_cache_streamed_from_disk_trains_like_one_in_memory(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    manifest = write_karpathy(images)
    for mode in ("memory", "disk"):
        train(tiny_recipe(tmp_path, manifest, stream=f"'{mode}'", export="''"), tmp_path / mode, progress=False)
    a = load_file(str(tmp_path / "memory" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "disk" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "disk" / "training_card.json").read_text())
    assert card["data"]["cache"]["streamed"] is True and card["data"]["cache"]["bytes_per_image"] == 2 * 3 * 32 * 32
    entry = next((tmp_path / "cache").rglob("*.npy"))
    assert np.load(entry).nbytes == 2 * 3 * 32 * 32  # what the card says is what is stored


def test_cache_size_per_image_is_what_the_encoder_makes():
    from mammut_search.model.image_encoders import build_image_encoder

    for size in (96, 160):
        config = ImageEncoderConfig(kind="efficientnet_lite0", image_size=size)
        with torch.no_grad():
            features = build_image_encoder(config)(torch.zeros(1, 3, size, size))
        assert cache_bytes_per_image(config, cached_features=True) == 2 * features[0].numel()
        assert cache_bytes_per_image(config, cached_features=False) == 2 * 3 * size * size
    assert cache_bytes_per_image(ImageEncoderConfig(image_size=320), cached_features=False) == 600 * 1024


def test_auto_streams_only_what_would_not_fit():
    assert stream_from_disk("auto", 1024) is False
    assert stream_from_disk("auto", 1 << 60) is True
    assert stream_from_disk("disk", 1) is True and stream_from_disk("memory", 1 << 60) is False
    with pytest.raises(Exception, match="stream must be one of"):
        stream_from_disk("sometimes", 1)


def test_the_coco_recipe_runs_on_the_cpu_at_a_tiny_scale(tmp_path):
    """data/recipes/coco.toml as written (MiniLM text side, trainable last encoder stages, pixels cache streamed
    from disk), shrunk only in size and steps."""
    images = tmp_path / "images"
    images.mkdir()
    manifest = write_karpathy(images)
    config = load_config("data/recipes/coco.toml", [
        f"manifest='{manifest}'", "train_splits=['train']", "steps=2", "batch_size=4", "warmup_steps=1",
        "eval_every=2", "save_every=2", "log_every=1", "device='cpu'", "stream='disk'", "common_words=50",
        f"cache_dir='{tmp_path / 'cache'}'", f"export='{tmp_path / 'export'}'",
        "model.dim=64", "model.depth=1", "model.heads=2", "model.dim_head=32", "model.ff_mult=2",
        "model.num_img_queries=4", "model.dim_latents=32", "model.image_encoder.image_size=64"])
    card = train(config, tmp_path / "run", progress=False)
    assert card["steps"] == 2 and card["data"]["cache"]["streamed"] is True
    model = load_model(tmp_path / "export", device="cpu")
    encoder = model.config.image_encoder
    assert (encoder.kind, encoder.trainable_blocks, encoder.image_size) == ("efficientnet_lite0", 5, 64)
    assert card["data"]["cache"]["bytes_per_image"] == 2 * 3 * 64 * 64  # a trainable encoder caches pixels
