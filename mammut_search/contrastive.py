"""Contrastive loss over a batch that may be spread across processes (torch.distributed).

Whether training is distributed is decided at every call, so a model built before
`init_process_group` (or used afterwards for single-process evaluation) does the right thing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def is_distributed() -> bool:
    """True when a process group with more than one rank is active right now."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Local rows (b ...) -> (all ranks' rows concatenated in rank order (B ...), offset of this rank's rows).

    Ranks may hold different batch sizes. Gradients flow back to every rank's own rows: the backward of
    `torch.distributed.nn.all_gather` sums the contributions that all ranks' losses make to them.
    """
    from torch.distributed.nn.functional import all_gather

    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = F.pad(t, (0,) * (2 * (t.ndim - 1)) + (0, max(sizes) - t.shape[0]))
    gathered = all_gather(padded)
    rows = torch.cat([g[:n] for g, n in zip(gathered, sizes)])
    return rows, sum(sizes[: dist.get_rank()])


def contrastive_loss(
    text_latents: torch.Tensor,
    image_latents: torch.Tensor,
    logit_scale: torch.Tensor,
    group_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between unit-norm text (b d) and image (b d) latents.

    Under torch.distributed, each rank scores its own rows against the global batch, and the labels index
    that global batch. `group_ids` (b): pairs with the same id (e.g. images of one concept) count as
    positives of each other rather than negatives; the target spreads evenly over them.
    """
    offset, all_texts, all_images = 0, text_latents, image_latents
    all_groups = group_ids
    if is_distributed():
        all_texts, offset = gather_with_grad(text_latents)
        all_images, _ = gather_with_grad(image_latents)
        if group_ids is not None:
            all_groups, _ = gather_with_grad(group_ids[:, None].float())
            all_groups = all_groups[:, 0].long()
    local = torch.arange(text_latents.shape[0], device=text_latents.device)
    text_to_image = logit_scale * text_latents @ all_images.t()  # (b B)
    image_to_text = logit_scale * image_latents @ all_texts.t()  # (b B)
    if group_ids is None:
        labels = local + offset
        return 0.5 * (F.cross_entropy(text_to_image, labels) + F.cross_entropy(image_to_text, labels))
    positives = (group_ids[:, None] == all_groups[None, :]).float()
    targets = positives / positives.sum(dim=-1, keepdim=True)
    loss_t = torch.sum(-targets * F.log_softmax(text_to_image, dim=-1), dim=-1).mean()
    loss_i = torch.sum(-targets * F.log_softmax(image_to_text, dim=-1), dim=-1).mean()
    return 0.5 * (loss_t + loss_i)
