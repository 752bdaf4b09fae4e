"""Training MaMMUT: a recipe (TOML + overrides) -> a checkpoint directory with a training card.

One process on CPU or GPU (bf16 autocast), or DDP under `torchrun` (the contrastive loss gathers the global
batch); `accum_steps` splits each process's batch into micro-batches without changing the gradient (see
`accumulate_gradients`), so N processes × k micro-batches train exactly like one process on the whole batch.
The image encoder's input to its trainable part is cached once (frozen EfficientNet features, or pixels when
the whole encoder trains). Batches are a function of (seed, step), so a run is reproducible and
`resume` continues exactly: model, optimizer, schedule and step come back from `last/`.

The run folder (`last/`, `best/`, log.jsonl, training_card.json) is kept by run_folder.py.
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

from mammut_search.errors import UserError
from mammut_search.model.checkpoint import atomic_write_bytes, load_checkpoint
from mammut_search.model.config import ImageEncoderConfig, MammutConfig
from mammut_search.model.mammut import MaMMUT
from mammut_search.model.tokenizer import Tokenizer
from mammut_search.train import data as td
from mammut_search.train import validation
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
from mammut_search.train.run_folder import (  # noqa: F401 (TRAIN_STATE: named through this module too)
    TRAIN_STATE,
    check_export,
    claim_run_dir,
    find_resume_dir,
    load_train_state,
    save_run_checkpoint,
)


# ----- building the network -----

def model_config(config: TrainConfig, tokenizer: Tokenizer) -> MammutConfig:
    """The recipe's model: MammutConfig's defaults (the bundled model) with the recipe's `[model]` changes."""
    fields = dict(config.model)
    fields["image_encoder"] = ImageEncoderConfig(**fields.get("image_encoder", {}))
    return MammutConfig(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                        eos_id=tokenizer.eos_id, **fields)


def build_network(config: TrainConfig, tokenizer: Tokenizer, minilm_ids: list[int]) -> MaMMUT:
    """A fresh MaMMUT for the recipe: pretrained image encoder, token embeddings from MiniLM if asked."""
    net_config = model_config(config, tokenizer)
    torch.manual_seed(config.seed)
    net = MaMMUT(net_config, pretrained_encoder=net_config.image_encoder.efficientnet is not None)
    if config.text_init:
        from mammut_search.train.text_init import initial_token_embeddings

        with torch.no_grad():
            net.token_emb.weight.copy_(initial_token_embeddings(minilm_ids, net_config.dim))
    return net


def uses_cached_features(model_config: MammutConfig) -> bool:
    """Frozen EfficientNet: its features can be cached; otherwise the cache holds pixels."""
    image = model_config.image_encoder
    return image.efficientnet is not None and image.trainable_blocks == 0


