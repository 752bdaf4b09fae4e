"""The demo index: the bundled demo collection, indexed with the bundled checkpoint into the user's cache folder.

Built on first use and reused while nothing it depends on changed: the checkpoint's weights, the demo's files
(their bytes and where they are installed) and the version of mammut-search. When one of them did change, the
index is built again in place (a build reuses the vectors of images whose bytes the same model already encoded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from mammut_search import __version__
from mammut_search.atomic import atomic_write
from mammut_search.errors import UserError
from mammut_search.bundled import bundled_checkpoint_dir, demo_dir
from mammut_search.index.manifest import MANIFEST_FILE
from mammut_search.model.checkpoint import WEIGHTS, file_sha256
from mammut_search.user_cache import user_cache_dir

from index_builder.build import BuildOptions, build_index

log = logging.getLogger(__name__)
INDEX_FOLDER = "demo.index"
STAMP_FILE = "demo.json"  # beside the index: the identity of what it was built from


def demo_index(cache_dir: str | os.PathLike | None = None, *, checkpoint_dir: str | os.PathLike | None = None,
               images_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The index of the demo images (default: the bundled demo) made with `checkpoint_dir` (default: the
    bundled checkpoint), under `cache_dir` (default: user_cache_dir()); built only when missing or out of date."""
    from mammut_search.inference import load_model

    cache = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    images = Path(images_dir) if images_dir is not None else demo_dir() / "images"
    index, stamp = cache / INDEX_FOLDER, cache / STAMP_FILE
    identity = demo_identity(Path(checkpoint_dir) if checkpoint_dir is not None else bundled_checkpoint_dir(), images)
    if identity is not None and _read_stamp(stamp) == identity and (index / MANIFEST_FILE).is_file():
        log.info("the demo index in %s is up to date", index)
        return index
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{cache}: cannot create the demo's cache folder ({e.strerror}); set XDG_CACHE_HOME to a "
                        "folder you can write to") from None
    log.info("indexing the demo collection %s into %s", images, index)
    model = load_model(checkpoint_dir)
    build_index([images], index, model, checkpoint_dir=checkpoint_dir, options=BuildOptions(progress=progress))
    if identity is not None:
        atomic_write(stamp, lambda tmp: Path(tmp).write_text(json.dumps({"identity": identity}) + "\n"))
    return index


def demo_identity(checkpoint_dir: Path, images_dir: Path) -> str | None:
    """sha256 over the checkpoint's weights, the demo's file names and bytes, its location and our version;
    None when a part cannot be read (the build that follows then says what is wrong)."""
    digest = hashlib.sha256(f"mammut-search {__version__}\n{images_dir.resolve()}\n".encode())
    try:
        digest.update(file_sha256(checkpoint_dir / WEIGHTS).encode())
        for path in sorted(p for p in images_dir.rglob("*") if p.is_file()):
            digest.update(f"\n{path.relative_to(images_dir).as_posix()} {file_sha256(path)}".encode())
    except OSError:
        return None
    return digest.hexdigest()


def _read_stamp(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return None
