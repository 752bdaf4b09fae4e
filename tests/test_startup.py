"""Commands that need no model start without importing torch (or the other heavy libraries they do not use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search_testkit import build_test_index, one_torch_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
# runs the CLI in-process and reports, whatever the exit, which heavy modules it imported
PROBE = """
import json, sys
from mammut_search.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "faiss", "gradio") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def run_cli(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    return build_test_index(tmp_path_factory.mktemp("startup"), count=6)[0]


@pytest.mark.parametrize("argv", [
    ["--help"], [], ["--version"], ["index", "--help"], ["search", "--help"],
    ["search", "a red apple"],  # no --index: an argument error
    ["search", "--index"], ["index", "build"], ["caption"], ["eval"], ["ui"], ["demo", "--help"], ["nonsense"],
])
def test_help_and_argument_errors_do_not_import_torch(argv):
    report = run_cli(*argv)
    assert report["heavy"] == [], argv


def test_index_info_does_not_import_torch(index):
    report = run_cli("index", "info", str(index))
    assert report == {"code": 0, "heavy": []}


def test_the_package_exports_lazily():
    code = ("import sys, mammut_search; assert 'torch' not in sys.modules; "
            "from mammut_search import load_model, MammutConfig, UserError; "
            "assert 'torch' in sys.modules and callable(load_model)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   timeout=120)
