"""Test collections and indexes for the search, UI and browser tests: generated images, a tiny saved model,
an index made by the real builder; optionally readable captions written through the store."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 210, 30),
          "purple": (140, 40, 170), "orange": (250, 140, 20)}
SHAPES = ("circle", "square", "triangle", "star")


def write_collection(folder: Path, count: int = 24) -> dict[str, str]:
    """Write `count` PNG drawings (a coloured shape on white, some noise) -> {path: "a red circle"}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = {}
    colors = list(COLORS)
    for i in range(count):
        color, shape = colors[i % len(colors)], SHAPES[(i // len(colors)) % len(SHAPES)]
        image = Image.new("RGB", (40, 36), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        box = [6 + i % 3, 5 + i % 4, 32, 30]
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
        else:
            draw.polygon([(20, 4), (24, 15), (35, 15), (26, 22), (30, 33), (20, 26), (10, 33), (14, 22),
                          (5, 15), (16, 15)], fill=fill)
        noise = rng.integers(-12, 13, (36, 40, 3))
        pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}-{color}-{shape}.png"
        Image.fromarray(pixels).save(path)
        labels[str(path)] = f"a {color} {shape}"
    return labels


def build_test_index(root: Path, *, count: int = 24, seed: int = 0, readable_captions: bool = False) -> tuple[Path, Path]:
    """Images under root/images, a tiny model saved in root/checkpoint, its index in root/photos.index.

    readable_captions replaces the tiny model's (random) captions by the drawings' names, committing a new
    generation through the store, so that a page can be checked for them. -> (index dir, checkpoint dir)
    """
    from index_builder.build import BuildOptions, build_index
    from mammut_search.index.store import IndexStore
    from mammut_search.index.tokens import tokens_writer
    from mammut_search.testing import tiny_model

    labels = write_collection(root / "images", count)
    model = tiny_model(seed=seed)
    checkpoint = root / "checkpoint"
    model.save(checkpoint)
    index = root / "photos.index"
    store = build_index([root / "images"], index, model, checkpoint_dir=checkpoint,
                        options=BuildOptions(batch_size=8, workers=0, progress=False))
    if readable_captions:
        items = store.items.copy()
        items["caption"] = [labels[p] for p in items["path"]]
        ids = store.ok_items["id"].sort_values().to_numpy(np.int64)
        tokens = tokens_writer(ids, store.tokens.row, store.tokens.shape)  # the same tokens, kept
        IndexStore.commit(index, items, store.vectors, store.manifest, tokens=tokens)
    return index, checkpoint


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on one intra-op thread: on a busy 2-core machine, two threads make each small op wait for
    a descheduled helper thread (measured: 30x slower). Imported by the test modules that use this kit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
