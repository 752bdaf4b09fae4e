"""Find the image files under some folders: recursive, following symlinks without ever looping."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

from tqdm import tqdm

from mammut_search.errors import UserError
from mammut_search.files import sha256_regular

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundFile:
    """A candidate image file: its absolute path (str, surrogate-escaped if the name is not UTF-8), size, mtime."""

    path: str
    size: int
    mtime: float


def image_extensions() -> frozenset[str]:
    """Lower-case file suffixes (with the dot) that count as images."""
    from mammut_search.images import IMAGE_EXTENSIONS

    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in IMAGE_EXTENSIONS)


# The kernel's and devices' pseudo-filesystems: a symlinked folder leading there (or `/` given as a root)
# would find "files" that are processes' working directories, devices and endless streams.
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


def scan_roots(roots: Iterable[str | os.PathLike], *, extensions: frozenset[str] | None = None,
               progress: bool = False, links: list[str] | None = None) -> list[FoundFile]:
    """Every file with an image extension under `roots` (files may be roots too), sorted by path.

    Directories are walked once each, however many symlinks lead to them, so symlink loops end; /proc, /sys
    and /dev are never entered. Each symlinked folder followed is appended to `links` ("link -> target").
    Unreadable directories are logged and skipped; a missing root is an error.
    """
    extensions = image_extensions() if extensions is None else extensions
    visited: set[tuple[int, int]] = set()
    found: dict[str, FoundFile] = {}
    bar = tqdm(desc="scanning", unit="file", disable=not progress, leave=False)
    for root in roots:
        root = os.path.abspath(os.fsdecode(root))
        try:
            st = os.stat(root)
        except OSError as e:
            raise UserError(f"{root}: cannot scan ({e.strerror or e}); give an existing folder") from None
        if os.path.isdir(root):
            for file in _walk(root, extensions, visited, links if links is not None else []):
                found.setdefault(file.path, file)
                bar.update()
        else:
            found.setdefault(root, FoundFile(root, st.st_size, st.st_mtime))
    bar.close()
    return [found[p] for p in sorted(found)]


def _walk(directory: str, extensions: frozenset[str], visited: set[tuple[int, int]],
          links: list[str]) -> Iterator[FoundFile]:
    stack = [(directory, False)]
    while stack:
        current, linked = stack.pop()
        target = os.path.realpath(current)
        if any(target == system or target.startswith(system + os.sep) for system in SYSTEM_FOLDERS):
            log.warning("%s: skipped (leads into %s, a system folder)", current, target)
            continue
        try:
            st = os.stat(current)
            key = (st.st_dev, st.st_ino)
            if key in visited:
                continue  # reached again through a symlink (or a loop)
            visited.add(key)
            if linked:
                links.append(f"{current} -> {target}")
            with os.scandir(current) as entries:
                entries = sorted(entries, key=lambda e: e.name)
        except OSError as e:
            log.warning("%s: skipped directory (%s)", current, e.strerror or e)
            continue
        subdirectories = []
        for entry in entries:
            try:
                if entry.is_dir():  # follows symlinks
                    subdirectories.append((entry.path, entry.is_symlink()))
                elif os.path.splitext(entry.name)[1].lower() in extensions:
                    st = entry.stat()  # follows symlinks; a dangling link raises
                    yield FoundFile(entry.path, st.st_size, st.st_mtime)
            except OSError as e:
                log.warning("%s: skipped (%s)", entry.path, e.strerror or e)
        stack.extend(reversed(subdirectories))


def hash_files(paths: list[str], *, threads: int = 4, progress: bool = True) -> dict[str, str | OSError]:
    """path -> sha256, or the OSError that stopped reading it. Threads, because hashlib releases the GIL."""

    def one(path: str) -> str | OSError:
        try:
            return sha256_regular(path)  # a FIFO, device or directory is never read
        except OSError as e:
            return e

    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        results = list(tqdm(pool.map(one, paths), total=len(paths), desc="hashing", unit="file",
                            disable=not progress or not paths, leave=False))
    finally:  # on Ctrl+C, drop the queued files instead of hashing them all before exiting
        pool.shutdown(wait=False, cancel_futures=True)
    return dict(zip(paths, results))
