"""Data-parallel index builds under `torchrun`: every rank encodes a disjoint share of the images into its
own work shards; rank 0 then commits one index from all shards through the ordinary (resumable) build.

    torchrun --nproc_per_node 4 $(which mammut) index build ~/Pictures --out photos.index --distributed

Across machines, start the same command on each node with torchrun's rendezvous options
(`--nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT`); the roots and --out must be on a file system
that every node sees at the same path (the shards are exchanged through it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import torch.distributed as dist

from mammut_search.index.store import IndexStore

from index_builder.build import BuildOptions, build_index, check_output_dir, plan_rows, run_encoder, work_identity
from index_builder.encode import EncodeJob
from index_builder.scan import scan_roots
from index_builder.shards import ShardWriter

log = logging.getLogger(__name__)


def rank_device() -> str | None:
    """This rank's GPU under torchrun (LOCAL_RANK), or None for the default device."""
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return None


@contextlib.contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """(rank, world size) from torchrun's environment, with a gloo/nccl group for the duration."""
    if dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    if "RANK" not in os.environ:
        yield 0, 1
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def pending_jobs(roots: list[str], out: Path, model, options: BuildOptions) -> list[EncodeJob]:
    """What a build of `roots` into `out` still has to encode: one job per distinct content, minus what the
    work shards of an earlier (interrupted or parallel) run already hold."""
    files = scan_roots(roots, progress=options.progress)
    _, new_rows = plan_rows(files, None, options.progress)
    done = ShardWriter(out, work_identity(model, options), shard_size=options.shard_size).load()
    jobs, seen = [], set(done)
    for row in new_rows:
        if "status" in row or row["sha256"] in seen:
            continue
        seen.add(row["sha256"])
        jobs.append(EncodeJob(row["sha256"], row["path"]))
    return jobs


def build_index_distributed(roots: Iterable[str | os.PathLike], out: str | os.PathLike, model, *,
                            checkpoint_dir: str | os.PathLike | None = None,
                            options: BuildOptions | None = None) -> IndexStore | None:
    """Build an index with every rank of the process group; returns the store on rank 0, None elsewhere.
    Without a process group (or with one rank) this is `build_index`."""
    options = options or BuildOptions()
    roots = [os.path.abspath(os.fsdecode(r)) for r in roots]
    out = Path(out)
    with process_group() as (rank, world):
        if world == 1:
            return build_index(roots, out, model, checkpoint_dir=checkpoint_dir, options=options)
        jobs: list = [None]
        if rank == 0:
            check_output_dir(out)
            out.mkdir(parents=True, exist_ok=True)
            jobs = [pending_jobs(roots, out, model, options)]  # also prepares the work directory
        dist.broadcast_object_list(jobs, src=0)
        mine = jobs[0][rank::world]
        log.info("rank %d of %d: encoding %d of %d images", rank, world, len(mine), len(jobs[0]))
        shards = ShardWriter(out, work_identity(model, options), shard_size=options.shard_size,
                             prefix=f"shard-rank{rank:03d}")
        rank_options = replace(options, progress=options.progress and rank == 0)
        for _ in run_encoder(model, mine, shards, rank_options):
            pass
        shards.flush()
        dist.barrier()  # every share is on disk
        store = None
        if rank == 0:  # everything is in the shards now: the ordinary build resumes from them and commits
            store = build_index(roots, out, model, checkpoint_dir=checkpoint_dir, options=options)
        dist.barrier()
        return store