# fixed parts of the recipe (no recipe has varied them)
EMBEDDING_LR_SCALE = 0.3  # pretrained token embeddings move more slowly
MIN_LR_RATIO = 0.05  # the cosine schedule ends at this share of lr
WEIGHT_DECAY = 0.05
GRAD_CLIP = 1.0  # the gradient's global norm is clipped to this
EXPORT_DTYPE = torch.float16  # what `export` writes: the shipped format


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
    embedding_lr = config.lr * (EMBEDDING_LR_SCALE if config.text_init else 1.0)
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY, "lr_base": config.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr_base": config.lr},
        {"params": embedding, "weight_decay": 0.0, "lr_base": embedding_lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    for group in optimizer.param_groups:
        group["lr"] = group["lr_base"]
    return optimizer


def lr_factor(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to MIN_LR_RATIO at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


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
    if config.batch_size < config.accum_steps * runtime.world_size:
        raise UserError(f"accum_steps={config.accum_steps}: needs accum_steps ≤ batch_size / processes "
                        f"({config.batch_size} / {runtime.world_size}); lower accum_steps or raise batch_size")
    started = time.time()
    if frame is None:
        frame = td.read_manifest(config.manifest, images_root=config.images_root or None)
    net, tokenizer, state = start_network(config, frame, runtime, Path(resume) if resume is not None else None)
    cached_features = uses_cached_features(net.config)
    net.to(runtime.device)
    data = prepare_data(config, net.eval(), tokenizer, runtime, frame, cached_features)
    run = TrainingRun(config, out_dir, runtime, net, tokenizer, data, cached_features, started)
    run.restore(state)
    out_dir.mkdir(parents=True, exist_ok=True)
    if runtime.main:  # folders of checkpoint saves that a kill interrupted
        for leftover in out_dir.glob(".*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    if not run.steps(progress, stop_at):
        return {}
    if runtime.world_size > 1:
        dist.barrier()
    card: dict[str, Any] = run.finish() if runtime.main else {}
    if runtime.world_size > 1:
        dist.barrier()
    return card


def start_network(config: TrainConfig, frame: pd.DataFrame, runtime: Runtime,
                  resume: Path | None) -> tuple[MaMMUT, Tokenizer, dict | None]:
    """The network, its tokenizer and the saved training state: from the run's last/ when resuming, else new."""
    if resume is not None:
        resume_dir = find_resume_dir(resume)
        net, tokenizer, _ = load_checkpoint(resume_dir)
        net.config.training = {}
        return net, tokenizer, load_train_state(resume_dir)
    texts = caption_table(training_rows(config, frame))
    if config.label_weight > 0 and config.model.get("semantic_dim", MammutConfig.semantic_dim):
        texts += [t for names in imagenet_label_texts(config)[1] for t in names]
    tokenizer, minilm_ids = build_tokenizer(config, texts)
    net = build_network(config, tokenizer, minilm_ids)
    if net.config.semantic_dim:
        with torch.no_grad():
            net.class_embeddings.copy_(class_embeddings(config, progress=runtime.main))
    return net, tokenizer, None


class TrainingRun:
    """One run in progress: the network and its training objective, the optimizer, the data, and where the
    run stands (step, best score, history); `steps` trains, validates and saves, `finish` writes the card."""

    def __init__(self, config: TrainConfig, out_dir: Path, runtime: Runtime, net: MaMMUT, tokenizer: Tokenizer,
                 data: PreparedData, cached_features: bool, started: float):
        self.config, self.out_dir, self.runtime, self.net, self.tokenizer = config, out_dir, runtime, net, tokenizer
        self.data, self.cached_features, self.started = data, cached_features, started
        distill_dim = data.teacher.shape[1] if data.teacher is not None else 0
        self.objective = TrainingObjective(net, distill_dim=distill_dim, cached_features=cached_features)
        self.objective.distill_weight = config.distill_weight
        self.objective.word_weight = config.word_weight
        self.objective.label_weight = config.label_weight
        if self.objective.distill_head is not None:
            torch.manual_seed(config.seed + 1)
            nn.init.normal_(self.objective.distill_head.weight, std=net.config.dim_latents ** -0.5)
        self.objective.to(runtime.device)
        self.optimizer = make_optimizer(config, self.objective)
        self.step, self.best_score, self.best_step, self.history, self.elapsed_before = 0, -math.inf, -1, [], 0.0
        self.model: nn.Module = self.objective
        if runtime.world_size > 1:
            some_loss_off = net.config.caption_loss_weight == 0 or net.config.contrastive_loss_weight == 0
            self.model = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
                find_unused_parameters=some_loss_off)

    def restore(self, state: dict | None) -> None:
        """Carry on from a saved training state (train_state.pt), if any."""
        if state is None:
            return
        if self.objective.distill_head is not None and state.get("distill_head"):
            self.objective.distill_head.load_state_dict(state["distill_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best_score, self.best_step = state["step"], state["best_score"], state["best_step"]
        self.history, self.elapsed_before = state["history"], state.get("elapsed_s", 0.0)
        torch.set_rng_state(state["torch_rng"])

    def train_state(self) -> dict:
        """What resuming needs, saved in last/train_state.pt."""
        head = self.objective.distill_head
        return {"optimizer": self.optimizer.state_dict(), "step": self.step, "best_score": self.best_score,
                "best_step": self.best_step, "history": self.history, "torch_rng": torch.get_rng_state(),
                "elapsed_s": self.elapsed(), "recipe": self.config.to_dict(),
                "distill_head": head.state_dict() if head is not None else None}

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def steps(self, progress: bool, stop_at: int | None) -> bool:
        """Train to the last step (or the time budget); False when stopped at `stop_at` first."""
        config, runtime = self.config, self.runtime
        self.net.train()
        bar = tqdm(total=config.steps, initial=self.step, desc="training", unit="step",
                   disable=not (progress and runtime.main))
        window = [time.time(), 0]  # start of the log window, samples since
        stop = False
        while self.step < config.steps and not stop:
            losses = self.one_step()
            window[1] += config.batch_size
            bar.update(1)
            at_end = self.step == config.steps
            if runtime.main and (self.step % config.log_every == 0 or at_end):
                self.log(losses, window, bar)
            if self.data.eval_splits and (self.step % config.eval_every == 0 or at_end):
                stop = broadcast_flag(self.validate(bar) if runtime.main else False, runtime)
            interrupted = stop_at is not None and self.step >= stop_at and not at_end
            if runtime.main and (self.step % config.save_every == 0 or at_end or stop or interrupted):
                save_run_checkpoint(self.out_dir / "last", self.net, self.tokenizer, self.train_state())
            if interrupted:
                bar.close()
                return False
        bar.close()
        return True

    def one_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step on the step's batch; returns this process's losses."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr_base"] * lr_factor(config, self.step)
        batch = step_batch(config, self.data, self.tokenizer, self.runtime, self.step, self.cached_features)
        self.optimizer.zero_grad(set_to_none=True)
        losses = accumulate_gradients(self.model, self.objective, batch, config.accum_steps, self.runtime,
                                      training_autocast(config, self.runtime))
        torch.nn.utils.clip_grad_norm_([p for p in self.objective.parameters() if p.requires_grad], GRAD_CLIP)
        self.optimizer.step()
        self.step += 1
        return losses

    def log(self, losses: dict[str, torch.Tensor], window: list, bar: tqdm) -> None:
        """One line of losses, learning rate and throughput, to the progress bar and log.jsonl."""
        now = time.time()
        entry = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                 "samples_per_s": window[1] / max(1e-9, now - window[0]),
                 **{k: round(float(v.detach()), 4) for k, v in losses.items()},
                 "temperature": round(float(self.net.logit_scale.detach().exp()), 2)}
        window[:] = [now, 0]
        bar.set_postfix(loss=entry["loss"], cap=entry.get("caption"), con=entry.get("contrastive"))
        bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
        self.append_log(entry)

    def append_log(self, entry: dict) -> None:
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def validate(self, bar: tqdm) -> bool:
        """Score the validation sets, keep the best checkpoint; True when the time budget is spent."""
        results = validation.evaluate_retrieval(self.net, self.tokenizer, self.data.eval_splits,
                                                features=self.cached_features, device=self.runtime.device)
        score = validation.domain_score(results)
        self.history.append({"step": self.step, "score": score, **results})
        summary = {s: {k: round(v, 3) for k, v in r.items() if k in ("t2i_R@1", "t2i_R@5", "i2t_R@1",
                                                                     "t2i_sentence_R@1")}
                   for s, r in results.items()}
        bar.write(f"validation step={self.step} score={score:.3f} {json.dumps(summary)}")
        self.append_log({"step": self.step, "validation": results, "score": score})
        if score > self.best_score:
            self.best_score, self.best_step = score, self.step
            save_run_checkpoint(self.out_dir / "best", self.net, self.tokenizer, None)
        budget = self.config.max_minutes
        if budget and self.elapsed() / 60 >= budget:
            bar.write(f"stopping: the time budget of {budget} minutes is spent")
            return True
        return False

    def finish(self) -> dict:
        """Load the best weights, measure them (retrieval, captions, baselines), write the card into best/ and
        the export directory."""
        config, data, runtime, features = self.config, self.data, self.runtime, self.cached_features
        best_dir = self.out_dir / "best" if (self.out_dir / "best").is_dir() else self.out_dir / "last"
        best_net, tokenizer, _ = load_checkpoint(best_dir, device=runtime.device)
        card: dict[str, Any] = {
            "recipe": config.to_dict(), "data": data.data_card,
            "steps": self.step, "best_step": self.best_step if self.best_step >= 0 else self.step,
            "samples_seen": self.step * config.batch_size, "wall_time_s": round(self.elapsed(), 1),
            "hardware": {**hardware(), "device": str(runtime.device), "world_size": runtime.world_size},
            "selection": validation.DOMAIN_SCORE,
            "history": [{"step": h["step"], "score": round(h["score"], 4)} for h in self.history],
        }
        if data.eval_splits:
            card["validation"] = validation.evaluate_retrieval(best_net, tokenizer, data.eval_splits,
                                                               features=features, device=runtime.device)
        if data.eval_splits:
            names = set(map(str, data.train["name"]))
            card["captions"] = {s.name: validation.evaluate_captions(best_net, tokenizer, s, names, features=features,
                                                                     device=runtime.device) for s in data.eval_splits}
            if features and data.train_cache.in_memory:
                card["baselines"] = validation.baselines(data.train, data.train_cache.inputs, data.eval_splits)
        card["conventions"] = validation.CONVENTIONS
        best_net.config.training = card
        save_run_checkpoint(self.out_dir / "best", best_net, tokenizer, None)
        atomic_write_bytes(self.out_dir / "training_card.json", json.dumps(card, indent=2).encode())
        if config.export:
            save_run_checkpoint(Path(config.export), best_net, tokenizer, None, dtype=EXPORT_DTYPE)
        return card


def add_to_training_card(checkpoint_dir: str | Path, key: str, value: Any) -> None:
    """Add one entry to a checkpoint's training card (config.json only: the weights, and so the checkpoint's
    identity, do not change)."""
    from mammut_search.model.checkpoint import CONFIG, atomic_write_bytes, read_config

    config = read_config(checkpoint_dir)
    config.training[key] = value
    atomic_write_bytes(Path(checkpoint_dir) / CONFIG, json.dumps(config.to_dict(), indent=2, sort_keys=True).encode())
