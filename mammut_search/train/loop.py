"""Training MaMMUT: a recipe (TOML + overrides) -> a checkpoint directory with a training card.

One process on CPU or GPU (bf16 autocast), or DDP under `torchrun` (the contrastive loss gathers the global
batch); `accum_steps` splits each process's batch into micro-batches without changing the gradient (see
`accumulate_gradients`), so N processes × k micro-batches train exactly like one process on the whole batch.
The image encoder's input to its trainable part is cached once (frozen EfficientNet features, or pixels when
the whole encoder trains). Batches are a function of (seed, step), so a run is reproducible and
`resume` continues exactly: model, optimizer, schedule and step come back from `last/`.

Run directory: `last/` and `best/` are checkpoint directories (config.json, model.safetensors,
tokenizer.json); `last/train_state.pt` beside them holds what resuming needs. Each is written to a fresh
folder and swapped into place, so a crash never destroys the only good copy. `log.jsonl` has one line per log.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mammut_search.atomic import recover_swap, swap_in
from mammut_search.errors import UserError
from mammut_search.model.checkpoint import load_checkpoint, save_checkpoint
from mammut_search.model.config import ImageEncoderConfig, MammutConfig
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.tokenizer import Tokenizer
from mammut_search.train import card as te
from mammut_search.train import data as td
from mammut_search.train.distributed import (
    Runtime,
    accumulate_gradients,
    broadcast_flag,
    setup_runtime,
    training_autocast,
)
from mammut_search.train.objective import TrainingObjective
from mammut_search.train.prepare import (
    PreparedData,
    build_tokenizer,
    class_embeddings,
    imagenet_label_texts,
    caption_table,
    prepare_data,
    step_batch,
    training_rows,
)
from mammut_search.train.recipe import TrainConfig

TRAIN_STATE = "train_state.pt"


# ----- building the network -----

def build_network(config: TrainConfig, tokenizer: Tokenizer, minilm_ids: list[int] | None) -> MaMMUT:
    """A fresh MaMMUT for the recipe: pretrained image encoder, token embeddings from MiniLM if asked."""
    fields = dict(config.model)
    fields["image_encoder"] = ImageEncoderConfig(**fields.get("image_encoder", {}))
    model_config = MammutConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                                eos_id=tokenizer.eos_id, **fields)
    torch.manual_seed(config.seed)
    net = MaMMUT(model_config, pretrained_encoder=model_config.image_encoder.kind == "efficientnet_lite0")
    if config.text_init and config.tokenizer == "minilm":
        from mammut_search.train.text_init import initial_token_embeddings

        with torch.no_grad():
            net.token_emb.weight.copy_(initial_token_embeddings(minilm_ids, model_config.dim))
    return net


def uses_cached_features(model_config: MammutConfig) -> bool:
    """Frozen EfficientNet: its features can be cached; otherwise the cache holds pixels."""
    image = model_config.image_encoder
    return image.kind == "efficientnet_lite0" and image.trainable_blocks == 0


def make_optimizer(config: TrainConfig, objective: TrainingObjective) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, queries and the temperature; slower pretrained embeddings."""
    decay, no_decay, embedding = [], [], []
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("token_emb.weight"):
            embedding.append(p)
        elif p.ndim < 2 or "queries" in name or "cls_token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    embedding_lr = config.lr * (config.embedding_lr_scale if config.text_init else 1.0)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "lr_base": config.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr_base": config.lr},
        {"params": embedding, "weight_decay": 0.0, "lr_base": embedding_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    for group in optimizer.param_groups:
        group["lr"] = group["lr_base"]
    return optimizer


def lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----- checkpoints -----

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
            torch.save(state, tmp / TRAIN_STATE)
        swap_in(tmp, directory)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{directory}: cannot save the checkpoint ({e.strerror or e}); "
                        "the one saved before is kept") from None
    return sha


