"""Every bad recipe value is refused before any work, in one line that names it."""

from __future__ import annotations

import pytest
import torch

from mammut_search.errors import UserError
from mammut_search.train.recipe import load_config

BAD_OVERRIDES = [
    ("steps=abc", "steps"), ("steps=1.5", "steps"), ("steps=0", "steps"), ("lr=fast", "lr"), ("lr=-1", "lr"),
    ("seed=abc", "seed"), ("seed=-1", "seed"), ("model.dim=abc", "model.dim"), ("model.dim=-8", "model.dim"),
    ("model=5", "model"), ("model.bogus=1", "model.bogus"),
    ("model.image_encoder.bogus=1", "model.image_encoder.bogus"),
    ("model.image_encoder.image_size=7", "image_size"), ("model.image_encoder.kind=resnet", "kind"),
    ("model.max_text_len=2", "max_text_len"), ("train_splits=train", "train_splits"),
    ("train_splits=[]", "train_splits"),
("images_per_concept=0", "images_per_concept"), ("eval_every=0", "eval_every"),
    ("log_every=0", "log_every"), ("save_every=0", "save_every"), ("threads=-1", "threads"),
    ("token_keep=0", "token_keep"), ("token_keep=1.5", "token_keep"), ("text_init=yes", "text_init"),
    ("views=2", "views"), ("stream=ram", "stream"), ("precision=fp16", "precision"), ("device=tpu", "device"), ("bogus=1", "bogus"),
    ("style_shares={a=0.8, b=0.5}", "style_shares"), ("accum_steps=1000", "accum_steps"),
    ("model.image_encoder.classifier_token=false", "semantic_dim"), ("model.image_encoder.grid=-1", "grid"),
    ("targets={seen_recall='high'}", "targets"), ("model.contrastive_mask='causal'", "contrastive_mask"),
    ("model.image_encoder.std=[0, 0.5, 0.5]", "std"), ("model.image_encoder.background=[300, 0, 0]", "background"),
]


@pytest.mark.parametrize("override,culprit", BAD_OVERRIDES)
def test_a_bad_value_is_one_line_naming_it(override, culprit):
    with pytest.raises(UserError) as refused:
        load_config(None, [override])
    message = str(refused.value)
    assert culprit in message and "\n" not in message, message


def test_every_problem_is_named_at_once():
    with pytest.raises(UserError) as refused:
        load_config(None, ["steps=abc", "lr=-1", "model.bogus=1"])
    assert all(name in str(refused.value) for name in ("steps", "lr", "model.bogus"))


def test_whole_numbers_for_numbers_are_fine():
    config = load_config(None, ["lr=1", "max_minutes=0", "model.fusion_gate=20"])
    assert config.lr == 1.0 and isinstance(config.lr, float) and isinstance(config.model["fusion_gate"], float)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_before_any_work():
    with pytest.raises(UserError, match="device = 'cuda'.*no CUDA"):
        load_config(None, ["device=cuda"])


def test_a_recipe_file_that_is_not_text_or_a_folder_is_one_line(tmp_path):
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes("# caf\xe9\nsteps = 3\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_config(latin1)
    with pytest.raises(UserError, match="a folder, not a recipe file"):
        load_config(tmp_path)


def test_the_shipped_recipes_pass():
    for name in ("default", "validation", "coco"):
        load_config(f"data/recipes/{name}.toml")


def test_a_validation_split_that_the_manifest_lacks_is_refused_before_encoding(tmp_path):
    from test_train import tiny_recipe
    import pandas as pd

    from mammut_search.train.loop import train

    frame = pd.DataFrame({"path": [str(tmp_path / f"{i}.png") for i in range(4)], "concept_id": list("abcd"),
                          "name": list("abcd"), "captions": [[c] for c in "abcd"],
                          "split": ["train", "train", "val", "val"]})  # no image files: encoding would fail
    with pytest.raises(UserError, match="val_splits: .* no split 'nosuch' .*held-out splits: val\\)"):
        train(tiny_recipe(tmp_path, val_splits="['nosuch']"), tmp_path / "run", frame=frame, progress=False)
