"""The image encoder on a CPU under ONNX Runtime: the latents and captions PyTorch gives, an export cached by
the weights' identity that is never trusted when damaged or stale, PyTorch with one line where the runtime is
missing or refuses, and one owner of the compute threads."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mammut_search import cpu_encoder
from mammut_search.bundled import bundled_checkpoint_dir, demo_dir
from mammut_search.images import load_image_with_size
from mammut_search.inference import decode_side, load_model, pixels_tensor
from mammut_search.model.decoding import generate
from mammut_search.testing import tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty export cache for this test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mammut-search" / "onnx"


@pytest.fixture
def exports(monkeypatch):
    """Counts the encoder exports made from now on."""
    made = []
    real = cpu_encoder.export_graph

    def counted(module, probe):
        made.append(module)
        return real(module, probe)

    monkeypatch.setattr(cpu_encoder, "export_graph", counted)
    return made


def pytorch_latents(model, pixels):
    with torch.no_grad():
        return model.latents_from_features(model.net.image_features(pixels))


def pixels(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_latents_through_the_runtime_equal_pytorchs(cache):
    model = tiny_model(seed=0)
    x = pixels()
    latents = model.encode_image(x)
    assert cpu_encoder.cpu_encoder(model.net) is not None  # the runtime ran, not PyTorch
    assert not model.net.image_encoder.training  # the export left the encoder as it was
    assert F.cosine_similarity(latents, pytorch_latents(model, x)).min() >= 0.9999
    assert len(list(cache.glob("*.onnx"))) == 1 and len(list(cache.glob("*.json"))) == 1


def test_a_batch_runs_in_short_runs_that_give_the_whole_batchs_output(cache, monkeypatch):
    model = tiny_model(seed=0)
    x = pixels(n=11)
    with torch.no_grad():
        whole = cpu_encoder.image_features(model.net, x)  # 11 images: one run
    runs = []
    encoder = cpu_encoder.cpu_encoder(model.net)
    real_session = encoder.session

    def counted_session():
        session = real_session()
        run = session.run
        monkeypatch.setattr(session, "run", lambda names, feed: runs.append(len(feed["pixels"])) or run(names, feed),
                            raising=False)
        return session

    monkeypatch.setattr(cpu_encoder, "IMAGES_PER_THREAD", 4)
    monkeypatch.setattr(encoder, "session", counted_session)
    with torch.no_grad():
        short = cpu_encoder.image_features(model.net, x)
    assert runs == [4, 4, 3]  # 4 images a thread, on the tests' one thread
    assert torch.allclose(short, whole, atol=1e-6)


@pytest.fixture(scope="session")
def bundled():
    return load_model(bundled_checkpoint_dir(), device="cpu")


def photo_like_jpegs(folder: Path, count: int) -> list[Path]:
    """Camera-sized JPEGs with smooth structure and sensor-like noise."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((1024, 768),
                                                                                          Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(coarse, np.int16) + rng.normal(0, 6, (768, 1024, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"photo{i}.jpg")
        Image.fromarray(noisy).save(paths[-1], quality=90)
    return paths


def test_bundled_model_gives_pytorchs_latents_and_captions_on_demo_images_and_photos(bundled, tmp_path):
    demo = sorted((demo_dir() / "images").iterdir())[::12]  # 25 of the 300
    x = bundled.preprocess_files(demo + photo_like_jpegs(tmp_path / "photos", 3))
    features = bundled.image_features(x)
    assert cpu_encoder.cpu_encoder(bundled.net) is not None
    with torch.no_grad():
        reference = bundled.net.image_features(x)
    cosine = F.cosine_similarity(bundled.latents_from_features(features), bundled.latents_from_features(reference))
    assert cosine.min() >= 0.9999
    assert bundled.captions_from_features(features) == bundled.captions_from_features(reference)


def full_resolution_square(path: Path, size: int, background) -> np.ndarray:
    """Every pixel decoded, then one bicubic resize into the square: the reference the reduced decoding is held to."""
    image = Image.open(path).convert("RGB")
    scale = size / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    square = np.empty((size, size, 3), np.uint8)
    square[:] = background
    top, left = (size - image.height) // 2, (size - image.width) // 2
    square[top:top + image.height, left:left + image.width] = np.asarray(image)
    return square


def test_camera_sized_jpegs_decoded_at_reduced_scale_keep_the_full_resolution_latents(bundled, tmp_path):
    config = bundled.config.image_encoder
    paths = photo_like_jpegs(tmp_path / "photos", 3)
    decoded, full_size = load_image_with_size(paths[0], min_side=decode_side(config))
    # the largest power-of-two reduction that keeps both sides at least the decode side
    scale = full_size[0] // decoded.size[0]
    assert full_size == (1024, 768) and scale > 1 and decoded.size == (1024 // scale, 768 // scale)
    assert min(decoded.size) >= decode_side(config) > min(decoded.size) // 2

    reduced = bundled.encode_image(bundled.preprocess_files(paths))
    full = bundled.encode_image(pixels_tensor([full_resolution_square(p, config.image_size, config.background)
                                               for p in paths], config))
    assert F.cosine_similarity(reduced, full).min() >= 0.99


def test_greedy_captions_leaving_the_batch_early_equal_the_reference_loop(bundled):
    demo = sorted((demo_dir() / "images").iterdir())[:40]
    tokens = bundled.decoder_tokens(bundled.image_features(bundled.preprocess_files(demo)))
    fast = generate(bundled.net, tokens)  # greedy with the cache: finished captions leave the batch
    reference = generate(bundled.net, tokens, use_cache=False)  # every row to the end, no cache
    assert torch.equal(fast, reference)
    lengths = (fast != bundled.config.pad_id).sum(dim=1)
    assert len(set(lengths.tolist())) >= 3  # captions finished at different steps


def test_same_weights_reuse_the_cached_export(cache, exports):
    tiny_model(seed=0).encode_image(pixels())
    assert len(exports) == 1
    tiny_model(seed=0).encode_image(pixels())  # another model object, same weights
    assert len(exports) == 1


def test_a_damaged_cached_export_is_made_again_not_run(cache, exports):
    x = pixels()
    tiny_model(seed=0).encode_image(x)
    graph = next(cache.glob("*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep inside the weights
    graph.write_bytes(bytes(data))
    model = tiny_model(seed=0)
    latents = model.encode_image(x)
    assert len(exports) == 2
    assert F.cosine_similarity(latents, pytorch_latents(model, x)).min() >= 0.9999
    (cache / graph.with_suffix(".json").name).write_text("{not json")  # a torn record
    tiny_model(seed=0).encode_image(x)
    assert len(exports) == 3


def test_other_weights_or_runtime_version_get_their_own_export(cache, exports, monkeypatch):
    x = pixels()
    tiny_model(seed=0).encode_image(x)
    other = tiny_model(seed=1)
    assert F.cosine_similarity(other.encode_image(x), pytorch_latents(other, x)).min() >= 0.9999
    assert len(exports) == 2 and len(list(cache.glob("*.onnx"))) == 2
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "0.0.0-other")
    tiny_model(seed=0).encode_image(x)
    assert len(exports) == 3


def test_weights_changed_in_place_are_exported_again(cache, exports):
    model = tiny_model(seed=0)
    x = pixels()
    model.encode_image(x)
    with torch.no_grad():
        for p in model.net.image_encoder.parameters():
            p.mul_(1.5)  # as an optimizer step or load_state_dict would, in place
    latents = model.encode_image(x)
    assert len(exports) == 2
    assert F.cosine_similarity(latents, pytorch_latents(model, x)).min() >= 0.9999


def test_a_missing_runtime_means_pytorch_and_one_line(cache, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    model = tiny_model(seed=0)
    x = pixels()
    with caplog.at_level(logging.WARNING, logger="mammut_search.cpu_encoder"):
        first, second = model.encode_image(x), model.encode_image(x)
    assert cpu_encoder.cpu_encoder(model.net) is None
    assert torch.equal(first, pytorch_latents(model, x)) and torch.equal(second, first)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "PyTorch" in lines[0] and "onnxruntime" in lines[0]
    assert not list(cache.glob("*"))


class Unexportable(torch.nn.Module):
    """An encoder whose adaptive pooling (5 cells over 32 pixels) the ONNX exporter refuses."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.conv(x), 5).flatten(2).transpose(1, 2)


def test_an_encoder_the_export_refuses_runs_in_pytorch_quietly(cache, capfd, caplog):
    model = tiny_model(seed=0)
    model.net.image_encoder = Unexportable().eval()
    x = pixels()
    with caplog.at_level(logging.WARNING, logger="mammut_search.cpu_encoder"):
        with torch.no_grad():
            features = cpu_encoder.image_features(model.net, x)
            assert torch.equal(features, model.net.image_encoder(x))
    assert len(caplog.records) == 1 and "export failed" in caplog.records[0].getMessage()
    out, err = capfd.readouterr()
    assert "graph" not in out + err  # the exporter's graph dump stayed off the terminal


def test_an_export_the_runtime_disagrees_with_is_refused(cache, monkeypatch, caplog):
    monkeypatch.setattr(cpu_encoder, "AGREEMENT", -1.0)  # no difference is small enough
    model = tiny_model(seed=0)
    with caplog.at_level(logging.WARNING, logger="mammut_search.cpu_encoder"):
        model.encode_image(pixels())
    assert cpu_encoder.cpu_encoder(model.net) is None
    assert "differs from PyTorch" in caplog.records[0].getMessage()
    assert not list(cache.glob("*.onnx"))  # nothing unverified is kept


def test_the_runtime_uses_pytorchs_thread_setting(cache):
    model = tiny_model(seed=0)
    model.encode_image(pixels())
    encoder = cpu_encoder.cpu_encoder(model.net)
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            model.encode_image(pixels())
            assert encoder.session().get_session_options().intra_op_num_threads == threads
    finally:
        torch.set_num_threads(before)


def test_a_cpu_build_gives_each_decoding_process_a_core(cache, tmp_path, monkeypatch):
    from index_builder import build
    from index_builder.build import BuildOptions, build_index

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 40, 200)).save(images / f"{i}.png")
    model = tiny_model(seed=0)
    seen = []
    encode = model.image_features
    monkeypatch.setattr(model, "image_features", lambda x: seen.append(torch.get_num_threads()) or encode(x))
    monkeypatch.setattr(build.os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        build_index([images], tmp_path / "a.index", model, options=BuildOptions(workers=1, progress=False))
        assert seen and set(seen) == {3}  # one core left to the decoding process
        assert torch.get_num_threads() == 4  # and given back afterwards
        assert build.default_workers("cpu") == 1  # the default on 4 cores
        seen.clear()
        build_index([images], tmp_path / "b.index", model, options=BuildOptions(workers=0, progress=False))
        assert set(seen) == {4}
        torch.set_num_threads(1)  # the process's setting is a ceiling
        seen.clear()
        build_index([images], tmp_path / "c.index", model, options=BuildOptions(workers=0, progress=False))
        assert set(seen) == {1}
    finally:
        torch.set_num_threads(before)


def test_the_environment_can_keep_the_encoder_in_pytorch(cache, monkeypatch, caplog):
    monkeypatch.setenv(cpu_encoder.RUNTIME_ENV, "torch")
    model = tiny_model(seed=0)
    x = pixels()
    with caplog.at_level(logging.WARNING, logger="mammut_search.cpu_encoder"):
        assert torch.equal(model.encode_image(x), pytorch_latents(model, x))
    assert cpu_encoder.cpu_encoder(model.net) is None and not caplog.records
    assert not list(cache.glob("*"))


def test_an_unwritable_cache_costs_a_line_not_the_runtime(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "xdg"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    model = tiny_model(seed=0)
    x = pixels()
    with caplog.at_level(logging.WARNING, logger="mammut_search.cpu_encoder"):
        latents = model.encode_image(x)
    assert cpu_encoder.cpu_encoder(model.net) is not None
    assert F.cosine_similarity(latents, pytorch_latents(model, x)).min() >= 0.9999
    assert len(caplog.records) == 1 and "cannot keep" in caplog.records[0].getMessage()
