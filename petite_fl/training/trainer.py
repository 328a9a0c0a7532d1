"""The training loop: AdamW, warm-up + cosine schedule (`schedule`), AMP, progress, atomic checkpoints, resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import Sampler

from petite_fl.atomic import atomic_path
from petite_fl.console import console
from petite_fl.training.objectives import Objective
from petite_fl.training.schedule import Schedule

#: AdamW's (β1, β2): the server's bound on an honest update (federation/server/checks.py) assumes them.
ADAMW_BETAS = (0.9, 0.999)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        tail = [h["loss"] for h in self.history[-10:]]
        return sum(tail) / len(tail) if tail else math.nan


def _batches(loader: DataLoader, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    while True:  # steps, not epochs: small sites are cycled
        for batch in loader:
            yield {k: batch[k].to(device, non_blocking=True) for k in ("input", "target")}


def train(
    model: nn.Module,
    dataset: Any,
    objective: Objective,
    *,
    steps: int,
    lr: float,
    train_cfg: Any,
    device: torch.device,
    amp: bool,
    checkpoint: Path | None = None,
    label: str = "training",
    quiet: bool = False,
    schedule_offset: int = 0,
    schedule_total: int | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the parameters of `model` that require grad for `steps` optimiser steps.

    The learning rate follows warm-up (`train.warmup` of the budget) + cosine over
    `schedule_total` steps (default: `steps`), starting at `schedule_offset`: a federated
    site trains round r as steps [(r-1)·S, r·S) of one schedule over all rounds, as a
    single-site run would (`training.schedule`).
    `batch_sampler` replaces shuffled batches of `train.batch_size` (pooled sites: one site per batch).
    `on_step(step, logs)` is called after every optimiser step (1-based, within this call) with the
    objective's logs and the learning rate used (`lr`): the jobs' experiment tracking.
    """
    schedule = Schedule.from_config(train_cfg, schedule_total or steps)  # a bad fraction: before any step
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=ADAMW_BETAS, weight_decay=float(train_cfg.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(schedule_offset + step))
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    start, history = 0, []
    if checkpoint is not None and checkpoint.is_file():
        start, history = _restore(checkpoint, model, optimizer, scheduler, scaler, objective)
    batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {
        "batch_size": int(train_cfg.batch_size), "shuffle": True}
    loader = DataLoader(dataset, **batching, num_workers=int(train_cfg.num_workers), pin_memory=device.type == "cuda")
    every = max(1, int(train_cfg.checkpoint_every))
    log_every = max(1, int(train_cfg.log_every))
    # A progress bar in a terminal; plain lines every `log_every` steps in logs and pipes.
    log_lines = not quiet and not console.is_terminal
    begin = time.perf_counter()
    model.train()
    batches = _batches(loader, device)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), disable=quiet or log_lines,
                  transient=True, console=console) as progress:
        task = progress.add_task(label, total=steps, completed=start, loss="–")
        for step in range(start, steps):
            logs = objective.step(model, next(batches), optimizer, scaler, amp)
            used_lr = scheduler.get_last_lr()[0]
            scheduler.step()
            history.append({"step": step + 1, **logs})
            progress.update(task, advance=1, loss=f"{logs['loss']:.4g}")
            if on_step is not None:
                on_step(step + 1, {**logs, "lr": used_lr})
            if log_lines and ((step + 1) % log_every == 0 or step + 1 == steps):
                console.print(f"{label}: step {step + 1}/{steps} loss {logs['loss']:.4g} "
                              f"({time.perf_counter() - begin:.0f} s)")
            if checkpoint is not None and ((step + 1) % every == 0 or step + 1 == steps):
                _save(checkpoint, step + 1, model, names, optimizer, scheduler, scaler, objective, history)
    model.eval()
    return TrainResult(steps=steps, seconds=time.perf_counter() - begin, resumed_from=start, history=history)


def _save(path, step, model, names, optimizer, scheduler, scaler, objective, history) -> None:
    state = dict(model.named_parameters())
    payload = {
        "step": step,
        "trainable": {n: state[n].detach().cpu() for n in names},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "objective": objective.state_dict(),
        "history": history,
        "rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _restore(path, model, optimizer, scheduler, scaler, objective) -> tuple[int, list]:
    payload = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in payload["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    objective.load_state_dict(payload["objective"])
    torch.set_rng_state(payload["rng"])
    return int(payload["step"]), list(payload["history"])