def run_recipe(path: str | Path) -> TrainConfig:
    """The recipe a run directory was trained with (from its train_state.pt)."""
    state = torch.load(find_resume_dir(Path(path)) / TRAIN_STATE, map_location="cpu", weights_only=False)
    return TrainConfig.from_dict(state["recipe"])


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
    from mammut_search.inference import default_checkpoint_dir

    target = Path(config.export)
    bundled = target.resolve() == default_checkpoint_dir().resolve()
    if (bundled or (target / "config.json").exists()) and not overwrite:
        what = "the bundled checkpoint" if bundled else "a checkpoint"
        raise UserError(f"export = {config.export!r} is {what}; export elsewhere, or pass --overwrite to replace it")


# ----- the loop -----

def hardware() -> dict[str, Any]:
    """What the run ran on, for the training card."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def train(config: TrainConfig, out_dir: str | Path, *, resume: str | Path | None = None,
          frame: pd.DataFrame | None = None, progress: bool = True, stop_at: int | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Run the recipe; returns the training card (empty when stopped at `stop_at` before the last step).

    `out_dir` must hold no run, unless `resume` is that run or `overwrite` clears it (and lets `export` replace
    a checkpoint). `frame` (a manifest DataFrame) replaces reading config.manifest; `stop_at` ends this process
    at that step after saving `last/`, as an interruption would (a later `resume` carries on)."""
    out_dir = Path(out_dir)
    runtime = setup_runtime(config)
    claim_run_dir(out_dir, Path(resume) if resume is not None else None, overwrite=overwrite, main=runtime.main)
    check_export(config, overwrite=overwrite)
    autocast = training_autocast(config, runtime)
    if config.accum_steps < 1 or config.batch_size < config.accum_steps * runtime.world_size:
        raise UserError(f"accum_steps={config.accum_steps}: needs 1 ≤ accum_steps ≤ batch_size / processes "
                        f"({config.batch_size} / {runtime.world_size}); lower accum_steps or raise batch_size")
    started = time.time()
    if frame is None:
        frame = td.read_manifest(config.manifest, images_root=config.images_root or None)
    state = None
    if resume is not None:
        resume_dir = find_resume_dir(Path(resume))
        net, tokenizer, _ = load_checkpoint(resume_dir)
        state = torch.load(resume_dir / TRAIN_STATE, map_location="cpu", weights_only=False)
        net.config.training = {}
    else:
        texts = caption_table(training_rows(config, frame))
        if config.label_weight > 0 and config.model.get("semantic_dim"):
            texts += [t for names in imagenet_label_texts(config)[1] for t in names]
        tokenizer, minilm_ids = build_tokenizer(config, texts)
        net = build_network(config, tokenizer, minilm_ids)
        if net.config.semantic_dim:
            with torch.no_grad():
                net.class_embeddings.copy_(class_embeddings(config, progress=runtime.main))
    cached_features = uses_cached_features(net.config)
    net.to(runtime.device)
    data = prepare_data(config, net.eval(), tokenizer, runtime, frame, cached_features)

    distill_dim = data.teacher.shape[1] if data.teacher is not None else 0
    objective = TrainingObjective(net, distill_dim=distill_dim, cached_features=cached_features)
    objective.distill_weight = config.distill_weight
    objective.word_weight = config.word_weight
    objective.word_moves_images = config.word_moves_images
    objective.label_weight = config.label_weight
    if objective.distill_head is not None:
        torch.manual_seed(config.seed + 1)
        nn.init.normal_(objective.distill_head.weight, std=net.config.dim_latents ** -0.5)
    objective.to(runtime.device)
    optimizer = make_optimizer(config, objective)
    step, best_score, best_step, evals_without_gain, history = 0, -math.inf, -1, 0, []
    elapsed_before = 0.0
    if state is not None:
        if objective.distill_head is not None and "distill_head" in state:
            objective.distill_head.load_state_dict(state["distill_head"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_score, best_step = state["step"], state["best_score"], state["best_step"]
        evals_without_gain, history = state["evals_without_gain"], state["history"]
        elapsed_before = state.get("elapsed_s", 0.0)
        torch.set_rng_state(state["torch_rng"])
    model = objective
    if runtime.world_size > 1:
        some_loss_off = net.config.caption_loss_weight == 0 or net.config.contrastive_loss_weight == 0
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=some_loss_off)

    out_dir.mkdir(parents=True, exist_ok=True)
    if runtime.main:  # folders of checkpoint saves that a kill interrupted
        for leftover in out_dir.glob(".*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    log_path = out_dir / "log.jsonl"
    seen_split = config.val_split if any(s.name == config.val_split for s in data.eval_splits) else None
    unseen_split = config.val_unseen_split or None
    by_domain = judged_by_domain(config, data)

    def evaluate() -> dict:
        return te.evaluate_retrieval(net, tokenizer, data.eval_splits, features=cached_features, device=runtime.device)

    def train_state() -> dict:
        return {"optimizer": optimizer.state_dict(), "step": step, "best_score": best_score, "best_step": best_step,
                "evals_without_gain": evals_without_gain, "history": history, "torch_rng": torch.get_rng_state(),
                "elapsed_s": elapsed_before + time.time() - started, "recipe": config.to_dict(),
                "distill_head": objective.distill_head.state_dict() if objective.distill_head is not None else None}

    net.train()
    bar = tqdm(total=config.steps, initial=step, desc="training", unit="step", disable=not (progress and runtime.main))
    window_start, window_samples = time.time(), 0
    stop = False
    while step < config.steps and not stop:
        for group in optimizer.param_groups:
            group["lr"] = group["lr_base"] * lr_factor(config, step)
        batch = step_batch(config, data, tokenizer, runtime, step, cached_features)
        optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(model, objective, batch, config.accum_steps, runtime, autocast)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in objective.parameters() if p.requires_grad], config.grad_clip)
        optimizer.step()
        step += 1
        window_samples += len(batch["inputs"]) * runtime.world_size
        bar.update(1)
        if runtime.main and (step % config.log_every == 0 or step == config.steps):
            now = time.time()
            entry = {"step": step, "lr": optimizer.param_groups[0]["lr"],
                     "samples_per_s": window_samples / max(1e-9, now - window_start),
                     **{k: round(float(v.detach()), 4) for k, v in losses.items()},
                     "temperature": round(float(net.logit_scale.detach().exp()), 2)}
            window_start, window_samples = now, 0
            bar.set_postfix(loss=entry["loss"], cap=entry.get("caption"), con=entry.get("contrastive"))
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        at_end = step == config.steps
        if data.eval_splits and (seen_split or by_domain) and (step % config.eval_every == 0 or at_end):
            results = evaluate() if runtime.main else {}
            if runtime.main:
                score = (te.domain_score(results) if by_domain
                         else te.selection_score(results, seen_split, unseen_split))
                history.append({"step": step, "score": score, **{s: r for s, r in results.items()}})
                summary = {s: {k: round(v, 3) for k, v in r.items() if k in ("t2i_R@1", "t2i_R@5", "i2t_R@1",
                                                                             "t2i_sentence_R@1")}
                           for s, r in results.items()}
                bar.write(f"validation step={step} score={score:.3f} {json.dumps(summary)}")
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "validation": results, "score": score}) + "\n")
                if score > best_score:
                    best_score, best_step, evals_without_gain = score, step, 0
                    save_run_checkpoint(out_dir / "best", net, tokenizer, None)
                else:
                    evals_without_gain += 1
                if config.patience and evals_without_gain >= config.patience:
                    bar.write(f"stopping early: no better validation score for {config.patience} evaluations")
                    stop = True
                minutes = (elapsed_before + time.time() - started) / 60
                if config.max_minutes and minutes >= config.max_minutes:
                    bar.write(f"stopping: the time budget of {config.max_minutes} minutes is spent")
                    stop = True
            stop = broadcast_flag(stop, runtime)
        interrupted = stop_at is not None and step >= stop_at and not at_end
        if runtime.main and (step % config.save_every == 0 or at_end or stop or interrupted):
            save_run_checkpoint(out_dir / "last", net, tokenizer, train_state())
        if interrupted:
            bar.close()
            return {}
    bar.close()
    if runtime.world_size > 1:
        dist.barrier()
    card: dict[str, Any] = {}
    if runtime.main:
        wall = elapsed_before + time.time() - started
        card = finish(config, out_dir, net, tokenizer, data, runtime, cached_features,
                      step=step, best_step=best_step, history=history, wall_s=wall)
    if runtime.world_size > 1:
        dist.barrier()
    return card


