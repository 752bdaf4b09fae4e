"""A training run never loses a run, a best checkpoint or the bundled model: a taken run folder is refused
(unless resumed or overwritten), a resume writes only where it resumes from, an export replaces no checkpoint
unless asked, a killed checkpoint swap is recovered, and a full disk during a save is one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mammut_search import atomic
from mammut_search.errors import UserError
from mammut_search.bundled import bundled_checkpoint_dir
from mammut_search.model.checkpoint import WEIGHTS, file_sha256, save_checkpoint
from mammut_search.testing import tiny_model
from mammut_search.train.loop import train
from mammut_search.train.run_folder import save_run_checkpoint
from mammut_search.train.recipe import load_config
from test_train import corpus, tiny_recipe  # noqa: F401  (a fixture, used by name)


def weights_sha(checkpoint) -> str:
    return file_sha256(checkpoint / WEIGHTS)


def test_a_run_folder_that_holds_a_run_is_refused_saying_how_far_it_got(corpus, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    config = tiny_recipe(tmp_path, steps=6, eval_every=2, save_every=2)
    assert train(config, run, frame=corpus, progress=False, stop_at=4) == {}
    best = weights_sha(run / "best")
    log = (run / "log.jsonl").read_text()
    with pytest.raises(UserError, match=r"holds a run \(step 4 of 6, best at step [24]\).*--resume.*--overwrite"):
        train(config, run, frame=corpus, progress=False)
    assert weights_sha(run / "best") == best and (run / "log.jsonl").read_text() == log
    train(config, run, frame=corpus, progress=False, resume=run)  # what the message says works
    with pytest.raises(UserError, match=r"step 6 of 6"):
        train(config, run, frame=corpus, progress=False)
    card = train(config, run, frame=corpus, progress=False, overwrite=True)
    validations = [line for line in (run / "log.jsonl").read_text().splitlines() if '"validation"' in line]
    assert card["steps"] == 6 and len(validations) == 3  # a fresh log: steps 2, 4 and 6


def test_resume_writes_only_into_the_run_it_resumes(corpus, tmp_path):  # noqa: F811
    config = tiny_recipe(tmp_path, steps=4, eval_every=2, save_every=2)
    a, b = tmp_path / "a", tmp_path / "b"
    train(config, a, frame=corpus, progress=False, stop_at=2)
    train(config, b, frame=corpus, progress=False)
    before = {d: (weights_sha(d / "best"), (d / "log.jsonl").read_text()) for d in (a, b)}
    for out in (b, tmp_path / "new"):
        with pytest.raises(UserError, match="--resume"):
            train(config, out, frame=corpus, progress=False, resume=a)
    assert not (tmp_path / "new").exists()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UserError, match="a file, not a run folder"):
        train(config, tmp_path / "a-file", frame=corpus, progress=False)
    assert {d: (weights_sha(d / "best"), (d / "log.jsonl").read_text()) for d in (a, b)} == before
    train(config, a, frame=corpus, progress=False, resume=a / "last")  # its last/ names the same run


def test_export_replaces_no_checkpoint_unless_asked(corpus, tmp_path):  # noqa: F811
    assert load_config("data/recipes/default.toml").export == ""
    assert load_config("data/recipes/validation.toml").export == ""
    bundled = bundled_checkpoint_dir()
    shipped = weights_sha(bundled)
    for target in (bundled, tmp_path / "run-a" / "best"):
        if target != bundled:
            train(tiny_recipe(tmp_path, steps=2, eval_every=2), tmp_path / "run-a",
                  frame=corpus, progress=False)
        with pytest.raises(UserError, match="export.*--overwrite"):
            train(tiny_recipe(tmp_path, steps=2, export=f"'{target}'"), tmp_path / "run-b", frame=corpus,
                  progress=False)
        assert not (tmp_path / "run-b").exists()  # refused before any work
    assert weights_sha(bundled) == shipped


def test_a_kill_between_the_two_renames_of_a_swap_is_recovered(tmp_path, monkeypatch):
    final, tmp = tmp_path / "best", tmp_path / ".best.tmp-1"
    for folder, text in ((final, "old"), (tmp, "new")):
        folder.mkdir()
        (folder / "f").write_text(text)
    renames = []

    def killed_after_one_rename(src, dst):
        if renames:
            raise KeyboardInterrupt  # the process dies here
        renames.append(src)
        os.rename(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed_after_one_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic.swap_in(tmp, final)
    monkeypatch.undo()
    assert not final.exists()  # between the renames: only best.old holds the checkpoint
    atomic.recover_swap(final)
    assert (final / "f").read_text() == "old" and not final.with_name("best.old").exists()


def test_a_resume_after_a_killed_best_swap_keeps_the_best(corpus, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    config = tiny_recipe(tmp_path, steps=20, eval_every=5, save_every=100)
    train(config, run, frame=corpus, progress=False, stop_at=7)  # best from step 5, last from step 7
    best = load_file(str(run / "best" / WEIGHTS))
    os.rename(run / "best", run / "best.old")  # killed between best -> best.old and tmp -> best
    (run / ".best.tmp-99999").mkdir()
    card = train(tiny_recipe(tmp_path, steps=7, eval_every=5), run, frame=corpus,
                 progress=False, resume=run)
    assert card["best_step"] == 5
    kept = load_file(str(run / "best" / WEIGHTS))
    assert all(torch.equal(best[k], kept[k]) for k in best)
    assert not (run / ".best.tmp-99999").exists() and not (run / "best.old").exists()


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    model = tiny_model()
    best = tmp_path / "best"
    save_run_checkpoint(best, model.net, model.tokenizer, None)
    before = weights_sha(best)

    def weights_disk_full(tensors, path, metadata=None):  # what safetensors raises when the disk fills
        with open(path, "wb") as f:
            f.write(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def state_disk_full(state, path):  # what torch.save raises when the disk fills
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    for target, fake, says in (("mammut_search.model.checkpoint.save_file", weights_disk_full, "No space left"),
                               ("torch.save", state_disk_full, "disk full")):
        with monkeypatch.context() as patch:
            patch.setattr(target, fake)
            with pytest.raises(UserError, match=says) as refused:
                save_run_checkpoint(best, model.net, model.tokenizer, {"step": 1})
        assert "\n" not in str(refused.value) and str(best) in str(refused.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["best"] and weights_sha(best) == before


def test_checkpoint_files_have_the_modes_of_any_file_the_user_writes(tmp_path):
    model = tiny_model()
    save_checkpoint(tmp_path / "ckpt", model.net, model.tokenizer)
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {name: 0o666 & ~mask for name in modes} and len(modes) == 3


def test_train_without_a_recipe_is_the_bundled_recipe(tmp_path, capsys):
    import json

    from mammut_search.cli import main
    from mammut_search.train.recipe import TrainConfig

    assert main(["train", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in printed.items() if k != "model"} == \
        {k: v for k, v in json.loads(json.dumps(TrainConfig().to_dict())).items() if k != "model"}
    assert printed["model"]["depth"] == 2 and printed["model"]["image_encoder"]["grid"] == 3  # spelled out
    recipe = tmp_path / "printed.toml"  # and it reads back as the same recipe
    recipe.write_text("[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in printed["model"].items()
                                             if not isinstance(v, dict)))
    assert json.loads(json.dumps(load_config(recipe).resolved()["model"])) == printed["model"]


@pytest.mark.parametrize("damage", [b"garbage", b"", "a dict without what resuming reads", "a list"])
def test_resuming_from_a_damaged_training_state_is_one_line_naming_it(tmp_path, capsys, damage):
    from mammut_search.cli import main

    state = tmp_path / "run" / "last" / "train_state.pt"
    state.parent.mkdir(parents=True)
    if isinstance(damage, bytes):
        state.write_bytes(damage)
    else:
        torch.save({"step": 3} if damage.startswith("a dict") else [1], state)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {state}: damaged training state") and err.count("\n") == 1
