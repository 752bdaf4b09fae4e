"""Reading Qt binary resource files (.rcc), as written by Qt's `rcc` tool (formats 1 to 3).

Layout (all integers big-endian): "qres", version, then the offsets of the tree, the data and the names
(and, from version 3, global flags). The tree is an array of fixed-size entries, entry 0 the root:
    name offset (u32), flags (u16: 1 zlib-compressed, 2 directory, 4 zstd-compressed), then
    a directory: child count (u32), index of its first child (u32);
    a file: country (u16), language (u16), data offset (u32);
    from version 2, a last-modified time (u64).
A name is its length in UTF-16 code units (u16), a hash (u32), then UTF-16BE text. A file's data is its
size (u32) then its bytes; zlib-compressed data starts with the uncompressed size (u32, as qCompress writes).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 1, 2, 4


class RccError(ValueError):
    """A file is not a readable Qt resource file."""


def read_rcc(path: str | Path, wanted: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file in a .rcc (or those whose path starts with one of `wanted`), {"/dir/name": bytes}.

    zstd-compressed entries (no decoder in the standard library) are left out.
    """
    buf = Path(path).read_bytes()
    try:
        return _files(buf, wanted)
    except (RccError, struct.error, IndexError, UnicodeDecodeError, zlib.error) as e:
        raise RccError(f"{path}: not a readable Qt resource file ({e})") from None


def _files(buf: bytes, wanted: tuple[str, ...]) -> dict[str, bytes]:
    if buf[:4] != b"qres":
        raise RccError("no 'qres' header")
    version, tree, data, names = struct.unpack_from(">IIII", buf, 4)
    if version not in (1, 2, 3):
        raise RccError(f"format version {version} unknown")
    entry_size = 14 if version == 1 else 22
    out: dict[str, bytes] = {}

    def name_at(offset: int) -> str:
        (length,) = struct.unpack_from(">H", buf, names + offset)
        start = names + offset + 6  # length (2) and hash (4)
        return buf[start:start + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    seen = set()
    while stack:
        index, parent = stack.pop()
        if index in seen:  # a corrupt tree must not loop forever
            raise RccError(f"tree entry {index} reached twice")
        seen.add(index)
        entry = tree + index * entry_size
        name_offset, flags = struct.unpack_from(">IH", buf, entry)
        path = f"{parent}/{name_at(name_offset)}" if index else ""
        if flags & DIRECTORY:
            count, first = struct.unpack_from(">II", buf, entry + 6)
            stack.extend((child, path) for child in range(first, first + count))
            continue
        if wanted and not path.startswith(wanted) or flags & COMPRESSED_ZSTD:
            continue
        (offset,) = struct.unpack_from(">I", buf, entry + 10)
        (size,) = struct.unpack_from(">I", buf, data + offset)
        raw = buf[data + offset + 4:data + offset + 4 + size]
        out[path] = zlib.decompress(raw[4:]) if flags & COMPRESSED else raw
    return out
