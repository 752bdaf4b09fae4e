"""Argument types shared by the subcommands: a value this program cannot use is refused while the arguments are
parsed, in one line, before any model is loaded."""

from __future__ import annotations

import argparse

DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: cuda when available)"


def device_option(text: str) -> str:
    """An argparse type: `cpu`, `cuda`, `cuda:N` of a GPU this machine has, or `mps` where torch has it."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: give cpu, cuda or cuda:N")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees no Apple GPU here; use cpu")
    from mammut_search.inference import missing_gpu

    missing = missing_gpu(device)
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r}: {missing}; use cpu")
    return text
