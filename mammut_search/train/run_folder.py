"""A run folder: `last/` and `best/` checkpoints (last/ with train_state.pt, what resuming needs), log.jsonl and
training_card.json. Checkpoints are written to a fresh folder and swapped into place, so a crash never destroys
the only good copy; a folder that holds a run is never written over unless asked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from mammut_search.atomic import recover_swap, swap_in
from mammut_search.errors import UserError
from mammut_search.model.checkpoint import save_checkpoint
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.tokenizer import Tokenizer
from mammut_search.train.recipe import TrainConfig

TRAIN_STATE = "train_state.pt"


def save_run_checkpoint(directory: Path, net: MaMMUT, tokenizer: Tokenizer, state: dict | None,
                        dtype: torch.dtype = torch.float32) -> str:
    """Write a checkpoint (and train_state.pt beside it, when given) to a fresh folder, then swap it in. A write
    that fails (a full disk) leaves the previous checkpoint as it was, no partial folder, and says so in a line."""
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        sha = save_checkpoint(tmp, net, tokenizer, dtype=dtype)
        if state is not None:
            save_train_state(state, tmp / TRAIN_STATE)
        swap_in(tmp, directory)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{directory}: cannot save the checkpoint ({e.strerror or e}); "
                        "the one saved before is kept") from None
    return sha


def save_train_state(state: dict, path: Path) -> None:
    """torch.save, whose failed writes (a full disk) are RuntimeErrors, failing with an OSError like any file."""
    try:
        torch.save(state, path)
    except RuntimeError as e:
        raise OSError(f"{path.name} not written in full, is the disk full? ({str(e).splitlines()[0]})") from None


def run_recipe(path: str | Path) -> TrainConfig:
    """The recipe a run directory was trained with (from its train_state.pt)."""
    return TrainConfig.from_dict(load_train_state(Path(path))["recipe"])


STATE_KEYS = ("recipe", "step", "best_score", "best_step", "history", "optimizer", "torch_rng")  # what resuming reads


def load_train_state(path: Path) -> dict:
    """The train_state.pt of a run directory or its `last/`; a UserError naming it when it is unreadable or lacks
    what resuming reads (a crash while it was copied by hand, a file from elsewhere)."""
    file = find_resume_dir(path) / TRAIN_STATE
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises anything from EOFError to ValueError
        state, reason = None, f"{type(e).__name__}: {e}".splitlines()[0]
    else:
        missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else []
        reason = "" if isinstance(state, dict) and not missing else f"no {', '.join(missing or ['dictionary'])}"
    if reason:
        raise UserError(f"{file}: damaged training state ({reason}); the run cannot be resumed from it, only "
                        f"started again (--overwrite)")
    return state


def find_resume_dir(path: Path) -> Path:
    """A run directory or its `last/` checkpoint -> the folder holding train_state.pt."""
    recover_swap(path / "last")
    for candidate in (path, path / "last"):
        if (candidate / TRAIN_STATE).is_file():
            return candidate
    raise UserError(f"{path}: no {TRAIN_STATE} found there or in its last/; give a run directory to resume")


def run_root(resume: Path) -> Path:
    """The run directory of a `--resume` argument (the run folder itself, or its `last/`)."""
    resume_dir = find_resume_dir(resume)
    return resume_dir.parent if resume_dir.name == "last" else resume_dir


RUN_FILES = ("log.jsonl", "last", "best", "training_card.json")


def claim_run_dir(out_dir: Path, resume: Path | None, *, overwrite: bool, main: bool = True) -> None:
    """Make sure a run never writes over another: a new run needs an empty folder (or `overwrite`, which
    clears the old run's files first); a resumed one writes only into the folder it resumes from."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: a file, not a run folder; give --out a folder (new or empty)")
    if resume is not None:
        root = run_root(resume)
        if out_dir.resolve() != root.resolve():
            raise UserError(f"--resume {resume} continues that run in {root}; --out {out_dir} is another folder "
                            f"(leave --out out, or copy the run there first)")
        for name in ("last", "best"):
            recover_swap(out_dir / name)
        return
    held = [name for name in RUN_FILES if (out_dir / name).exists()]
    if held and not overwrite:
        raise UserError(f"{out_dir} holds a run ({run_progress(out_dir)}); pass --resume {out_dir} to continue it, "
                        "or --overwrite to replace it")
    if held and main:
        for name in (*held, "last.old", "best.old"):
            path = out_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run_progress(out_dir: Path) -> str:
    """How far the run in `out_dir` got, for messages: from its last/train_state.pt, else its files."""
    try:
        state = torch.load(find_resume_dir(out_dir) / TRAIN_STATE, map_location="cpu", weights_only=False)
        best = f", best at step {state['best_step']}" if state.get("best_step", -1) >= 0 else ""
        return f"step {state['step']} of {state['recipe']['steps']}{best}"
    except Exception:  # noqa: BLE001 - a damaged state file still means the folder is taken
        return "its " + ", ".join(name for name in RUN_FILES if (out_dir / name).exists())


def check_export(config: TrainConfig, *, overwrite: bool) -> None:
    """An export never replaces a checkpoint (the bundled one above all) unless asked to."""
    if not config.export:
        return
    from mammut_search.bundled import bundled_checkpoint_dir

    target = Path(config.export)
    bundled = target.resolve() == bundled_checkpoint_dir().resolve()
    if (bundled or (target / "config.json").exists()) and not overwrite:
        what = "the bundled checkpoint" if bundled else "a checkpoint"
        raise UserError(f"export = {config.export!r} is {what}; export elsewhere, or pass --overwrite to replace it")
