"""A data-parallel index build with 2 CPU processes (gloo) gives the same index as a single-process build."""

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from index_builder.build import BuildOptions, build_index
from index_builder.distributed import build_index_distributed
from mammut_search import load_model
from mammut_search.index.store import IndexStore
from mammut_search.testing import end_rank, tiny_model

OPTIONS = BuildOptions(batch_size=4, workers=0, shard_size=3, progress=False)


def make_images(root):
    rng = np.random.default_rng(0)
    for i in range(11):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        Image.new("RGB", (24 + i, 30), colour).save(root / f"img{i:02d}.png")
    (root / "copy.png").write_bytes((root / "img03.png").read_bytes())  # a duplicate: encoded once
    (root / "broken.jpg").write_text("not an image")


def worker(rank, world, init_file, checkpoint, images, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = load_model(checkpoint, device="cpu")
    build_index_distributed([images], out, model, checkpoint_dir=checkpoint, options=OPTIONS)
    end_rank()


def contents(index_dir):
    store = IndexStore.open(index_dir)
    items = store.items.sort_values("path").reset_index(drop=True)
    ok = items[items["status"] == "ok"]
    vectors = store.vectors.reconstruct(ok["id"].to_numpy(np.int64))
    tokens = store.tokens.rows(ok["id"].to_numpy(np.int64))  # the re-ranking tokens, in the same order
    return items[["path", "sha256", "status", "caption", "width", "height"]], np.concatenate(
        [vectors, tokens.reshape(len(ok), -1)], axis=1)


@pytest.mark.slow
def test_two_rank_build_equals_single_process_build(tmp_path):
    checkpoint, images = tmp_path / "ckpt", tmp_path / "images"
    images.mkdir()
    make_images(images)
    tiny_model(seed=0).save(checkpoint)
    build_index([images], tmp_path / "single.index", load_model(checkpoint, device="cpu"),
                checkpoint_dir=checkpoint, options=OPTIONS)
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(checkpoint), str(images), str(tmp_path / "dist.index")),
             nprocs=2, join=True)

    single_items, single_vectors = contents(tmp_path / "single.index")
    dist_items, dist_vectors = contents(tmp_path / "dist.index")
    assert len(single_items) == 13 and (single_items["status"] == "ok").sum() == 12
    assert single_items.equals(dist_items)
    assert np.allclose(single_vectors, dist_vectors, atol=1e-5)
    manifest = IndexStore.open(tmp_path / "dist.index").manifest
    assert manifest.last_run.encoded == 0  # rank 0 only merged: every image came from the ranks' shards
    assert not (tmp_path / "dist.index" / ".work").exists()