def judged_by_domain(config: TrainConfig, data: PreparedData) -> bool:
    """Whether the validation sets are the recipe's domains (held-out styles, objects, photos), so the checkpoint
    is chosen on their mean, rather than a manifest's own val/val_unseen splits."""
    return any(s.name.startswith("style:") or s.name in config.val_domains for s in data.eval_splits)


def finish(config: TrainConfig, out_dir: Path, net: MaMMUT, tokenizer: Tokenizer, data: PreparedData,
           runtime: Runtime, cached_features: bool, *, step: int, best_step: int, history: list, wall_s: float) -> dict:
    """Load the best weights, measure them (retrieval, captions, baselines), write the card into best/ and
    the export directory."""
    by_domain = judged_by_domain(config, data)
    best_dir = out_dir / "best" if (out_dir / "best").is_dir() else out_dir / "last"
    best_net, tokenizer, _ = load_checkpoint(best_dir, device=runtime.device)
    card: dict[str, Any] = {
        "recipe": config.to_dict(),
        "data": data.data_card,
        "steps": step, "best_step": best_step if best_step >= 0 else step,
        "samples_seen": step * config.batch_size,
        "wall_time_s": round(wall_s, 1),
        "hardware": {**hardware(), "device": str(runtime.device), "world_size": runtime.world_size},
        "selection": (te.DOMAIN_SCORE if by_domain else
                      "best validation score: seen t2i R@1 + seen i2t R@1 + 0.5 seen sentence t2i R@1"
                      " + unseen t2i R@5 + 0.5 unseen sentence t2i R@5"),
        "history": [{"step": h["step"], "score": round(h["score"], 4)} for h in history],
    }
    if data.eval_splits:
        card["validation"] = te.evaluate_retrieval(best_net, tokenizer, data.eval_splits, features=cached_features,
                                                   device=runtime.device)
        if config.final_eval:
            names = set(map(str, data.train["name"]))
            card["captions"] = {s.name: te.evaluate_captions(best_net, tokenizer, s, names, features=cached_features,
                                                              device=runtime.device) for s in data.eval_splits}
            if cached_features and data.train_cache.in_memory and not by_domain:
                card["baselines"] = te.baselines(data.train, data.train_cache.inputs[0], data.eval_splits)
    if not by_domain:
        card["targets"] = te.target_check(card, config.targets, config.val_split, config.val_unseen_split)
    card["conventions"] = ("queries: each concept's name (and 'A picture of a NAME.' for sentence figures); gallery: "
                           "every image of the split; i2t ranks the split's names; ranks as in mammut_search.eval.metrics")
    best_net.config.training = card
    save_run_checkpoint(out_dir / "best", best_net, tokenizer, None)
    (out_dir / "training_card.json").write_text(json.dumps(card, indent=2))
    if config.export:
        dtype = getattr(torch, config.export_dtype)
        save_run_checkpoint(Path(config.export), best_net, tokenizer, None, dtype=dtype)
    return card


def add_to_training_card(checkpoint_dir: str | Path, key: str, value: Any) -> None:
    """Add one entry to a checkpoint's training card (config.json only: the weights, and so the checkpoint's
    identity, do not change)."""
    from mammut_search.model.checkpoint import CONFIG, atomic_write_bytes, read_config

    config = read_config(checkpoint_dir)
    config.training[key] = value
    atomic_write_bytes(Path(checkpoint_dir) / CONFIG, json.dumps(config.to_dict(), indent=2, sort_keys=True).encode())
