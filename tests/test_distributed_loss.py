"""The contrastive loss under torch.distributed (2 CPU processes over gloo) equals single-process training
on the concatenated batch: same loss, same gradients after DDP's averaging."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mammut_search.testing import end_rank, tiny_model
from model_testkit import training_losses

TEXTS = ["a red apple", "an octopus", "a black dog", "the blue sea", "a green tree", "a yellow star"]


def batch(model):
    torch.manual_seed(0)
    ids = model.tokenizer.encode(TEXTS, 16)
    pixels = torch.randn(len(TEXTS), 3, 32, 32)
    groups = torch.tensor([0, 1, 2, 0, 3, 4])  # the first and fourth pairs share a concept
    return ids, pixels, groups


def grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def worker(rank, world, init_file, out_file, split):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = tiny_model(seed=0)  # built after the group exists; distributed is decided per call anyway
    ids, pixels, groups = batch(model)
    part = slice(*split[rank])
    losses = training_losses(model.net, ids[part], pixels[part], groups[part])
    losses["contrastive"].backward()
    for p in model.net.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world  # what DistributedDataParallel does
    loss = losses["contrastive"].detach().clone()
    dist.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": grads(model.net)}, out_file)
    end_rank()


@pytest.mark.slow
def test_two_process_contrastive_loss_matches_single_process(tmp_path):
    model = tiny_model(seed=0)
    ids, pixels, groups = batch(model)
    single = training_losses(model.net, ids, pixels, groups)
    single["contrastive"].backward()
    expected = grads(model.net)

    out = tmp_path / "out.pt"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(out), [(0, 3), (3, 6)]), nprocs=2, join=True)
    result = torch.load(out)
    assert torch.allclose(result["loss"], single["contrastive"].detach(), atol=1e-5)
    assert expected.keys() == result["grads"].keys()
    for name, grad in expected.items():
        assert torch.allclose(grad, result["grads"][name], atol=1e-5), name


@pytest.mark.slow
def test_uneven_batches_gather_every_row(tmp_path):
    out = tmp_path / "out.pt"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(out), [(0, 4), (4, 6)]), nprocs=2, join=True)
    assert torch.isfinite(torch.load(out)["loss"])
