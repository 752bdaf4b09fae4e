"""The recipe: defaults are the bundled checkpoint's recipe; TOML and overrides merge into it."""

from mammut_search.train.recipe import TrainConfig, load_config

REPO_RECIPE = "data/recipes/default.toml"
WHERE_IT_IS_WRITTEN = {"export", "threads"}  # where the result goes and how many threads: not what is trained


def test_default_toml_is_the_dataclass_default():
    from_file = load_config(REPO_RECIPE).to_dict()
    default = TrainConfig().to_dict()
    differing = {k for k in default if from_file[k] != default[k]}
    assert differing <= WHERE_IT_IS_WRITTEN, differing


def test_quality_targets_come_from_the_recipe():
    from mammut_search.train.card import target_check

    card = {"validation": {"val": {"t2i_R@1": 0.55, "i2t_R@1": 0.55, "t2i_sentence_R@1": 0.54}}}
    default = target_check(card, TrainConfig().targets)
    stricter = target_check(card, {**TrainConfig().targets, "seen_recall": 0.6})
    assert default["seen t2i R@1"]["met"] and not stricter["seen t2i R@1"]["met"]
    assert stricter["seen t2i R@1"]["target"] == ">= 0.60"
