"""Contrastive loss over a batch that may be spread across processes (torch.distributed).

Whether training is distributed is decided at every call, so a model built before
`init_process_group` (or used afterwards for single-process evaluation) does the right thing.

Gradient accumulation without changing the loss: the latents of a process's whole batch are first computed
without gradients (`CachedLatents`); each micro-batch is then recomputed with gradients and scored against
that whole batch (and, distributed, the global batch). The loss is a function of all latents, so the
gradients of the micro-batches' own rows, summed, are exactly the whole batch's gradient (as in GradCache,
Gao et al. 2021, https://arxiv.org/abs/2101.06983).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class CachedLatents:
    """A process's whole batch, computed without gradients, around one micro-batch recomputed with them."""

    text: torch.Tensor  # (b d) unit-norm text latents of every row of the process's batch
    image: torch.Tensor  # (b d) unit-norm image latents
    groups: torch.Tensor | None  # (b) concept ids
    start: int  # the micro-batch's first row
    scale_grad: bool = True  # whether this micro-batch's loss trains the logit scale (exactly one should)

    def images_around(self, image: torch.Tensor) -> torch.Tensor:
        """The micro-batch's live image latents (m d) in place of their cached copies -> (b d)."""
        return torch.cat([self.image[:self.start], image, self.image[self.start + image.shape[0]:]])

    def around(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch's live latents (m d) in place of their cached copies -> (b d) text and image."""
        end = self.start + text.shape[0]
        return torch.cat([self.text[:self.start], text, self.text[end:]]), self.images_around(image)


def contrastive_loss(
    text_latents: torch.Tensor,
    image_latents: torch.Tensor,
    logit_scale: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    cached: CachedLatents | None = None,
    local: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE between unit-norm text (b d) and image (b d) latents.

    Under torch.distributed, each rank scores its own rows against the global batch, and the labels index
    that global batch. `group_ids` (b): pairs with the same id (e.g. images of one concept) count as
    positives of each other rather than negatives; the target spreads evenly over them. `cached`: the latents
    are one micro-batch (m d) of the batch in `cached`; the loss is the whole batch's, its gradient reaches
    only the micro-batch (`group_ids` is then ignored for `cached.groups`). `local`: this process's rows only,
    even under torch.distributed.
    """
    if cached is not None:
        text_latents, image_latents = cached.around(text_latents, image_latents)
        group_ids = cached.groups
        if not cached.scale_grad:  # every micro-batch computes the same loss: count its scale gradient once
            logit_scale = logit_scale.detach()
    offset, all_texts, all_images = 0, text_latents, image_latents
    all_groups = group_ids
    if is_distributed() and not local:
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


def word_image_loss(
    word_latents: torch.Tensor,
    image_latents: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor,
    *,
    cached: CachedLatents | None = None,
    local: bool = False,
) -> torch.Tensor:
    """Multi-positive InfoNCE from single words to the batch's images: word k (w d) should pick out the
    images (b d) whose captions use it, among all the (global) batch's images.

    positives (w B): 1 where word k names image c of the global batch, columns in the order the ranks'
    batches are gathered. A word stands for what its images share, so the text side learns what each word
    means on its own and can compose names it has never seen. `cached`: the images are one micro-batch of the
    batch in `cached` (as in `contrastive_loss`).
    """
    if cached is not None:
        image_latents = cached.images_around(image_latents)
    all_images = gather_with_grad(image_latents)[0] if is_distributed() else image_latents
    logits = logit_scale * word_latents @ all_images.t()  # (w B)
    targets = positives / positives.sum(dim=-1, keepdim=True).clamp(min=1)
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
