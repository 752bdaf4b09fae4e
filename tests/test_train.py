"""Training: a tiny run on generated data lowers both losses, resuming equals not stopping, recipes parse,
and the checkpoint carries a training card."""

from __future__ import annotations

import contextlib
import json
import math

import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from mammut_search import load_model
from mammut_search.errors import UserError
from mammut_search.train.loop import TRAIN_STATE, train
from mammut_search.train.prepare import word_vocabulary
from mammut_search.train.recipe import TrainConfig, load_config

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "orange": (250, 150, 20),
           "purple": (140, 40, 170), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, colour: tuple[int, int, int], style: int) -> Image.Image:
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    d = ImageDraw.Draw(image)
    box = (4 + style, 4 + style, 28 - style, 28 - style)
    outline = {"outline": colour, "width": 2} if style == 2 else {"fill": colour}
    if shape == "circle":
        d.ellipse(box, **outline)
    elif shape == "square":
        d.rectangle(box, **outline)
    else:
        d.polygon([(16, box[1]), (box[0], box[3]), (box[2], box[3])], **outline)
    return image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pd.DataFrame:
    """Concepts = coloured shapes in 3 styles; style 2 is the validation style; purple and black are unseen."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            name = f"{colour} {shape}"
            for style in range(3):
                path = root / f"{colour}-{shape}-{style}.png"
                draw(shape, rgb, style).save(path)
                unseen = colour in ("purple", "black")
                split = ("val_unseen" if unseen else "val") if style == 2 else ("heldout_concepts" if unseen else "train")
                rows.append({"path": str(path), "concept_id": name, "name": name, "style": f"s{style}",
                             "captions": [name, f"a {name}", f"a picture of a {name}."], "split": split})
    (root / "broken.png").write_bytes(b"not an image")  # a bad file is skipped, not fatal
    rows.append({"path": str(root / "broken.png"), "concept_id": "red circle", "name": "red circle",
                 "style": "s0", "captions": ["red circle"], "split": "train"})
    return pd.DataFrame(rows)


# the test corpus has no held-out styles or domains and the tiny models no ImageNet classifier: validate on its
# val/val_unseen splits, without the semantic token, label-only examples or style shares
PLAIN_VALIDATION_AND_MODEL = ["val_styles=[]", "val_splits=['val', 'val_unseen']", "style_shares={}",
                              "exclude_styles=[]", "label_weight=0", "model.semantic_dim=0", "model.fusion_weight=0"]


def tiny_recipe(tmp_path, **changes):
    overrides = [
        "common_words=0", "text_init=false", "distill_weight=0.0",
        "batch_size=12", "images_per_concept=2", "lr=3e-3", "warmup_steps=2", "steps=30", "log_every=5",
        "eval_every=10", "save_every=10", "token_keep=1.0", "device='cpu'",
        *PLAIN_VALIDATION_AND_MODEL,
        f"cache_dir='{tmp_path / 'cache'}'",
        "model.dim=32", "model.depth=2", "model.heads=2", "model.dim_head=16", "model.ff_mult=2",
        "model.num_img_queries=8", "model.dim_latents=16", "model.max_text_len=24",
        "model.image_encoder={kind='vit', image_size=32, patch_size=8, vit_dim=32, vit_depth=1, vit_heads=2, "
        "grid=0, classifier_token=false}",
    ]
    overrides += [f"{k}={v}" for k, v in changes.items()]
    return load_config(None, overrides)


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_run_lowers_both_losses_and_writes_a_card(corpus, tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "summary.json").write_text('{"size": 64, "images": 25}')  # as `corpus build` writes
    config = tiny_recipe(tmp_path, steps=40, export=f"'{tmp_path / 'export'}'", word_weight=0.5,
                         word_max_share=0.5, manifest=f"'{tmp_path / 'corpus' / 'manifest.parquet'}'")
    card = train(config, tmp_path / "run", frame=corpus, progress=False)
    losses = [e for e in read_log(tmp_path / "run") if "caption" in e]
    first, last = losses[:2], losses[-2:]
    # averaged over two log lines: single batches are noisy; a word names ~3 images of a batch here, so its
    # loss cannot fall below ~ln 3
    for name, factor in (("caption", 0.8), ("contrastive", 0.8), ("words", 0.9)):
        assert sum(e[name] for e in last) < factor * sum(e[name] for e in first), name
    model = load_model(tmp_path / "export", device="cpu")
    written = model.config.training
    assert written["steps"] == 40 and written["wall_time_s"] > 0 and written["data"]["train_images"] == 24
    assert written["data"]["render_px"] == 64  # the drawings' render size, which the validation figures depend on
    assert written["data"]["source"]["left_out"] == {"unreadable image": 1}  # broken.png
    assert written["data"]["source"]["left_out_examples"][0]["where"].endswith("broken.png")
    assert set(written["validation"]) == {"val", "val_unseen"}
    assert "t2i_sentence_R@1" in written["validation"]["val"]  # concept names, also asked as sentences
    assert written["validation"] == card["validation"]
    assert 0.0 <= written["captions"]["val"]["exact_name"] <= 1.0
    assert model.checkpoint_sha256 and (tmp_path / "run" / "best" / "config.json").is_file()
    assert not (tmp_path / "export" / TRAIN_STATE).exists()  # the shipped format holds no training state


def test_word_vocabulary_shares_words_and_drops_function_and_template_words():
    captions = [["wine glass", "A picture of a wine glass."], ["glass of milk", "A picture of a glass of milk."],
                ["Wine", "A picture of a wine: drink"], ["cat", "A picture of a cat."]]
    words, rows = word_vocabulary(captions, max_share=0.75)  # "picture" is on all four images
    assert words == ["wine", "glass", "milk", "drink", "cat"]
    assert rows == [[0, 1], [1, 2], [0, 3], [4]]


@pytest.mark.slow
def test_resume_continues_exactly(corpus, tmp_path):
    straight = tiny_recipe(tmp_path, steps=20)
    train(straight, tmp_path / "straight", frame=corpus, progress=False)
    interrupted = tmp_path / "interrupted"
    assert train(straight, interrupted, frame=corpus, progress=False, stop_at=7) == {}
    assert json.loads((interrupted / "last" / "config.json").read_text())
    train(straight, interrupted, frame=corpus, progress=False, resume=interrupted)
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(interrupted / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_same_seed_same_run_other_seed_other_run(corpus, tmp_path):
    runs = {}
    for label, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(tiny_recipe(tmp_path, steps=5, seed=seed, eval_every=100), tmp_path / label, frame=corpus,
              progress=False)
        runs[label] = load_file(str(tmp_path / label / "last" / "model.safetensors"))
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_recipe_file_and_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('steps = 100\nlr = 1e-3\ntrain_splits = ["train"]\n[model]\ndim = 384\n'
                      '[model.image_encoder]\nimage_size = 128\n')
    config = load_config(recipe, ["steps=7", "model.depth=2", "model.image_encoder.image_size=96",
                                  "caption_target=caption", "train_splits=['train', 'extra']"])
    assert config.steps == 7 and config.lr == 1e-3 and config.caption_target == "caption"
    assert TrainConfig().model == {}  # the recipe names only what differs from MammutConfig's defaults
    assert config.model == {"dim": 384, "depth": 2, "image_encoder": {"image_size": 96}}
    assert config.train_splits == ["train", "extra"]
    with pytest.raises(UserError, match="stepz"):
        load_config(recipe, ["stepz=3"])
    with pytest.raises(UserError, match="key=value"):
        load_config(recipe, ["steps"])
    with pytest.raises(UserError, match="no such recipe"):
        load_config(tmp_path / "missing.toml")


def test_cli_prints_the_resolved_recipe(tmp_path, capsys):
    from mammut_search.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text("steps = 3\n")
    assert main(["train", "--config", str(recipe), "--set", "batch_size=8", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 3 and printed["batch_size"] == 8


def test_recipe_path_frozen_features_minilm_text_and_baselines(corpus, tmp_path):
    """The default recipe's path: cached frozen EfficientNet features, MiniLM tokenizer, embeddings and
    distillation; the card gets baselines and the target check."""
    overrides = [
        "common_words=50", "text_init=true", "distill_weight=1.0", "distill_words=10",
        "batch_size=12", "steps=6", "log_every=3", "eval_every=3", "save_every=3", "device='cpu'",
        f"cache_dir='{tmp_path / 'cache'}'", "model.dim=64", "model.depth=1", "model.heads=2",
        "model.dim_head=16", "model.ff_mult=2", "model.num_img_queries=4", "model.dim_latents=16",
        "model.image_encoder={kind='efficientnet_lite0', image_size=64, grid=0, "
        "classifier_token=false}", *PLAIN_VALIDATION_AND_MODEL,
    ]
    card = train(load_config(None, overrides), tmp_path / "run", frame=corpus, progress=False)
    assert {"concept_prototype", "word_means"} <= set(card["baselines"]["val"])
    assert "word_means" in card["baselines"]["val_unseen"]
    assert all("distill" in e for e in read_log(tmp_path / "run") if "loss" in e)
    model = load_model(tmp_path / "run" / "best", device="cpu")
    assert model.tokenizer.bos_id == model.tokenizer.hf.token_to_id("[CLS]")
    assert model.encode_text(["a red circle"]).shape == (1, 16)


def test_accumulation_trains_like_one_batch(corpus, tmp_path):
    """accum_steps=3 splits each step into micro-batches of 4 rows with the whole batch's gradient (the
    contrastive negatives included): the weights end up as with one batch of 12."""
    runs = {}
    for accum in (1, 3):
        config = tiny_recipe(tmp_path, steps=3, eval_every=100, accum_steps=accum,
                             word_weight=0.5, word_max_share=0.5)
        train(config, tmp_path / f"accum{accum}", frame=corpus, progress=False)
        runs[accum] = load_file(str(tmp_path / f"accum{accum}" / "last" / "model.safetensors"))
    for name in runs[1]:
        assert torch.allclose(runs[1][name], runs[3][name], atol=2e-5), name
    with pytest.raises(UserError, match="accum_steps"):
        train(tiny_recipe(tmp_path, accum_steps=13), tmp_path / "too_many", frame=corpus, progress=False)


def test_bf16_autocast_with_accumulation_on_cpu(corpus, tmp_path):
    from mammut_search.train.distributed import Runtime, training_autocast

    config = tiny_recipe(tmp_path, steps=4, log_every=1, eval_every=100, accum_steps=2,
                         precision="'bf16'")
    with training_autocast(config, Runtime(torch.device("cpu")))():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert training_autocast(tiny_recipe(tmp_path), Runtime(torch.device("cpu"))) is contextlib.nullcontext
    train(config, tmp_path / "bf16", frame=corpus, progress=False)
    losses = [e["loss"] for e in read_log(tmp_path / "bf16") if "loss" in e]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    with pytest.raises(UserError, match="precision"):
        train(tiny_recipe(tmp_path, precision="'fp16'"), tmp_path / "fp16", frame=corpus, progress=False)


def test_word_means_baseline_ranks_texts_with_no_known_word_at_chance():
    from mammut_search.train.validation import EvalSplit, baselines

    torch.manual_seed(0)
    train_frame = pd.DataFrame({"concept_id": ["a", "b"], "name": ["red circle", "blue square"],
                                "captions": [["red circle"], ["blue square"]]})
    names = [f"unknownword{i}" for i in range(40)]  # no word the training captions use
    split = EvalSplit("val_unseen", pd.DataFrame({"concept_id": names, "name": names, "captions": [[n] for n in names]}),
                      torch.randn(40, 4, 8))
    figures = baselines(train_frame, torch.randn(2, 4, 8), [split])["val_unseen"]["word_means"]
    assert figures["t2i_R@1"] < 0.25  # chance is 1/40; a zero query would tie with every image and score 1.0
