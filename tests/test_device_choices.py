"""What the code chooses on a GPU, checked with CUDA mocked (the tests run on a CPU): batch sizes that fit the
device, pinned memory wherever a copy is asynchronous."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mammut_search.inference import auto_batch_size, to_device


def fake_model(kind: str, image_size: int):
    return SimpleNamespace(device=torch.device(kind), config=SimpleNamespace(
        image_encoder=SimpleNamespace(image_size=image_size)))


@pytest.mark.parametrize("gib, expected", [(8, 128), (16, 256), (80, 1024), (141, 1024)])
def test_gpu_batches_grow_with_the_memory_of_the_device(monkeypatch, gib, expected):
    seen = []

    def properties(device):
        seen.append(device)
        return SimpleNamespace(total_memory=gib * 2 ** 30)

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    assert auto_batch_size(fake_model("cuda:1", 224)) == expected
    assert seen == [torch.device("cuda:1")]  # the memory of the GPU the model is on


def test_cpu_batches_depend_on_the_input_size_only():
    assert auto_batch_size(fake_model("cpu", 224)) == 32
    assert auto_batch_size(fake_model("cpu", 96)) == 128  # capped: tiny inputs cost the decoder's time


def test_copies_are_asynchronous_only_from_pinned_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device, non_blocking=False: calls.append(non_blocking))
    to_device(torch.zeros(2), torch.device("cuda"))
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    to_device(torch.zeros(2), torch.device("cuda"))
    assert calls == [False, True]


def test_batches_for_a_gpu_model_are_pinned(model, monkeypatch, tmp_path):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self)
    path = tmp_path / "red.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(path)
    model.preprocess([Image.open(path)])
    model.preprocess_files([path])
    assert pinned == []  # a CPU model: nothing to pin
    model.device = torch.device("cuda")  # as if loaded on a GPU
    model.preprocess([Image.open(path)])
    model.preprocess_files([path])
    assert len(pinned) == 2
