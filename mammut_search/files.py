"""Reading users' files safely: only regular files, never more bytes than they had when opened.

A FIFO named `photo.jpg` would block `open()` until some writer appears, and a symlink to `/dev/zero` never
ends; both are refused before a byte is read. The file is opened without blocking and checked through its
descriptor, so a file swapped for a pipe between a `stat` and the `open` is caught too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from typing import BinaryIO, Iterator

CHUNK = 1 << 20


class NotRegularFileError(OSError):
    """The path is a directory, pipe, socket or device, not a file that can be read to its end."""


@contextlib.contextmanager
def open_regular(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, int]]:
    """Open a regular file for reading -> (binary file object, its size when opened); NotRegularFileError
    (an OSError) for anything else, other OSErrors as `open` raises them."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise NotRegularFileError(errno.EISDIR, "is a directory, not an image file", os.fsdecode(path))
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file (a pipe, socket or device)",
                                      os.fsdecode(path))
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, info.st_size


def read_regular(path: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, at most its size when opened (a file that grows is cut there);
    OSError(EFBIG) when it holds more than `max_bytes`."""
    with open_regular(path) as (f, size):
        if max_bytes is not None and size > max_bytes:
            raise OSError(errno.EFBIG, f"{size:,} bytes is more than the limit of {max_bytes:,}", os.fsdecode(path))
        return f.read(size)


def sha256_regular(path: str | os.PathLike) -> str:
    """Hex sha256 of a regular file's bytes (at most its size when opened)."""
    digest = hashlib.sha256()
    with open_regular(path) as (f, size):
        left = size
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def printable(text: str) -> str:
    """Text (a file name, a caption) as one safe terminal line: undecodable bytes of a name as \\xNN, and
    newlines, tabs and terminal escapes (any non-printable character) as Python writes them (\\n, \\t, \\x1b)."""
    text = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
