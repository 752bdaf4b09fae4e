"""One image pipeline: a file gives the same model input whether it is indexed, re-ranked, queried with,
evaluated or trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from search_testkit import one_torch_thread  # noqa: F401 (autouse fixture)


def large_jpeg(path):
    """A photo-like JPEG large enough for the loader to decode it at reduced scale."""
    y, x = np.mgrid[0:600, 0:800]
    pixels = np.stack([x * 255 // 800, y * 255 // 600, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def transparent_png(path):
    """A large RGBA PNG: reduced by the square step, transparency composited."""
    image = Image.new("RGBA", (500, 300), (0, 0, 0, 0))
    image.paste((200, 40, 40, 255), (100, 50, 400, 250))
    image.save(path)
    return path


class Recorder:
    """Wraps model.image_features and keeps every pixel row it is given."""

    def __init__(self, model):
        self.rows: list[torch.Tensor] = []
        self._inner = model.image_features
        model.image_features = self

    def __call__(self, pixels):
        self.rows.extend(pixels.detach().cpu().clone())
        return self._inner(pixels)

    def take(self) -> torch.Tensor:
        rows, self.rows = self.rows, []
        assert rows, "the path encoded no image"
        assert all(torch.equal(rows[0], r) for r in rows)  # one file: every row it encoded is that file
        return rows[0]


@pytest.mark.parametrize("make", [large_jpeg, transparent_png])
def test_the_same_file_gives_identical_model_inputs_on_every_path(make, model, tmp_path):
    from index_builder.build import BuildOptions, build_index
    from mammut_search.eval.domains import evaluate_domain
    from mammut_search.eval.evaluation import evaluate
    from mammut_search.search import Searcher

    folder = tmp_path / "images"
    folder.mkdir()
    path = make(folder / ("photo.jpg" if make is large_jpeg else "drawing.png"))
    recorder = Recorder(model)
    inputs = {}

    store = build_index([folder], tmp_path / "index", model, options=BuildOptions(workers=0, progress=False))
    inputs["indexing"] = recorder.take()

    searcher = Searcher(store, model)
    searcher.search_image(str(path))
    inputs["image query (file)"] = recorder.take()
    searcher.search_image(path.read_bytes())
    inputs["image query (bytes)"] = recorder.take()
    searcher.close()

    evaluate(pd.DataFrame({"image": [str(path)], "caption": ["a photo"]}), model, captions=False, progress=False)
    inputs["evaluation"] = recorder.take()
    evaluate_domain(model, pd.DataFrame({"path": [str(path)], "captions": [["a photo"]]}), captions=False)
    inputs["evaluation by domain"] = recorder.take()

    expected = model.preprocess_files([path])[0]
    for name, pixels in inputs.items():
        assert torch.equal(pixels, expected), name


def test_training_reads_images_through_the_same_loader_and_square(model, tmp_path):
    """Training decodes at full size (its views are cropped before squaring); for images under twice the
    encoder's decode side, as the rendered corpus is, that is exactly what the other paths decode."""
    from mammut_search.train import data

    path = tmp_path / "drawing.png"
    small = Image.new("RGBA", (100, 60), (0, 0, 0, 0))
    small.paste((200, 40, 40, 255), (20, 10, 80, 50))
    small.save(path)
    trained_on = data.pixel_encoder(model.config.image_encoder)([data.open_image(str(path))])[0]
    assert torch.equal(trained_on, model.preprocess_files([path])[0])
