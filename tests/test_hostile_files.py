"""Files that fight back while they are indexed: pipes and devices named like images, files rewritten mid-build."""

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from index_builder.build import BuildOptions, build_index, update_index
from mammut_search.index.store import IndexStore
from test_index_build import noise_image, vectors_by_path, write_good_images

REPO = Path(__file__).resolve().parent.parent


def options(**overrides) -> BuildOptions:
    return BuildOptions(**{"batch_size": 4, "workers": 0, "shard_size": 4, "progress": False, **overrides})


BUILD_THEN_UPDATE = textwrap.dedent("""
    import sys
    from index_builder.build import BuildOptions, build_index, update_index
    from mammut_search.testing import tiny_model
    model = tiny_model()
    options = BuildOptions(batch_size=4, workers=0, progress=False)
    store = build_index([sys.argv[1]], sys.argv[2], model, options=options)
    update_index(sys.argv[2], model, options=options)
    update_index(sys.argv[2], model, options=options)  # the lock was released: a second update runs
    for path, status in zip(store.items["path"], store.items["status"]):
        print(path.rsplit("/", 1)[-1], status, sep="\\t")
""")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs POSIX FIFOs")
def test_fifo_and_device_named_like_images_are_skipped_not_read(tmp_path):
    root = tmp_path / "photos"
    write_good_images(root, 2)
    os.mkfifo(root / "pipe.jpg")  # opening it for reading would wait for a writer forever
    os.symlink("/dev/zero", root / "zero.png")  # reading it never ends
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    try:
        done = subprocess.run([sys.executable, "-c", BUILD_THEN_UPDATE, str(root), str(tmp_path / "i")],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("indexing a folder with a FIFO and a link to /dev/zero hung")
    assert done.returncode == 0, done.stderr
    statuses = dict(line.split("\t") for line in done.stdout.splitlines())
    assert statuses["img000.png"] == statuses["img001.png"] == "ok"
    assert "not a regular file" in statuses["pipe.jpg"]
    assert "not a regular file" in statuses["zero.png"]


def test_a_file_rewritten_mid_build_never_pairs_one_contents_hash_with_anothers_vector(tmp_path, model,
                                                                                       monkeypatch):
    import index_builder.build as build

    root = tmp_path / "photos"
    paths = write_good_images(root, 3)
    shutil.copy(paths[0], root / "zz-copy-of-img000.png")  # sorts after: the rewritten file is the one decoded
    hash_files = build.hash_files

    def hash_then_rewrite(files, **kwargs):  # the user saves another picture over img000 right after hashing
        hashes = hash_files(files, **kwargs)
        noise_image(99).save(paths[0])
        return hashes

    monkeypatch.setattr(build, "hash_files", hash_then_rewrite)
    store = build_index([root], tmp_path / "i", model, options=options())
    monkeypatch.setattr(build, "hash_files", hash_files)

    def consistent(store: IndexStore, *, current: bool) -> None:
        """Every indexed row's vector is the one a clean build gives the bytes its sha256 names; with `current`,
        those are also the bytes in the file now."""
        clean = build_index([root], tmp_path / f"clean{len(os.listdir(tmp_path))}", model, options=options())
        clean_vectors = vectors_by_path(clean)
        by_sha = {sha: clean_vectors[path] for sha, path in zip(clean.ok_items["sha256"], clean.ok_items["path"])}
        vectors = vectors_by_path(store)
        for row in store.ok_items.to_dict("records"):
            np.testing.assert_allclose(vectors[row["path"]], by_sha[row["sha256"]], atol=1e-6)
            if current:
                assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest(), row["path"]

    consistent(store, current=False)
    store = update_index(tmp_path / "i", model, options=options())  # the next update brings it up to date
    consistent(store, current=True)
    assert set(store.ok_items["path"]) == {str(p) for p in root.iterdir()}


def test_a_rewritten_file_that_was_decoded_is_skipped_as_changed(tmp_path, model, monkeypatch):
    import index_builder.build as build

    root = tmp_path / "photos"
    paths = write_good_images(root, 2)
    hash_files = build.hash_files

    def hash_then_rewrite(files, **kwargs):
        hashes = hash_files(files, **kwargs)
        noise_image(99).save(paths[0])
        return hashes

    monkeypatch.setattr(build, "hash_files", hash_then_rewrite)
    store = build_index([root], tmp_path / "i", model, options=options())
    row = store.items[store.items["path"] == str(paths[0])].iloc[0]
    assert row["status"] != "ok" and "changed" in row["status"] and row["sha256"] == ""


def test_an_indexed_file_swapped_for_a_link_to_another_image_is_not_served(tmp_path, model):
    from mammut_search.errors import UserError
    from mammut_search.search import Searcher

    root = tmp_path / "photos"
    paths = write_good_images(root, 3)
    private = tmp_path / "private.png"
    noise_image(77).save(private)
    store = build_index([root], tmp_path / "i", model, options=options())
    searcher = Searcher(store, model)
    ids = dict(zip(store.items["path"], store.items["id"]))

    os.utime(paths[1], (1e9, 1e9))  # touched: same bytes, another mtime -> still served
    assert searcher.load_item_image(ids[str(paths[1])]).size == (24, 20)
    paths[0].unlink()
    os.symlink(private, paths[0])
    with pytest.raises(UserError, match="changed since it was indexed"):
        searcher.load_item_image(ids[str(paths[0])])
    from ui.app import gallery

    shown = gallery(searcher, searcher.similar(ids[str(paths[2])], 2))
    assert any("not shown" in caption for _, caption in shown)


def test_system_folders_are_never_entered_and_followed_links_are_listed(tmp_path, model, capsys):
    from mammut_search.cli import main

    root = tmp_path / "photos"
    write_good_images(root, 1)
    elsewhere = write_good_images(tmp_path / "elsewhere", 1, first_seed=5)[0].parent
    os.symlink(elsewhere, root / "more")
    for system in ("/proc", "/sys", "/dev"):
        if os.path.isdir(system):
            os.symlink(system, root / system.strip("/"))
    store = build_index([root], tmp_path / "i", model, options=options())
    assert sorted(os.path.relpath(p, root) for p in store.items["path"]) == ["img000.png", "more/img005.png"]
    assert store.manifest.linked_folders == [f"{root / 'more'} -> {elsewhere}"]
    assert main(["index", "info", str(tmp_path / "i")]) == 0
    assert f"{root / 'more'} -> {elsewhere}" in capsys.readouterr().out
