"""Where mammut-search keeps what it can rebuild (the demo's index, exported CPU encoders): one folder per user."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/mammut-search, else ~/.cache/mammut-search (a relative XDG_CACHE_HOME is ignored, as the
    XDG base directory specification asks)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "mammut-search"
