"""What ships inside the package: the bundled checkpoint and the demo collection.

Both are package data, found through importlib.resources, so they resolve the same in a checkout, an editable
install and a wheel installed into site-packages. The repository's data/ folder is where recipes and training
write; nothing here reads from it. To ship a new checkpoint or demo, copy it over `checkpoint/` or `demo/`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_checkpoint_dir() -> Path:
    """The checkpoint directory shipped with the package (config.json, model.safetensors, tokenizer.json)."""
    return _resource_dir("checkpoint")


def demo_dir() -> Path:
    """The demo collection shipped with the package: images/, captions.csv (image,caption), ATTRIBUTION.md."""
    return _resource_dir("demo")


def _resource_dir(name: str) -> Path:
    # pip installs packages unzipped, so the resource is a real folder that torch, safetensors and the image
    # loader can open by path
    return Path(str(resources.files(__name__) / name))
