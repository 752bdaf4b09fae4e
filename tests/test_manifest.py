"""The index manifest: damaged files refused clearly, old indexes still open, checksums catch flipped bytes,
the model's identity covers its config, and the one checkpoint policy."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mammut_search.errors import IndexStoreError
from mammut_search.index.manifest import Manifest, check_model, model_identity, read_manifest, resolve_checkpoint
from mammut_search.index.store import IndexStore, items_frame


def commit(directory, n: int = 3) -> IndexStore:
    from mammut_search.index.vectors.ann import build_vector_index

    rows = [dict(id=i, path=f"/photos/{i}.png", size=10, mtime=1.0, sha256=f"{i:064x}", width=1, height=1,
                 caption=f"caption {i}", status="ok") for i in range(n)]
    vectors = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_vector_index(vectors, np.arange(n, dtype=np.int64))
    return IndexStore.commit(directory, items_frame(rows), index, Manifest("a" * 64, 8, ["/photos"]))


def edit_manifest(directory, change) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", [
    lambda m: m.pop("checkpoint_sha256"),
    lambda m: m.update(roots="/photos"),
    lambda m: m.update(generation="seven"),
    lambda m: m.update(files=["index.faiss"]),
])
def test_a_damaged_manifest_is_a_clear_error_not_a_key_error(tmp_path, damage):
    commit(tmp_path / "i")
    edit_manifest(tmp_path / "i", damage)
    with pytest.raises(IndexStoreError, match=r"manifest.json: damaged manifest \('\w+'.*rebuild with"):
        IndexStore.open(tmp_path / "i")


def test_an_index_in_the_format_before_checksums_and_identities_still_opens(tmp_path):
    commit(tmp_path / "i")

    def old_format(m):
        for key in ("checksums", "model_identity", "last_run", "next_id", "model", "captions"):
            m.pop(key)
        m["created"] = None

    edit_manifest(tmp_path / "i", old_format)
    store = IndexStore.open(tmp_path / "i", model=SimpleNamespace(checkpoint_sha256="a" * 64))
    assert store.manifest.checksums == {} and store.manifest.model_identity == ""
    assert store.vectors.ntotal == 3 and store.item(2)["caption"] == "caption 2"
    with pytest.raises(IndexStoreError, match="bbbbbbbbbbbb"):  # the weights are still checked
        IndexStore.open(tmp_path / "i", model=SimpleNamespace(checkpoint_sha256="b" * 64))


def test_fields_of_a_newer_version_are_kept_when_read_and_written(tmp_path):
    commit(tmp_path / "i")
    edit_manifest(tmp_path / "i", lambda m: m.update(image_tokens={"version": 3}))
    manifest = read_manifest(tmp_path / "i")
    assert manifest.extra == {"image_tokens": {"version": 3}}
    assert manifest.to_dict()["image_tokens"] == {"version": 3}


@pytest.mark.parametrize("name", ["index.faiss", "items.parquet"])
def test_a_flipped_byte_in_a_data_file_is_refused_naming_the_file(tmp_path, name):
    commit(tmp_path / "i")
    path = tmp_path / "i" / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(IndexStoreError, match=f"{name}: damaged") as error:
        IndexStore.open(tmp_path / "i").vectors
    assert "rebuild with mammut index build /photos" in str(error.value)


def test_the_model_identity_covers_the_config_not_only_the_weights(tmp_path):
    from mammut_search.inference import load_model
    from mammut_search.testing import tiny_model

    checkpoint = tmp_path / "ckpt"
    tiny_model(seed=0).save(checkpoint)
    model = load_model(checkpoint, device="cpu")
    config = json.loads((checkpoint / "config.json").read_text())
    config["image_encoder"]["background"] = [0, 0, 0]  # same weights, transparent pixels made black
    (checkpoint / "config.json").write_text(json.dumps(config))
    edited = load_model(checkpoint, device="cpu")
    assert edited.checkpoint_sha256 == model.checkpoint_sha256
    assert model_identity(edited) != model_identity(model)

    config["training"] = {"note": "the training card does not change what the model does"}
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert model_identity(load_model(checkpoint, device="cpu")) == model_identity(edited)

    manifest = Manifest(model.checkpoint_sha256, model.latent_dim, ["/photos"], model_identity=model_identity(model))
    check_model(tmp_path, manifest, model)
    with pytest.raises(IndexStoreError, match="with another config.json"):
        check_model(tmp_path, manifest, edited)


def test_one_checkpoint_policy(tmp_path):
    manifest = Manifest("a" * 64, 8, ["/photos"], checkpoint_dir=str(tmp_path))
    assert resolve_checkpoint(manifest, "/given") == "/given"  # an explicit checkpoint wins
    assert resolve_checkpoint(manifest) == str(tmp_path)  # else the index's own
    gone = Manifest("a" * 64, 8, ["/photos"], checkpoint_dir=str(tmp_path / "moved"))
    assert resolve_checkpoint(gone) is None  # else the bundled one, which check_model accepts only if the same
    with pytest.raises(IndexStoreError, match=r"pass --checkpoint DIR \(.*moved is gone\)"):
        check_model(tmp_path, gone, SimpleNamespace(checkpoint_sha256="b" * 64))


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_commit(tmp_path):
    commit(tmp_path / "i")
    leftovers = [".index.faiss.gen2.tmp-123-456", ".items.parquet.gen2.tmp-123-456", ".manifest.json.tmp-99"]
    for name in leftovers:
        (tmp_path / "i" / name).write_bytes(b"half written")
    commit(tmp_path / "i")
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["index.faiss", "items.parquet", "keywords.sqlite", "manifest.json"]


def test_retired_model_settings_load_at_their_value_and_keep_old_indexes_matching(tmp_path):
    import hashlib

    from mammut_search.errors import CheckpointError
    from mammut_search.inference import load_model
    from mammut_search.model.config import RETIRED_SETTINGS
    from mammut_search.testing import tiny_model

    checkpoint = tmp_path / "ckpt"
    tiny_model(seed=0).save(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    model = load_model(checkpoint, device="cpu")
    # the identity an index recorded when these settings were still fields of the config
    then = {k: v for k, v in {**config, **RETIRED_SETTINGS}.items() if k != "training"}
    recorded = hashlib.sha256((model.checkpoint_sha256 + "\n" + json.dumps(then, sort_keys=True)).encode())
    assert model_identity(model) == recorded.hexdigest()

    (checkpoint / "config.json").write_text(json.dumps({**config, **RETIRED_SETTINGS}))
    assert model_identity(load_model(checkpoint, device="cpu")) == model_identity(model)
    (checkpoint / "config.json").write_text(json.dumps({**config, "contrastive_mask": "causal"}))
    with pytest.raises(CheckpointError, match="contrastive_mask = 'causal' is no longer supported") as refused:
        load_model(checkpoint, device="cpu")
    assert "\n" not in str(refused.value)
