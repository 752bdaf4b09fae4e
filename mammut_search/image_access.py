"""The two ways a Searcher reads an image file: an indexed image, decoded only while its file still holds the
bytes that were indexed (the only files ever shown), and a query image, through the safe loader."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING

from mammut_search.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

QUERY_DECODES = 2  # query images decoded at once: a large upload takes much memory while it decodes (images.py)


def indexed_image(store, item_id: int, *, min_side: int | None = None) -> "Image.Image":
    """An indexed image whose file has the same size and mtime as when it was indexed, or else the same
    sha256. A file since replaced (say by a link to another, private image) is refused with a UserError."""
    from mammut_search.images import open_image_bytes, read_image_file
    from mammut_search.index.store import readable

    row = store.item(item_id)
    data, info = read_image_file(row["path"])  # the bytes checked are the bytes decoded
    if ((info.st_size, info.st_mtime) != (row["size"], row["mtime"])
            and hashlib.sha256(data).hexdigest() != row["sha256"]):
        raise UserError(f"{readable(row['path'])}: the file changed since it was indexed, so it is not "
                        "shown; run mammut index update")
    return open_image_bytes(data, name=readable(row["path"]), min_side=min_side)


class QueryImages:
    """Loads image queries (a PIL image, a file path or the file's bytes) no larger than the model needs,
    QUERY_DECODES at a time, so that simultaneous large uploads cannot add up."""

    def __init__(self, side: int):
        self.side = side
        self._slots = threading.BoundedSemaphore(QUERY_DECODES)

    def load(self, image) -> "Image.Image":
        from PIL import Image

        from mammut_search.images import load_image, open_image_bytes

        if isinstance(image, Image.Image):
            return image
        if isinstance(image, (bytes, bytearray)):
            with self._slots:
                return open_image_bytes(bytes(image), min_side=self.side)
        if isinstance(image, (str, os.PathLike)):
            with self._slots:
                return load_image(image, min_side=self.side)
        raise UserError(f"an image query must be a PIL image, a file path or bytes, not {type(image).__name__}")
