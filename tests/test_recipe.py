"""The recipe: defaults are the bundled checkpoint's recipe; TOML and overrides merge into it."""

from mammut_search.train.recipe import TrainConfig, load_config

REPO_RECIPE = "data/recipes/default.toml"
WHERE_IT_IS_WRITTEN = {"export", "threads"}  # where the result goes and how many threads: not what is trained


def test_default_toml_is_the_dataclass_default():
    from_file = load_config(REPO_RECIPE).to_dict()
    default = TrainConfig().to_dict()
    differing = {k for k in default if from_file[k] != default[k]}
    assert differing <= WHERE_IT_IS_WRITTEN, differing
