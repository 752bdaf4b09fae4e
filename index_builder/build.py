"""Build and update an index directory: scan, hash, encode what is new (resumably), commit through the store.

One routine serves both: `build_index` starts from nothing, `update_index` starts from the committed index
and re-encodes only files that are new or whose bytes changed (size/mtime first, then sha256).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from mammut_search.errors import IndexStoreError, UserError
from mammut_search.inference import auto_batch_size
from mammut_search.model.config import CAPTION_BEAM_WIDTH
from mammut_search.index.manifest import MANIFEST_FILE, Manifest, RunStats, model_identity
from mammut_search.index.store import OK, IndexStore, items_frame
from mammut_search.index.tokens import TOKENS_VERSION, describe, tokens_writer
from mammut_search.index.vectors import require_faiss
from mammut_search.relevance import calibration_latents

from index_builder.encode import CHANGED, Encoded, EncodeJob, encode
from index_builder.scan import FoundFile, hash_files, scan_roots
from index_builder.shards import WORK_DIR, ShardWriter, remove_work

log = logging.getLogger(__name__)
UNREADABLE = "unreadable"
LOCK_FILE = ".lock"


@dataclass
class BuildOptions:
    """How to run the encode pipeline."""

    batch_size: int | None = None  # images per model batch; None: chosen for the device (auto_batch_size)
    workers: int | None = None  # decoding processes; 0 decodes in the main process; None: default_workers
    captions: bool = True
    caption_beam_width: int = CAPTION_BEAM_WIDTH  # recorded in the manifest; an update keeps the index's
    shard_size: int = 1024  # encoded images per checkpointed shard (work lost to a crash is at most this)
    progress: bool = True


def default_workers(device) -> int:
    """Decoding processes for a model on `device`.

    GPU: every core but the one feeding the model (up to 8). CPU: a quarter of the cores (at least one, up to
    8), each taken from the model's threads (`model_threads`): decoding in its own process overlaps the model,
    and single-threaded stages do not wait for each other's threads at every operation, which on a shared
    machine cost the two-threaded model on 2 cores more than half its speed (benchmarks/RESULTS.md).
    """
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores - 1))
    return 0 if cores < 2 else max(1, min(8, cores // 4))


@contextlib.contextmanager
def model_threads(device, workers: int) -> Iterator[int]:
    """While a build runs on a CPU: the model's compute threads (PyTorch's, which ONNX Runtime's follow) leave
    a core to each decoding process, and never exceed what the process was set to; restored afterwards."""
    before = torch.get_num_threads()
    threads = before
    if torch.device(device).type == "cpu":
        threads = max(1, min(before, (os.cpu_count() or 1) - workers))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def build_index(roots: Iterable[str | os.PathLike], out: str | os.PathLike, model, *,
                checkpoint_dir: str | os.PathLike | None = None, options: BuildOptions | None = None) -> IndexStore:
    """Index every image under `roots` into the directory `out` (created; an earlier index there is replaced
    only when the new one is committed). A build killed earlier into `out` resumes where it stopped, and an
    index of the same model already in `out` lends its results: an unchanged folder encodes nothing."""
    out, options = Path(out), options or BuildOptions()
    roots = [os.path.abspath(os.fsdecode(r)) for r in roots]
    if not roots:
        raise UserError("give at least one folder to index")
    require_faiss()  # before the encoding, not after it: a plain `pip install mammut-search` has no FAISS
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out), disk_space_errors(out):
        links: list[str] = []
        files = scan_roots(roots, progress=options.progress, links=links)
        log.info("found %d image files under %s", len(files), ", ".join(roots))
        return index_files(out, model, files, roots, previous=reusable_index(out, model, options),
                           checkpoint_dir=checkpoint_dir, options=options, links=links)


def reusable_index(out: Path, model, options: BuildOptions) -> IndexStore | None:
    """The index already in `out` when this model made it with the same captions setting (a build then keeps
    its unchanged items and vectors, as an update would), else None. An unsaved model has no identity to
    compare, so it reuses nothing."""
    if not model.checkpoint_sha256 or not (out / MANIFEST_FILE).exists():
        return None
    try:
        store = IndexStore.open(out, model=model)
        store.vectors  # verified now: a damaged index is rebuilt from the images, not reused
    except IndexStoreError as e:
        log.info("the index in %s is rebuilt from the images: %s", out, e)
        return None
    same_captions = (store.manifest.captions, store.manifest.caption_beam_width) == (options.captions,
                                                                                     options.caption_beam_width)
    return store if same_captions else None


def update_index(index_dir: str | os.PathLike, model, *, checkpoint_dir: str | os.PathLike | None = None,
                 options: BuildOptions | None = None) -> IndexStore:
    """Bring `index_dir` up to date with its roots: encode new and changed files, drop deleted ones.
    Items whose files did not change keep their ids and bit-identical vectors."""
    index_dir = Path(index_dir)
    with locked(index_dir), disk_space_errors(index_dir):
        previous = IndexStore.open(index_dir, model=model)
        # the captions choice is the index's, not the update's
        options = replace(options or BuildOptions(), captions=previous.manifest.captions,
                          caption_beam_width=previous.manifest.caption_beam_width)
        roots = previous.manifest.roots
        missing = [r for r in roots if not os.path.exists(r)]
        if missing:  # an unmounted disk must not empty the index
            raise UserError(f"{missing[0]}: a folder of this index is missing (unmounted?); mount it, or "
                            f"rebuild without it with mammut index build FOLDER... --out {index_dir}")
        links: list[str] = []
        files = scan_roots(roots, progress=options.progress, links=links)
        checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else previous.manifest.checkpoint_dir
        return index_files(index_dir, model, files, roots, previous=previous, checkpoint_dir=checkpoint_dir,
                           options=options, links=links)


def index_files(index_dir: Path, model, files: list[FoundFile], roots: list[str], *, previous: IndexStore | None,
                checkpoint_dir: str | os.PathLike | None, options: BuildOptions,
                links: list[str] | None = None) -> IndexStore:
    """Turn `files` into a committed index generation, reusing all it can from `previous` and from the shards;
    `links` are the symlinked folders the scan followed ("link -> target"), recorded in the manifest."""
    started = time.monotonic()
    stats = RunStats(files=len(files))
    kept_rows, new_rows = plan_rows(files, previous, options.progress)
    results, failed = results_for(new_rows, index_dir, model, previous, options, stats)
    next_id = previous.manifest.next_id if previous is not None else 0
    for row in new_rows:  # new ids, never reused, so a removed item's id can never point at another file
        if "status" not in row:  # unreadable files have theirs already
            r = failed.get(row["path"]) or results[row["sha256"]]  # a file that failed is skipped itself
            if r.status == CHANGED:  # the hash is of bytes that are gone: nothing may be matched to it
                row["sha256"] = ""
            row.update(status=r.status, width=r.width, height=r.height, caption=r.caption)
        row["id"] = next_id
        next_id += 1
    items = items_frame(sorted(kept_rows + new_rows, key=lambda r: r["path"]))
    vectors = make_vectors(previous, items, results, model.latent_dim, progress=options.progress)

    ok = items["status"] == OK
    stats.images, stats.skipped = int(ok.sum()), int((~ok).sum())
    stats.removed = len(set(previous.items["id"]) - set(items["id"])) if previous is not None else 0
    stats.seconds = round(time.monotonic() - started, 3)
    manifest = Manifest(
        checkpoint_sha256=model.checkpoint_sha256,
        model_identity=model_identity(model),
        checkpoint_dir=os.path.abspath(checkpoint_dir) if checkpoint_dir is not None else None,
        model=model_summary(model),
        latent_dim=int(model.latent_dim),
        roots=roots,
        linked_folders=list(links or []),
        captions=options.captions,
        caption_beam_width=options.caption_beam_width,
        next_id=next_id,
        last_run=stats,
        created=previous.manifest.created if previous is not None else None,
    )
    manifest.relevance = relevance_calibration(model, vectors)
    tokens = stored_tokens(previous, items, results)
    if tokens is not None:
        manifest.rerank_tokens, tokens = tokens
    store = IndexStore.commit(index_dir, items, vectors, manifest, tokens=tokens)
    remove_work(index_dir)
    log.info("indexed %d images, skipped %d files, encoded %d in %.1f s",
             stats.images, stats.skipped, stats.encoded, stats.seconds)
    return store


def results_for(new_rows: list[dict], index_dir: Path, model, previous: IndexStore | None,
                options: BuildOptions, stats: RunStats) -> tuple[dict[str, Encoded], dict[str, Encoded]]:
    """(sha256 -> Encoded of every content among `new_rows` that was indexed, path -> Encoded of every file
    that could not be). Indexed contents come from the previous index, from the shards of an interrupted run,
    or are encoded now, once per content, checkpointed into new shards. A failure belongs to its file alone:
    a file whose bytes failed under another path is tried itself (a FIFO and an empty file share the empty
    content, not the reason), so failures are neither resumed nor reused."""
    wanted = [r for r in new_rows if "status" not in r]
    done = reuse_from_previous(previous, {r["sha256"] for r in wanted})
    stats.reused = len(done)
    shards = ShardWriter(index_dir, work_identity(model, options), shard_size=options.shard_size)
    for sha, encoded in shards.load().items():
        if encoded.status == OK and sha not in done:
            done[sha] = encoded
            stats.resumed += 1
    failed: dict[str, Encoded] = {}
    first, queued = [], set()
    for row in wanted:
        if row["sha256"] not in done and row["sha256"] not in queued:
            queued.add(row["sha256"])
            first.append(EncodeJob(row["sha256"], row["path"]))
    log.info("%d new or changed files to decode and encode (%d images resumed from an interrupted run, "
             "%d reused from the index)", len(first), stats.resumed, stats.reused)
    tried = {job.path for job in first}
    for jobs in (first, None):
        if jobs is None:  # the other paths of contents that failed: each file gets its own try and reason
            jobs = [EncodeJob(r["sha256"], r["path"]) for r in wanted
                    if r["sha256"] not in done and r["path"] not in tried]
        for job, encoded in zip(jobs, run_encoder(model, jobs, shards, options)):  # in job order
            if encoded.status == OK:
                done[job.sha256] = encoded
                stats.encoded += 1
            else:
                failed[job.path] = encoded
    shards.flush()
    if first:
        log.info("encoded %d image%s; %d file%s could not be decoded (mammut index info lists why)",
                 stats.encoded, "" if stats.encoded == 1 else "s", len(failed), "" if len(failed) == 1 else "s")
    return done, failed


def plan_rows(files: list[FoundFile], previous: IndexStore | None, progress: bool) -> tuple[list[dict], list[dict]]:
    """Split the scanned files into rows kept from `previous` (same path, same bytes; id kept) and new rows
    (new path or changed bytes; id, status, caption... filled in later). Unreadable files become skipped rows."""
    before = {} if previous is None else {r["path"]: r for r in previous.items.to_dict("records")}
    kept, to_hash = [], []
    for f in files:
        row = before.get(f.path)
        if (row is not None and row["size"] == f.size and row["mtime"] == f.mtime
                and not row["status"].startswith(UNREADABLE)):  # unreadable files get another try
            kept.append(row)
        else:
            to_hash.append(f)
    hashes = hash_files([f.path for f in to_hash], progress=progress)
    new = []
    for f in to_hash:
        sha, row = hashes[f.path], before.get(f.path)
        base = dict(path=f.path, size=f.size, mtime=f.mtime, width=0, height=0, caption="")
        if isinstance(sha, FileNotFoundError):
            continue  # deleted since the scan
        if isinstance(sha, OSError):
            reason = f"{UNREADABLE} ({sha.strerror or sha})"
            if row is not None:
                kept.append({**row, **base, "sha256": "", "status": reason})  # keeps its id; its vector goes
            else:
                new.append({**base, "sha256": "", "status": reason})
        elif row is not None and row["sha256"] == sha:
            kept.append({**row, "size": f.size, "mtime": f.mtime})  # touched, same bytes
        else:
            new.append({**base, "sha256": sha})
    return kept, new


def reuse_from_previous(previous: IndexStore | None, wanted: set[str]) -> dict[str, Encoded]:
    """Results for contents the previous index already holds (moved, copied or re-saved files), so they are
    not encoded again; their vectors are copied bit for bit."""
    if previous is None:
        return {}
    items = previous.ok_items
    ok = items[items["sha256"].isin(wanted)].drop_duplicates("sha256")
    latents = previous.vectors.reconstruct(ok["id"].to_numpy(np.int64)) if len(ok) else np.zeros((0, 0), np.float32)
    tokens = previous.tokens
    return {r["sha256"]: Encoded(r["sha256"], OK, r["width"], r["height"], r["caption"], latents[k],
                                 tokens.row(r["id"]) if tokens is not None else None)
            for k, r in enumerate(ok.to_dict("records"))}


def run_encoder(model, jobs: list[EncodeJob], shards: ShardWriter, options: BuildOptions) -> Iterator[Encoded]:
    """Encode the jobs with a progress bar, checkpointing every result into the shards."""
    with tqdm(total=len(jobs), desc="encoding", unit="img", disable=not options.progress or not jobs) as bar:
        workers = options.workers if options.workers is not None else default_workers(model.device)
        batch_size = options.batch_size or auto_batch_size(model)
        with model_threads(model.device, workers):
            batches = encode(model, jobs, batch_size=batch_size, workers=workers, captions=options.captions,
                             beam_width=options.caption_beam_width)
            if jobs:  # while the first images decode: the text side of the relevance calibration done at the end
                calibration_latents(model)
            for batch in batches:
                shards.add([e for e in batch if e.status != CHANGED])  # a changed file is retried, not resumed
                bar.update(len(batch))
                yield from batch


def make_vectors(previous: IndexStore | None, items, results: dict[str, Encoded], latent_dim: int, *,
                 progress: bool = False):
    """The vector index of the ok items: a new one, or the previous one with dropped ids removed and new ids
    added (untouched vectors stay bit-identical; mammut_search.index.vectors.ann decides when a rebuild is due)."""
    from mammut_search.index.vectors.ann import build_vector_index, update_vector_index

    ok = items[items["status"] == OK]
    if previous is None:
        return build_vector_index(latents_of(ok, results, latent_dim), ok["id"].to_numpy(np.int64),
                                  progress=progress)
    before = previous.ok_items["id"].to_numpy(np.int64)
    added = ok[~ok["id"].isin(before)]
    return update_vector_index(previous.vectors, add_vectors=latents_of(added, results, latent_dim),
                               add_ids=added["id"].to_numpy(np.int64),
                               remove_ids=np.setdiff1d(before, ok["id"].to_numpy(np.int64)), progress=progress)


def relevance_calibration(model, vectors) -> dict[str, Any]:
    """The "nothing matches" cutoff of this very index (mammut_search.relevance), computed with it."""
    from mammut_search.relevance import calibrate

    log.info("calibrating the relevance cutoff on the index")
    return calibrate(model, vectors)


def stored_tokens(previous: IndexStore | None, items, results: dict[str, Encoded]):
    """(manifest entry, file writer) of the re-ranking tokens of the ok items: kept items' rows copied from
    `previous`, new items' from `results`; None when some item has none (an index from before they were
    stored keeps re-ranking by decoding its files until it is rebuilt)."""
    ok = items[items["status"] == OK].sort_values("id")
    ids = ok["id"].to_numpy(np.int64)
    kept = set(previous.ok_items["id"].tolist()) if previous is not None else set()
    old = previous.tokens if previous is not None else None
    sha_of = dict(zip(ids.tolist(), ok["sha256"]))
    new = [results[sha_of[i]].tokens for i in ids.tolist() if i not in kept]
    if not len(ids) or any(t is None for t in new) or (len(new) < len(ids) and old is None):
        return None
    shape = new[0].shape if new else old.shape

    def row_of(item_id: int) -> np.ndarray:
        return old.row(item_id) if item_id in kept else results[sha_of[item_id]].tokens

    return describe(len(ids), shape), tokens_writer(ids, row_of, shape)


def latents_of(rows, results: dict[str, Encoded], latent_dim: int) -> np.ndarray:
    """The latents (n l) of items rows, looked up by their sha256."""
    if not len(rows):
        return np.zeros((0, latent_dim), np.float32)
    return np.stack([results[sha].latent for sha in rows["sha256"]]).astype(np.float32, copy=False)


def work_identity(model, options: BuildOptions) -> dict[str, Any]:
    """What the shards of a build depend on: reused only when all of it matches."""
    return {"model_identity": model_identity(model) or model.checkpoint_sha256, "latent_dim": int(model.latent_dim),
            "captions": options.captions, "rerank_tokens": TOKENS_VERSION,
            "caption_beam_width": options.caption_beam_width}


def model_summary(model) -> dict[str, Any]:
    """The model facts worth showing in `index info`."""
    encoder = model.config.image_encoder
    return {"image_encoder": encoder.kind, "image_size": encoder.image_size, "latent_dim": int(model.latent_dim)}


def check_output_dir(out: Path) -> None:
    """Refuse to build into an existing folder that is not an index (it could be someone's photos)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    entries = {p.name for p in out.iterdir()}
    if entries and not entries & {MANIFEST_FILE, WORK_DIR, LOCK_FILE}:
        raise UserError(f"{out}: exists and is not an index directory; choose a new --out path")


@contextlib.contextmanager
def disk_space_errors(index_dir: Path) -> Iterator[None]:
    """A disk (or quota) that fills up while the index is written is the user's to fix: a sentence, not a
    traceback. The committed index is untouched (the manifest is written last), and finished work resumes."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"{index_dir}: the disk is full ({e.strerror}); free some space and run the same "
                        "command again (the index as it was is kept, and work already done is reused)") from None


@contextlib.contextmanager
def locked(index_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the index directory (released by the OS even if the process is killed)."""
    if not index_dir.is_dir():
        IndexStore.open(index_dir)  # raises the helpful "no such index" error
    with open(index_dir / LOCK_FILE, "w") as f:
        try:
            # a POSIX record lock belongs to this process alone: forked decoding workers do not inherit it,
            # so a killed build's orphaned workers cannot keep the index locked
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"{index_dir}: another build or update is writing this index; wait for it") from None
        yield

