"""One process or many (torchrun): the device, the process group, and a step's gradient over micro-batches.

`accumulate_gradients` splits each process's batch into micro-batches without changing the gradient, so N
processes × k micro-batches train exactly like one process on the whole batch.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from mammut_search.errors import UserError
from mammut_search.model.contrastive import CachedLatents
from mammut_search.train.objective import TrainingObjective
from mammut_search.train.recipe import TrainConfig


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Join the process group under torchrun (WORLD_SIZE > 1) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.threads:
        torch.set_num_threads(config.threads)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world_size > 1 else 0
    if config.device == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
    else:
        device = torch.device(config.device)
    return Runtime(device, rank, world_size)


def training_autocast(config: TrainConfig, runtime: Runtime) -> Callable[[], contextlib.AbstractContextManager]:
    """A maker of the step's autocast context: bf16 on CUDA ("auto"), on any device ("bf16"), or none ("fp32").
    bf16 keeps float32's exponent range, so small gradients do not underflow: no loss scaling (GradScaler)."""
    if config.precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"precision must be 'auto', 'bf16' or 'fp32', not {config.precision!r}")
    if config.precision == "fp32" or (config.precision == "auto" and runtime.device.type != "cuda"):
        return contextlib.nullcontext
    return lambda: torch.autocast(runtime.device.type, dtype=torch.bfloat16)


def split_batch(batch: dict[str, torch.Tensor | None], parts: int) -> list[dict[str, torch.Tensor | None]]:
    """A step's batch -> `parts` micro-batches of consecutive rows (the extra distillation texts split apart)."""
    extra, whole = {"extra_text", "extra_teacher"}, {"word_text", "word_positives"}
    first = {"label_semantic", "label_text", "label_caption", "label_groups"}  # self-contained: once
    rows, extras = len(batch["inputs"]), len(batch["extra_text"]) if batch["extra_text"] is not None else 0
    micro = []
    for j in range(parts):
        main = slice(rows * j // parts, rows * (j + 1) // parts)
        side = slice(extras * j // parts, extras * (j + 1) // parts)
        part = {k: v[main] if v is not None else None for k, v in batch.items() if k not in extra | whole | first}
        part.update({k: batch[k] for k in whole if k in batch})  # every micro-batch scores all the words
        part.update({k: batch[k] if j == 0 else None for k in first if k in batch})
        for k in extra:
            part[k] = batch[k][side] if batch[k] is not None and side.stop > side.start else None
        micro.append(part)
    return micro


def loss_counts(batch: dict[str, torch.Tensor | None], pad_id: int) -> list[int]:
    """What each loss averages over: [caption target tokens, distillation texts, contrastive rows]."""
    tokens = int((batch["caption"][:, 1:] != pad_id).sum())
    texts = 0
    if batch["teacher"] is not None:
        texts = len(batch["text"]) + (len(batch["extra_text"]) if batch["extra_text"] is not None else 0)
    return [tokens, texts, len(batch["inputs"])]


def accumulate_gradients(model: nn.Module, objective: TrainingObjective, batch: dict[str, torch.Tensor | None],
                         parts: int, runtime: Runtime,
                         autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, torch.Tensor]:
    """Forward and backward over `parts` micro-batches of this process's batch, leaving in the parameters'
    .grad the gradient of the global batch's loss (DDP averages it over processes); returns this process's
    losses, for the log.

    Each loss is a mean over caption tokens, distillation texts or contrastive rows: a micro-batch's term is
    weighted by its share of the global count times the number of processes (DDP divides by it), so that
    micro-batches and processes add up to the global mean even when their counts differ. The contrastive
    loss is not a sum over rows (every row's negatives are the whole batch): each micro-batch is scored
    against the cached latents of the rest (contrastive.CachedLatents). DDP all-reduces gradients only in
    the last micro-batch's backward."""
    config = objective.net.config
    micro = split_batch(batch, parts)
    counts = [loss_counts(m, config.pad_id) for m in micro]
    local = [sum(column) for column in zip(*counts)]
    totals = torch.tensor(local, dtype=torch.int64, device=runtime.device)
    if runtime.world_size > 1:
        dist.all_reduce(totals)
    totals = [max(1, int(t)) for t in totals]
    cached_text = cached_image = None
    if parts > 1 and config.contrastive_loss_weight > 0:
        with torch.no_grad(), autocast():
            latents = [objective.contrastive_latents(m["inputs"], m["text"], m["keep_index"]) for m in micro]
        cached_text, cached_image = torch.cat([t for t, _ in latents]), torch.cat([i for _, i in latents])
    words = len(batch["word_text"]) if batch.get("word_text") is not None else 0
    word_total = torch.tensor([words], device=runtime.device)
    if runtime.world_size > 1:
        dist.all_reduce(word_total)
    word_total = max(1, int(word_total))
    world, logged, start = runtime.world_size, {}, 0
    for j, (part, (tokens, texts, rows)) in enumerate(zip(micro, counts)):
        last = j == parts - 1
        shares = {"caption": tokens * world / totals[0], "distill": texts * world / totals[1],
                  "contrastive": local[2] * world / totals[2], "words": words * world / word_total,
                  "labels": 1.0}
        cached = None
        if cached_text is not None:  # the last micro-batch trains the logit scale: DDP's synced backward
            # must reach every parameter
            cached = CachedLatents(cached_text, cached_image, batch["groups"], start, scale_grad=last)
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        with model.no_sync() if ddp and not last else contextlib.nullcontext():
            with autocast():
                # the words' gradient is taken once, in the first micro-batch; the images' in each
                losses = model(**part, cached=cached, shares=shares, word_grad=j == 0)
            losses["loss"].backward()
        # the log shows this process's means: the micro-batches weighted by their local counts
        weights = {"caption": tokens / max(1, local[0]), "distill": texts / max(1, local[1]),
                   "contrastive": 1 / parts, "words": 1 / parts, "labels": 1.0}
        for name, weight in weights.items():
            if name in losses:
                logged[name] = logged.get(name, 0.0) + weight * losses[name].detach()
        start += rows
    logged["loss"] = objective.combine(logged)
    return logged


def broadcast_flag(flag: bool, runtime: Runtime) -> bool:
    if runtime.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item())
