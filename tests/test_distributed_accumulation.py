"""Gradient accumulation is exact: micro-batches scored against the cached latents of the whole batch give
the whole batch's gradient, and training with 2 processes (gloo) × 2 micro-batches ends with the same weights
as one process training on the global batch in one piece."""

import os

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file
from test_train import corpus, tiny_recipe  # noqa: F401 (corpus is a fixture)

from mammut_search.model.contrastive import (
    CachedLatents,
    contrastive_loss,
    word_image_loss,
)
from mammut_search.testing import end_rank
from mammut_search.train.loop import train
from mammut_search.train.recipe import TrainConfig

GROUPS = torch.tensor([0, 1, 2, 0, 3, 4])  # the first and fourth pairs share a concept
MICRO = [slice(0, 2), slice(2, 4), slice(4, 6)]


def toy_problem():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, requires_grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    texts, images = torch.randn(6, 8), torch.randn(6, 8)

    def latents(rows):
        return F.normalize(texts[rows] @ weight, dim=-1), F.normalize(images[rows] @ weight.flip(0), dim=-1)

    return weight, scale, latents


def test_micro_batches_against_cached_latents_give_the_whole_batch_gradient():
    weight, scale, latents = toy_problem()
    contrastive_loss(*latents(slice(None)), scale, GROUPS).backward()
    expected = weight.grad.clone(), scale.grad.clone()

    weight.grad = scale.grad = None
    with torch.no_grad():
        text, image = latents(slice(None))
    for j, rows in enumerate(MICRO):
        cached = CachedLatents(text, image, GROUPS, rows.start, scale_grad=j == len(MICRO) - 1)
        contrastive_loss(*latents(rows), scale, GROUPS[rows], cached=cached).backward()
    assert torch.allclose(weight.grad, expected[0], atol=1e-6)
    assert torch.allclose(scale.grad, expected[1], atol=1e-6)

    weight.grad = scale.grad = None  # the naive way: each micro-batch's own rows are its only negatives
    for rows in MICRO:
        (contrastive_loss(*latents(rows), scale, GROUPS[rows]) / len(MICRO)).backward()
    assert not torch.allclose(weight.grad, expected[0], atol=1e-3)


def test_word_loss_over_micro_batches_gives_the_whole_batch_gradient():
    """Words scored against the cached images: their gradient taken once, the images' in each micro-batch."""
    weight, scale, latents = toy_problem()
    words = torch.randn(3, 8)
    positives = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.float32)
    word_latents = lambda: F.normalize(words @ weight, dim=-1)  # noqa: E731
    word_image_loss(word_latents(), latents(slice(None))[1], scale, positives).backward()
    expected = weight.grad.clone()

    weight.grad = None
    with torch.no_grad():
        text, image = latents(slice(None))
    for j, rows in enumerate(MICRO):
        cached = CachedLatents(text, image, GROUPS, rows.start)
        live_words = word_latents() if j == 0 else word_latents().detach()
        word_image_loss(live_words, latents(rows)[1], scale, positives, cached=cached).backward()
    assert torch.allclose(weight.grad, expected, atol=1e-6)


def test_word_loss_prefers_the_images_a_word_names():
    images = F.normalize(torch.eye(4)[:, :3] + 0.01, dim=-1)  # four images; the last two look alike
    positives = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # the word names images 2 and 3
    scale = torch.tensor(10.0)
    right = word_image_loss(F.normalize(torch.tensor([[0.0, 0.0, 1.0]]), dim=-1), images, scale, positives)
    wrong = word_image_loss(F.normalize(torch.tensor([[1.0, 0.0, 0.0]]), dim=-1), images, scale, positives)
    assert right < wrong


def worker(rank, world, init_file, frame_path, recipe, out_dir):
    os.environ["WORLD_SIZE"] = str(world)  # as under torchrun: train() wraps the model in DDP
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    train(TrainConfig.from_dict(recipe), out_dir, frame=pd.read_pickle(frame_path), progress=False)
    end_rank()


@pytest.mark.slow
def test_two_processes_with_two_micro_batches_train_like_one_batch(corpus, tmp_path):  # noqa: F811
    single = tiny_recipe(tmp_path, steps=3, eval_every=100, word_weight=0.5, word_max_share=0.5)
    train(single, tmp_path / "single", frame=corpus, progress=False)

    corpus.to_pickle(tmp_path / "corpus.pkl")
    recipe = {**single.to_dict(), "accum_steps": 2}  # 12 rows a step: 2 processes × 2 micro-batches of 3
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path / "corpus.pkl"), recipe, str(tmp_path / "ddp")),
             nprocs=2, join=True)

    expected = load_file(str(tmp_path / "single" / "last" / "model.safetensors"))
    result = load_file(str(tmp_path / "ddp" / "last" / "model.safetensors"))
    assert expected.keys() == result.keys()
    for name in expected:
        assert torch.allclose(expected[name], result[name], atol=2e-5), name


def test_word_loss_moves_both_sides():
    from mammut_search.testing import tiny_model
    from mammut_search.train.objective import TrainingObjective

    model = tiny_model()
    net, tokenizer = model.net, model.tokenizer
    objective = TrainingObjective(net, cached_features=False)
    objective.word_weight = 1.0
    for p in net.parameters():
        p.requires_grad_(True)
    pixels = torch.randn(4, 3, 32, 32)
    text = tokenizer.encode(["a red apple", "an octopus", "a cat", "a dog"], 16)
    words = tokenizer.encode(["red", "cat"], 16)
    positives = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    losses = objective(pixels, text, text, torch.arange(4), None, None, word_text=words, word_positives=positives)
    net.zero_grad()
    losses["words"].backward()
    image_grads = [p.grad for name, p in net.named_parameters() if name.startswith(("img", "image_encoder"))]
    assert any(g is not None and g.abs().sum() > 0 for g in image_grads)
    assert net.token_emb.weight.grad is not None and net.token_emb.weight.grad.abs().sum() > 0
