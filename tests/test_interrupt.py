"""Ctrl+C during `mammut index build`: the build stops at once with one line, exits non-zero, releases the index
lock and leaves no temporary files; the committed index is kept and the next run goes on."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from index_builder.build import BuildOptions, build_index, update_index
from mammut_search.index.store import IndexStore
from test_index_build import write_good_images

REPO = Path(__file__).resolve().parent.parent

# the real CLI, with the model slowed down so that the build is still encoding when Ctrl+C comes; Ctrl+C raises
# KeyboardInterrupt as in a terminal even where the tests run with SIGINT ignored (a background job inherits that)
SLOW_CLI = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from mammut_search.cli import main
    from mammut_search.inference import MammutModel
    features = MammutModel.image_features
    def slow_features(self, pixels):
        time.sleep(0.3)
        return features(self, pixels)
    MammutModel.image_features = slow_features
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1], ids=["inline", "worker-process"])
def test_ctrl_c_stops_a_build_with_one_line_and_leaves_the_index_usable(tmp_path, model, workers):
    checkpoint, root, out = tmp_path / "ckpt", tmp_path / "photos", tmp_path / "photos.index"
    model.save(checkpoint)
    write_good_images(root, 3)
    options = BuildOptions(batch_size=2, workers=0, progress=False)
    build_index([root], out, model, checkpoint_dir=checkpoint, options=options)
    write_good_images(root, 30, first_seed=100)  # new work for the build that will be interrupted

    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-c", SLOW_CLI, "index", "build", str(root), "--out", str(out), "--checkpoint",
               str(checkpoint), "--device", "cpu", "--batch-size", "2", "--shard-size", "2", "--workers",
               str(workers), "--quiet"]
    # a session of its own: Ctrl+C signals the whole foreground process group, decoding workers included
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".work" / "shard-00001.npz").exists():  # encoding is under way
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the build never wrote a shard"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)  # a hang, not a speed target: it stops well within this
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == 130, stderr  # interrupted, not run to its end (that exits 0)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted") and "run the same command again" in last, stderr
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "temporary files were left behind"
    assert IndexStore.open(out).manifest.count == 3  # the committed index, untouched

    updated = update_index(out, model, checkpoint_dir=checkpoint, options=options)  # the lock was released
    assert updated.manifest.count == 33 and updated.manifest.last_run.resumed >= 2  # finished shards kept
