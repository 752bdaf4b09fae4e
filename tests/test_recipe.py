"""The recipe: defaults are the bundled checkpoint's recipe; recipe files state what differs, over the recipe
they extend; TOML and overrides merge into it."""

import dataclasses

import pytest

from mammut_search.errors import UserError
from mammut_search.model.config import MammutConfig
from mammut_search.train.recipe import TrainConfig, load_config

REPO_RECIPE = "data/recipes/default.toml"
HOW_IT_RUNS = {"threads"}  # how many CPU threads the bundled run used: not what is trained


def test_default_toml_is_the_dataclass_default():
    from_file = load_config(REPO_RECIPE).to_dict()
    default = TrainConfig().to_dict()
    differing = {k for k in default if from_file[k] != default[k]}
    assert differing == HOW_IT_RUNS, differing
    assert from_file["model"] == {}  # the bundled model is MammutConfig's defaults


def test_the_bundled_checkpoint_is_the_default_model():
    from mammut_search.bundled import bundled_checkpoint_dir
    from mammut_search.model.checkpoint import read_config

    shipped = read_config(bundled_checkpoint_dir()).to_dict()
    default = MammutConfig(vocab_size=shipped["vocab_size"]).to_dict()
    set_by_training = {"vocab_size", "pad_id", "bos_id", "eos_id", "training"}
    assert {k: v for k, v in default.items() if k not in set_by_training} == \
        {k: v for k, v in shipped.items() if k not in set_by_training}


def test_a_recipe_states_only_what_differs_from_the_one_it_extends():
    validation = load_config("data/recipes/validation.toml").to_dict()
    default = load_config(REPO_RECIPE).to_dict()
    assert {k for k in default if validation[k] != default[k]} == {"val_styles", "exclude_styles"}
    coco = load_config("data/recipes/coco.toml")
    assert coco.model["image_encoder"]["trainable_blocks"] == 5 and coco.val_splits == ["val"]


def test_extends_is_relative_to_the_recipe_and_never_circular(tmp_path):
    (tmp_path / "base.toml").write_text('extends = "child.toml"\nsteps = 5\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\nlr = 0.1\n')
    with pytest.raises(UserError, match="extends"):
        load_config(tmp_path / "child.toml")
    (tmp_path / "base.toml").write_text("steps = 5\n")
    config = load_config(tmp_path / "child.toml")
    assert config.steps == 5 and config.lr == 0.1


def test_the_recipe_has_few_settings():
    assert len(dataclasses.fields(TrainConfig)) <= 35
