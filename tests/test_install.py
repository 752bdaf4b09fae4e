"""Installed as a package: the wheel carries the bundled checkpoint and demo and finds them where pip puts them;
`mammut --version`; `mammut demo`'s index, built once into the user's cache and rebuilt when its inputs change."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from index_builder.demo import demo_index
from mammut_search.bundled import bundled_checkpoint_dir, demo_dir
from mammut_search.cli import main
from mammut_search.errors import UserError
from mammut_search.index.manifest import MANIFEST_FILE
from search_testkit import one_torch_thread, write_collection  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# run in an installed copy: where the package and its bundled files resolve, and the default model's identity
PROBE = """
import json, mammut_search
from mammut_search.bundled import bundled_checkpoint_dir, demo_dir
from mammut_search.inference import load_model
print(json.dumps({"package": mammut_search.__file__, "checkpoint": str(bundled_checkpoint_dir()),
                  "demo": str(demo_dir()), "sha256": load_model(device="cpu").checkpoint_sha256}))
"""


def test_the_bundled_checkpoint_and_demo_resolve_inside_the_package():
    package = ROOT / "mammut_search"
    assert bundled_checkpoint_dir().is_relative_to(package) and demo_dir().is_relative_to(package)
    assert all((bundled_checkpoint_dir() / name).is_file() for name in CHECKPOINT_FILES)
    with open(demo_dir() / "captions.csv", newline="") as f:
        images = [row["image"] for row in csv.DictReader(f)]
    assert len(images) >= 100 and all((demo_dir() / image).is_file() for image in images)


@pytest.mark.slow
def test_the_wheel_carries_the_checkpoint_and_demo_and_finds_them_once_installed(tmp_path):
    """Built as CI builds it (sdist, then the wheel from the sdist), installed without -e, run from elsewhere."""
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("mammut_search-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = "mammut_search/bundled/"
    assert {f"{bundled}checkpoint/{name}" for name in CHECKPOINT_FILES} <= names
    demo_files = {f"{bundled}demo/{p.relative_to(demo_dir()).as_posix()}" for p in demo_dir().rglob("*") if p.is_file()}
    assert demo_files and demo_files <= names
    assert "mammut_search/model/imagenet_classes.txt" in names  # the class names captions may use
    assert not any(name.startswith("data/") for name in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    installed = site / "mammut_search"
    assert Path(found["package"]).is_relative_to(installed)  # the installed copy, not this checkout
    assert Path(found["checkpoint"]) == installed / "bundled" / "checkpoint"
    assert Path(found["demo"]) == installed / "bundled" / "demo"
    from mammut_search.model.checkpoint import file_sha256

    assert found["sha256"] == file_sha256(bundled_checkpoint_dir() / "model.safetensors")


def test_mammut_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"mammut-search {importlib.metadata.version('mammut-search')}"


@pytest.fixture
def demo_inputs(tmp_path, model):
    """A tiny saved checkpoint and four images standing in for the bundled ones."""
    checkpoint, images = tmp_path / "checkpoint", tmp_path / "images"
    model.save(checkpoint)
    write_collection(images, 4)
    return checkpoint, images


def manifest_of(index: Path) -> tuple[dict, int]:
    path = index / MANIFEST_FILE
    return json.loads(path.read_text()), path.stat().st_mtime_ns


def test_the_demo_index_is_built_once_then_reused(tmp_path, demo_inputs):
    checkpoint, images = demo_inputs
    index = demo_index(tmp_path / "cache", checkpoint_dir=checkpoint, images_dir=images, progress=False)
    manifest, written = manifest_of(index)
    assert index.is_relative_to(tmp_path / "cache") and manifest["count"] == 4

    again = demo_index(tmp_path / "cache", checkpoint_dir=checkpoint, images_dir=images, progress=False)
    assert again == index and manifest_of(index)[1] == written  # not written again


def test_the_demo_index_is_rebuilt_when_the_images_or_the_checkpoint_change(tmp_path, demo_inputs):
    from mammut_search.testing import tiny_model

    checkpoint, images = demo_inputs
    cache = tmp_path / "cache"
    index = demo_index(cache, checkpoint_dir=checkpoint, images_dir=images, progress=False)

    write_collection(tmp_path / "more", 5)
    os.replace(tmp_path / "more" / "004-purple-circle.png", images / "004-purple-circle.png")  # a fifth image
    demo_index(cache, checkpoint_dir=checkpoint, images_dir=images, progress=False)
    assert manifest_of(index)[0]["count"] == 5

    new_sha = tiny_model(seed=1).save(checkpoint)
    demo_index(cache, checkpoint_dir=checkpoint, images_dir=images, progress=False)
    assert manifest_of(index)[0]["checkpoint_sha256"] == new_sha


def test_the_demo_index_goes_under_xdg_cache_home(tmp_path, monkeypatch, demo_inputs):
    checkpoint, images = demo_inputs
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    index = demo_index(checkpoint_dir=checkpoint, images_dir=images, progress=False)
    assert index == tmp_path / "xdg" / "mammut-search" / "demo.index" and (index / MANIFEST_FILE).is_file()


def test_without_faiss_index_build_stops_at_once_naming_the_command_to_run(tmp_path, monkeypatch, capsys,
                                                                           demo_inputs):
    """A plain `pip install mammut-search` has no FAISS: the build says what to install before encoding."""
    checkpoint, images = demo_inputs
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if neither faiss-cpu nor faiss-gpu-cu12 were installed
    code = main(["index", "build", str(images), "--out", str(tmp_path / "i"), "--checkpoint", str(checkpoint),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'mammut-search[cpu]'" in err.splitlines()[0]
    assert "encoded" not in err and not (tmp_path / "i").exists()


def test_ci_runs_every_test_and_the_readme_says_so():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    makefile = (ROOT / "Makefile").read_text()
    recipe = {target: re.search(rf"^{target}: setup\n\t(.*)$", makefile, re.M).group(1)
              for target in ("test", "test-all")}
    assert recipe["test"].endswith('pytest -q -m "not slow"') and recipe["test-all"].endswith("pytest -q")
    assert "make test-all" in ci and "bash .ci/wheel_smoke.sh" in ci
    readme = (ROOT / "README.md").read_text().splitlines()
    assert any("make test-all" in line and "what CI runs" in line for line in readme)


def test_a_cache_folder_that_cannot_be_made_is_an_error_naming_it(tmp_path, monkeypatch, demo_inputs):
    (tmp_path / "xdg").write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    checkpoint, images = demo_inputs
    with pytest.raises(UserError, match=r"xdg/mammut-search: cannot create the demo's cache folder.*XDG_CACHE_HOME"):
        demo_index(checkpoint_dir=checkpoint, images_dir=images, progress=False)
