"""Training's losses for a batch of (caption, image) pairs, as the training loop computes them."""

import torch

from mammut_search.train.objective import TrainingObjective


def training_losses(net, ids: torch.Tensor, pixels: torch.Tensor,
                    groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Caption ids (b n) and pixels (b 3 H W), each caption its image's captioning target too; pairs sharing a
    group id (b) are positives of each other (each pair its own group when None)."""
    groups = torch.arange(len(ids)) if groups is None else groups
    return TrainingObjective(net, cached_features=False)(pixels, ids, ids, groups, None, None)
