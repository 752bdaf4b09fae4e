"""Index builder: odd files, duplicates, a build killed with SIGKILL and resumed, incremental updates, the CLI."""

import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index_builder.build import BuildOptions, build_index, update_index
from mammut_search.errors import IndexStoreError, UserError
from mammut_search.index.store import IndexStore

REPO = Path(__file__).resolve().parent.parent
NON_UTF8_NAME = b"caf\xe9.png"  # Latin-1 bytes: not valid UTF-8


def options(**overrides) -> BuildOptions:
    return BuildOptions(**{"batch_size": 4, "workers": 1, "shard_size": 4, "progress": False, **overrides})


def noise_image(seed: int, size=(24, 20), mode="RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_good_images(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{first_seed + i:03d}.png"
        noise_image(first_seed + i).save(path)
        paths.append(path)
    return paths


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height (a decompression bomb)."""
    import io

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture
def odd_corpus(tmp_path):
    """One fixture per hazard; returns (root, paths expected indexed, paths expected skipped)."""
    root = tmp_path / "photos"
    good = write_good_images(root / "good", 3)
    (root / "copies").mkdir()
    duplicate = root / "copies" / "same-as-img000.png"
    shutil.copy(good[0], duplicate)

    cmyk = root / "cmyk.jpg"
    noise_image(10).convert("CMYK").save(cmyk)
    sixteen = root / "sixteen.png"
    Image.fromarray((np.arange(24 * 20).reshape(20, 24) * 100).astype(np.uint16)).save(sixteen)
    palette = root / "palette_alpha.png"
    p = noise_image(11).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    p.info["transparency"] = 0
    p.save(palette, transparency=0)
    animated = root / "animated.gif"
    noise_image(12).save(animated, save_all=True, append_images=[noise_image(13)], duration=100, loop=0)
    rotated = root / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    noise_image(14, size=(40, 20)).save(rotated, exif=exif)
    inside_dir = root / "folder.jpg" / "inside.png"  # a directory with an image name is walked into
    inside_dir.parent.mkdir()
    noise_image(15).save(inside_dir)
    non_utf8 = Path(os.fsdecode(os.path.join(os.fsencode(root), NON_UTF8_NAME)))
    noise_image(16).save(non_utf8, format="PNG")

    zero = root / "zero.jpg"
    zero.write_bytes(b"")
    text = root / "notes.jpg"
    text.write_text("this is not an image\n")
    truncated = root / "truncated.png"
    truncated.write_bytes((root / "good" / "img001.png").read_bytes()[:60])
    bomb = root / "bomb.png"
    bomb.write_bytes(png_with_size(60000, 60000))
    os.symlink("..", root / "good" / "loop")  # a symlink loop back up the tree
    (root / "readme.txt").write_text("not an image extension, not a candidate")

    indexed = [*good, duplicate, cmyk, sixteen, palette, animated, rotated, inside_dir, non_utf8]
    skipped = [zero, text, truncated, bomb]
    return root, [str(p) for p in indexed], [str(p) for p in skipped]


def vectors_by_path(store: IndexStore) -> dict[str, np.ndarray]:
    ok = store.ok_items
    return dict(zip(ok["path"], store.vectors.reconstruct(ok["id"].to_numpy(np.int64))))


def content(store: IndexStore) -> dict[str, tuple]:
    """What an index says about each path, ids aside."""
    rows = store.items.to_dict("records")
    return {r["path"]: (r["sha256"], r["status"], r["caption"], r["width"], r["height"]) for r in rows}


def test_odd_corpus_indexes_every_valid_image_once_and_skips_the_rest_with_reasons(odd_corpus, tmp_path, model):
    root, indexed, skipped = odd_corpus
    store = build_index([root], tmp_path / "photos.index", model, options=options())

    assert sorted(store.ok_items["path"]) == sorted(indexed)  # each valid image exactly once, dupes both
    assert store.items["id"].is_unique
    bad = store.items[store.items["status"] != "ok"]
    assert sorted(bad["path"]) == sorted(skipped)
    assert all(reason.strip() for reason in bad["status"])
    assert store.vectors.ntotal == len(indexed)

    reopened = IndexStore.open(tmp_path / "photos.index", model=model)
    non_utf8 = [p for p in reopened.items["path"] if os.fsencode(p).endswith(NON_UTF8_NAME)]
    assert len(non_utf8) == 1 and os.path.exists(non_utf8[0])  # the exact name survives the parquet round trip
    rotated = reopened.items[reopened.items["path"].str.endswith("rotated.jpg")].iloc[0]
    assert (rotated["width"], rotated["height"]) == (20, 40)  # EXIF orientation applied
    vectors = vectors_by_path(reopened)
    original, copy = indexed[0], str(root / "copies" / "same-as-img000.png")
    assert np.array_equal(vectors[original], vectors[copy])


def test_duplicates_are_encoded_once_and_latents_match_the_model(tmp_path, model):
    from mammut_search.images import load_image

    paths = write_good_images(tmp_path / "a", 5)
    shutil.copy(paths[0], tmp_path / "a" / "dup1.png")
    shutil.copy(paths[0], tmp_path / "a" / "dup2.png")
    store = build_index([tmp_path / "a"], tmp_path / "i", model, options=options())

    assert store.manifest.last_run.encoded == 5
    assert store.manifest.count == 7
    vectors = vectors_by_path(store)
    expected = model.encode_image([load_image(p) for p in paths]).numpy()
    got = np.stack([vectors[str(p)] for p in paths])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    scores, ids = store.vectors.search(expected[:1], 3)
    found = {store.path_of(i) for i in ids[0]}
    assert found == {str(paths[0]), str(tmp_path / "a" / "dup1.png"), str(tmp_path / "a" / "dup2.png")}


def test_captions_come_from_the_same_pass_and_can_be_turned_off(tmp_path, model):
    from mammut_search.images import load_image

    paths = write_good_images(tmp_path / "a", 3)
    with_captions = build_index([tmp_path / "a"], tmp_path / "c", model, options=options())
    expected = model.caption([load_image(p) for p in paths], beam_width=1)
    assert list(with_captions.ok_items.sort_values("path")["caption"]) == expected
    without = build_index([tmp_path / "a"], tmp_path / "n", model, options=options(captions=False))
    assert set(without.items["caption"]) == {""}
    assert without.manifest.captions is False


def test_decoding_in_the_main_process_gives_the_same_index(tmp_path, model):
    write_good_images(tmp_path / "a", 6)
    workers = build_index([tmp_path / "a"], tmp_path / "w", model, options=options(workers=2))
    inline = build_index([tmp_path / "a"], tmp_path / "m", model, options=options(workers=0))
    assert content(workers) == content(inline)


def test_the_model_starts_on_small_batches_that_grow_to_the_batch_size(tmp_path, model, monkeypatch):
    write_good_images(tmp_path / "a", 30)
    seen = []
    encode = model.image_features
    monkeypatch.setattr(model, "image_features", lambda pixels: seen.append(len(pixels)) or encode(pixels))
    store = build_index([tmp_path / "a"], tmp_path / "i", model, options=options(batch_size=8))
    assert seen == [1, 2, 4, 8, 8, 7]
    assert len(store.ok_items) == 30


def test_a_build_encodes_the_calibration_words_once_and_again_after_its_weights_change(tmp_path, model,
                                                                                     monkeypatch):
    import torch

    from mammut_search import relevance

    write_good_images(tmp_path / "a", 3)
    texts = []
    encode_text = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda batch: texts.append(len(batch)) or encode_text(batch))
    words = len(relevance.calibration_words(model.tokenizer))
    first = build_index([tmp_path / "a"], tmp_path / "i", model, options=options())
    build_index([tmp_path / "a"], tmp_path / "j", model, options=options())
    assert sum(texts) == words  # the second build used the latents of the first
    with torch.no_grad():
        next(model.net.parameters()).mul_(0.5)
    build_index([tmp_path / "a"], tmp_path / "k", model, options=options())
    assert sum(texts) == 2 * words
    assert first.manifest.relevance["queries"] == words


def test_large_jpegs_decoded_at_reduced_scale_keep_their_full_size_and_nearly_their_latents(tmp_path, model):
    from mammut_search.images import load_image

    small = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((1200, 900), Image.Resampling.BICUBIC)
    (tmp_path / "a").mkdir()
    photo.save(tmp_path / "a" / "photo.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90°: 900 wide, 1200 high
    photo.save(tmp_path / "a" / "turned.jpg", quality=90, exif=exif)
    store = build_index([tmp_path / "a"], tmp_path / "i", model, options=options(workers=0))

    sizes = {os.path.basename(r["path"]): (r["width"], r["height"]) for r in store.items.to_dict("records")}
    assert sizes == {"photo.jpg": (1200, 900), "turned.jpg": (900, 1200)}
    vectors = vectors_by_path(store)
    paths = sorted(vectors)
    expected = model.encode_image([load_image(p) for p in paths]).numpy()  # decoded at full size
    cosines = (np.stack([vectors[p] for p in paths]) * expected).sum(axis=1)
    assert cosines.min() > 0.99, cosines


KILLED_BUILD = textwrap.dedent("""
    import sys, time
    import torch
    from index_builder.build import BuildOptions, build_index
    from mammut_search import load_model

    model = load_model(sys.argv[1], device="cpu")
    slow = model.image_features
    def image_features(pixels):  # slow the model down so the test can kill the build half-way
        time.sleep(0.25)
        return slow(pixels)
    model.image_features = image_features
    build_index([sys.argv[2]], sys.argv[3], model, checkpoint_dir=sys.argv[1],
                options=BuildOptions(batch_size=2, workers=1, shard_size=2, progress=False))
""")


def kill_build_after_first_shard(checkpoint: Path, root: Path, out: Path) -> None:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(checkpoint), str(root), str(out)],
                               env=env, cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    shard = out / ".work" / "shard-00001.npz"
    while not shard.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the build never wrote a shard"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


@pytest.mark.slow
@pytest.mark.parametrize("had_index", [False, True], ids=["fresh", "over-an-older-index"])
def test_build_killed_with_sigkill_resumes_without_reencoding(tmp_path, model, had_index):
    from mammut_search import load_model

    checkpoint = tmp_path / "ckpt"
    model.save(checkpoint)
    model = load_model(checkpoint, device="cpu")
    root = tmp_path / "photos"
    paths = write_good_images(root, 16)
    shutil.copy(paths[3], root / "dup.png")
    (root / "broken.jpg").write_text("no image")
    out = tmp_path / "photos.index"
    if had_index:
        build_index([paths[0]], out, model, checkpoint_dir=checkpoint, options=options())

    kill_build_after_first_shard(checkpoint, root, out)

    if had_index:  # the last complete index is still there, intact
        assert IndexStore.open(out).manifest.count == 1
    else:
        with pytest.raises(IndexStoreError, match="run the same build command again"):
            IndexStore.open(out)
    resumed = build_index([root], out, model, checkpoint_dir=checkpoint, options=options())
    run = resumed.manifest.last_run
    assert run.resumed >= 1  # the finished shard was not encoded again
    # 16 distinct images, each encoded once in all; the older index's one is kept from it
    assert run.encoded + run.resumed == (15 if had_index else 16)
    assert not (out / ".work").exists()

    uninterrupted = build_index([root], tmp_path / "reference.index", model, options=options())
    assert content(resumed) == content(uninterrupted)
    assert resumed.items["id"].is_unique and len(resumed.items) == 18
    got, want = vectors_by_path(resumed), vectors_by_path(uninterrupted)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_allclose(got[path], want[path], atol=1e-5)


def test_update_matches_a_fresh_build_and_keeps_untouched_vectors_bit_identical(tmp_path, model):
    root = tmp_path / "photos"
    paths = write_good_images(root, 8)
    (root / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "photos.index"
    before = build_index([root], out, model, options=options())
    old_vectors = vectors_by_path(before)
    old_ids = dict(zip(before.items["path"], before.items["id"]))

    write_good_images(root / "new", 2, first_seed=100)  # added
    noise_image(200).save(paths[1])  # modified
    os.utime(paths[1], (1, 1))
    paths[2].unlink()  # deleted
    shutil.move(paths[3], root / "moved.png")  # moved: same bytes, new path
    os.utime(paths[4], None)  # touched: new mtime, same bytes

    updated = update_index(out, model, options=options())
    run = updated.manifest.last_run
    assert run.encoded == 3  # two new images and the modified one; the moved file's vector is reused
    assert run.removed == 3  # deleted, modified (gets a new id), moved away

    fresh = build_index([root], tmp_path / "fresh.index", model, options=options())
    assert content(updated) == content(fresh)
    new_vectors, fresh_vectors = vectors_by_path(updated), vectors_by_path(fresh)
    for path in fresh_vectors:
        np.testing.assert_allclose(new_vectors[path], fresh_vectors[path], atol=1e-5)
    untouched = [str(p) for p in (paths[0], *paths[4:])]
    new_ids = dict(zip(updated.items["path"], updated.items["id"]))
    for path in untouched:
        assert new_ids[path] == old_ids[path]
        assert np.array_equal(new_vectors[path], old_vectors[path])
    assert np.array_equal(new_vectors[str(root / "moved.png")], old_vectors[str(paths[3])])
    assert updated.items["id"].is_unique
    assert new_ids[str(paths[1])] not in old_ids.values()  # a changed file gets a fresh id

    again = update_index(out, model, options=options())
    assert again.manifest.last_run.encoded == 0
    assert content(again) == content(updated)


def test_building_an_existing_index_of_an_unchanged_folder_encodes_nothing(tmp_path, model):
    from mammut_search import load_model
    from mammut_search.testing import tiny_model

    model.save(tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt", device="cpu")
    tiny_model(seed=5).save(tmp_path / "other")
    other = load_model(tmp_path / "other", device="cpu")  # another model's index lends nothing
    root = tmp_path / "photos"
    write_good_images(root, 5)
    out = tmp_path / "photos.index"
    first = build_index([root], out, model, options=options())
    again = build_index([root], out, model, options=options())
    assert (again.manifest.last_run.encoded, again.manifest.last_run.reused) == (0, 0)  # unchanged rows kept
    assert content(again) == content(first) and again.manifest.generation == 2
    for path, vector in vectors_by_path(first).items():
        assert np.array_equal(vectors_by_path(again)[path], vector)

    write_good_images(root, 1, first_seed=9)
    grown = build_index([root], out, model, options=options())
    assert grown.manifest.last_run.encoded == 1 and grown.manifest.count == 6

    assert build_index([root], out, other, options=options()).manifest.last_run.encoded == 6
    without = build_index([root], out, other, options=options(captions=False))  # nor do other captions
    assert without.manifest.last_run.encoded == 6


def test_files_with_the_same_bytes_get_their_own_skip_reason(tmp_path, model, monkeypatch):
    import index_builder.build as build_module

    root = tmp_path / "photos"
    first, copy = root / "a.png", root / "b.png"
    root.mkdir()
    noise_image(0).save(first)
    shutil.copy(first, copy)
    real_hash_files = build_module.hash_files

    def rewrite_one_after_hashing(paths, **kwargs):
        hashes = real_hash_files(paths, **kwargs)
        noise_image(1).save(paths[0], format="PNG")  # its bytes change before it is decoded
        return hashes

    monkeypatch.setattr(build_module, "hash_files", rewrite_one_after_hashing)
    store = build_index([root], tmp_path / "i", model, options=options())
    status = dict(zip(store.items["path"], store.items["status"]))
    changed = next(p for p, s in status.items() if s != "ok")  # the rewritten one, whichever was first
    assert "changed while it was being indexed" in status[changed]
    assert [s for p, s in status.items() if p != changed] == ["ok"]  # its former copy is indexed


def test_update_refuses_an_index_made_by_another_checkpoint(tmp_path, model):
    from mammut_search.testing import tiny_model

    write_good_images(tmp_path / "a", 2)
    model.save(tmp_path / "ckpt-a")
    build_index([tmp_path / "a"], tmp_path / "i", model, options=options())
    other = tiny_model(seed=1)
    other.save(tmp_path / "ckpt-b")
    with pytest.raises(IndexStoreError, match="rebuild with mammut index build"):
        update_index(tmp_path / "i", other, options=options())


def test_build_refuses_to_write_into_a_folder_that_is_not_an_index(tmp_path, model):
    photos = tmp_path / "photos"
    write_good_images(photos, 1)
    with pytest.raises(UserError, match="not an index directory"):
        build_index([photos], photos, model, options=options())
    with pytest.raises(UserError, match="cannot scan"):
        build_index([tmp_path / "missing"], tmp_path / "i", model, options=options())


def test_cli_build_info_update(odd_corpus, tmp_path, model, capsys):
    from mammut_search.cli import main

    root, indexed, skipped = odd_corpus
    checkpoint = tmp_path / "ckpt"
    model.save(checkpoint)
    out = tmp_path / "photos.index"
    assert main(["index", "build", str(root), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--workers", "1", "--batch-size", "4", "--quiet"]) == 0
    assert f"{len(indexed)} images indexed, {len(skipped)} files skipped" in capsys.readouterr().out

    assert main(["index", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert f"{len(indexed)} indexed, {len(skipped)} files skipped" in info
    for path in skipped:
        assert path in info  # each skipped file is listed with its reason
    assert "zero.jpg: " in info and model.checkpoint_sha256[:12] in info
    assert "search:" in info and "CPU build" in info  # which device and FAISS build serve the vectors
    from mammut_search.index.manifest import summary_rows
    from mammut_search.index.store import IndexStore
    from mammut_search.index.vectors import search_device

    store = IndexStore.open(out)  # the same rows as the UI's about table and Searcher.info
    for label, value in summary_rows(out, store.manifest, search=search_device()):
        assert f"{label}:" in info and value in info

    write_good_images(root / "more", 1, first_seed=50)
    assert main(["index", "update", str(out), "--workers", "0", "--quiet"]) == 0  # checkpoint from the manifest
    assert "1 encoded" in capsys.readouterr().out

    assert main(["index", "info", str(tmp_path / "nowhere")]) == 2
    assert "no such index directory" in capsys.readouterr().err


def test_scan_follows_symlinks_once_and_keeps_non_utf8_names(tmp_path):
    from index_builder.scan import scan_roots

    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.JPG").write_bytes(b"1")
    (root / "a" / "y.png").write_bytes(b"2")
    (root / "a" / "z.txt").write_bytes(b"3")
    os.symlink(root, root / "a" / "b" / "up")  # loop
    os.symlink(root / "a" / "b", root / "alias")  # a second way into b
    odd = os.path.join(os.fsencode(root), b"\xff\xfe.png")
    with open(odd, "wb") as f:
        f.write(b"4")

    found = scan_roots([root, root / "a"])  # overlapping roots too
    names = sorted(os.path.relpath(f.path, root) for f in found)
    assert len(names) == 3 and len({os.path.realpath(f.path) for f in found}) == 3
    assert os.path.join("a", "y.png") in names
    assert any(n.endswith("x.JPG") for n in names)  # extensions match case-insensitively
    assert os.fsdecode(odd) in [f.path for f in found]
    assert found == sorted(found, key=lambda f: f.path)


def test_shards_round_trip_and_are_discarded_for_another_model(tmp_path):
    from index_builder.encode import Encoded
    from index_builder.shards import ShardWriter

    identity = {"checkpoint_sha256": "abc", "latent_dim": 3, "captions": True}
    writer = ShardWriter(tmp_path, identity, shard_size=2)
    results = [Encoded("s1", "ok", 4, 5, "a cat", np.array([1, 2, 3], np.float32)),
               Encoded("s2", os.fsdecode(b"bad \xff name"), 0, 0, "", None),
               Encoded("s3", "ok", 6, 7, "", np.array([4, 5, 6], np.float32))]
    writer.add(results)  # writes one shard of 3 (the buffer passed 2)
    loaded = ShardWriter(tmp_path, identity).load()
    assert loaded.keys() == {"s1", "s2", "s3"}
    assert loaded["s2"].status == results[1].status and loaded["s2"].latent is None
    assert np.array_equal(loaded["s3"].latent, results[2].latent) and loaded["s1"].caption == "a cat"
    assert ShardWriter(tmp_path, {**identity, "checkpoint_sha256": "other"}).load() == {}


def test_an_empty_folder_gives_an_empty_index_that_updates(tmp_path, model):
    (tmp_path / "empty").mkdir()
    store = build_index([tmp_path / "empty"], tmp_path / "i", model, options=options())
    assert store.manifest.count == 0 and len(store.items) == 0
    write_good_images(tmp_path / "empty", 2)
    updated = update_index(tmp_path / "i", model, options=options())
    assert updated.manifest.count == 2 and updated.vectors.ntotal == 2
