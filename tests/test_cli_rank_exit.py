"""A `mammut` command run as a torchrun rank (WORLD_SIZE > 1) leaves without interpreter finalization, where
gloo's threads can abort a finished rank: its exit status and everything it printed still come out whole."""

import os
import subprocess
import sys
from pathlib import Path

from search_testkit import build_test_index

REPO = Path(__file__).resolve().parent.parent
# buffered output, as under torchrun by default: what a rank printed must be flushed before it leaves
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(REPO)}


def run_as_rank(*args: str) -> subprocess.CompletedProcess:
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "mammut_search.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_rank_keeps_its_exit_status_and_its_output(tmp_path):
    index, _ = build_test_index(tmp_path, count=6)
    alone = subprocess.run([sys.executable, "-m", "mammut_search.cli", "index", "info", str(index)], cwd=REPO,
                           env=ENV, capture_output=True, text=True,
                           timeout=300, check=False)
    rank = run_as_rank("index", "info", str(index))
    assert rank.returncode == alone.returncode == 0
    assert rank.stdout == alone.stdout and "6" in rank.stdout  # piped stdout is flushed before leaving
    missing = run_as_rank("index", "info", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.startswith("error:")
