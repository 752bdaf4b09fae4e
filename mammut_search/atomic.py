"""Crash-safe file writes: a temporary file, fsynced, renamed over the target, the rename made durable.

Temporary files are named `.NAME.tmp-PID-THREAD` beside their target; a writer killed mid-write leaves one
behind, which `remove_leftovers` deletes on the next run (under the writer's lock, when no write is under way).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Callable

TMP_MARK = ".tmp-"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync the file, and rename it over `path` (so `path` is old or new, never torn)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_directory(path.parent)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete the temporary files that killed writers left in `directory`; returns them. Call it only while
    no other process writes there (e.g. under the index lock)."""
    removed = []
    for path in Path(directory).glob(f".*{TMP_MARK}*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def fsync_directory(directory: Path) -> None:
    """Make renames inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(tmp: Path, final: Path) -> None:
    """Replace directory `final` by the complete directory `tmp`: `final` moves aside to `final.old`, `tmp` takes
    its place, the old copy goes. A kill between the two renames leaves only `final.old`, which `recover_swap`
    (run first here, and by whoever reads `final`) puts back."""
    old = final.with_name(final.name + OLD_SUFFIX)
    recover_swap(final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_directory(final.parent)
    shutil.rmtree(old, ignore_errors=True)


OLD_SUFFIX = ".old"


def recover_swap(final: Path) -> None:
    """Undo or finish a `swap_in` that was killed: a lone `final.old` becomes `final` again (the last complete
    copy); one beside `final` is a copy the swap had not yet removed."""
    final = Path(final)
    old = final.with_name(final.name + OLD_SUFFIX)
    if not old.exists():
        return
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(old, final)
    except FileNotFoundError:  # another process (a torchrun rank) put it back first
        return
    fsync_directory(final.parent)
