"""mammut-search: search image collections with MaMMUT, one model that retrieves images and captions them.

The names below are imported on first use (module `__getattr__`), so that commands needing no model, such as
`mammut --help` or `mammut index info`, never pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MammutModel": "mammut_search.inference",
    "load_model": "mammut_search.inference",
    "default_device": "mammut_search.inference",
    "Searcher": "mammut_search.search",
    "QueryTerm": "mammut_search.query",
    "MammutConfig": "mammut_search.model.config",
    "ImageEncoderConfig": "mammut_search.model.config",
    "UserError": "mammut_search.errors",
    "CheckpointError": "mammut_search.errors",
    "ImageLoadError": "mammut_search.errors",
    "IndexStoreError": "mammut_search.errors",
}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mammut_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
