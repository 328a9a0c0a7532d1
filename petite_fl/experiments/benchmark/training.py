"""Benchmark section `train`: PEFT vs full fine-tuning, patches per second and peak memory."""

from __future__ import annotations

import statistics
from typing import Any

from petite_fl.experiments.benchmark.workers import run_child


def train_speed(model_name: str, preset: str, patch: int, batch: int, peft: str, warmup: int, steps: int,
                device_name: str, amp_setting: str | bool = "auto") -> dict[str, Any]:
    """Training steps of one spec (the trainer's objective and optimiser), in this fresh process.

    `amp_setting` is train.amp's: "auto" (mixed precision on CUDA only, as the trainer does),
    or True/False to time float32 against mixed precision on the same device.
    """
    import torch

    from petite_fl.config import compose
    from petite_fl.models.registry import build_backbone
    from petite_fl.peft.apply import apply_peft, count_parameters
    from petite_fl.peft.spec import spec_from_config
    from petite_fl.profiling import current_rss_bytes, peak_rss_bytes, time_steps
    from petite_fl.training.device import amp_dtype, resolve_device, use_amp
    from petite_fl.training.objectives import make_objective

    device = resolve_device(device_name)
    amp = use_amp(amp_setting, device)
    cfg = compose("config", [f"model={model_name}", f"model.preset={preset}", f"peft={peft}"])
    torch.manual_seed(0)
    model = build_backbone(model_name, preset)
    state = apply_peft(model, spec_from_config(cfg.peft, model))
    model.to(device).train()
    objective = make_objective(cfg.train, model_name, preset, device)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(cfg.peft.lr), weight_decay=float(cfg.train.weight_decay))
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    x = torch.rand(batch, 1, patch, patch, patch, device=device)
    data = {"input": x, "target": (x * 0.9 + 0.05).clamp(0, 1)}
    idle_rss = current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(lambda: objective.step(model, data, optimizer, scaler, amp), warmup, steps, device)
    trainable, total = count_parameters(model, state)
    out = {"model": model_name, "preset": preset, "patch": patch, "batch": batch, "peft": state.spec.label,
           "amp": amp, "amp_dtype": str(amp_dtype(device)).removeprefix("torch.") if amp else None,
           "step_seconds": statistics.median(times), "patches_per_second": batch / statistics.median(times),
           "peak_rss_bytes": peak_rss_bytes(), "rss_before_training_bytes": idle_rss,
           "trainable_percent": 100.0 * trainable / total, "trainable_parameters": trainable,
           "total_parameters": total}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def train_comparison(p: dict[str, Any], device: str) -> dict[str, Any]:
    """PETITE and full fine-tuning on each case of the plan, each in a fresh process."""
    warmup, steps = p["train_steps"]
    rows, ratios = [], []
    for model, preset, patch, batch in p["train_cases"]:
        pair = {}
        for peft in ("petite", "full"):
            pair[peft] = run_child("train", {"args": [model, preset, patch, batch, peft, warmup, steps, device]})
            rows.append(pair[peft])
        memory = "cuda_max_allocated_bytes" if "cuda_max_allocated_bytes" in pair["full"] else "peak_rss_bytes"
        ratios.append({"model": model, "preset": preset, "patch": patch, "batch": batch, "memory": memory,
                       "peak_memory_ratio": pair["petite"][memory] / pair["full"][memory],
                       "throughput_ratio": pair["petite"]["patches_per_second"] / pair["full"]["patches_per_second"]})
    return {"rows": rows, "ratios": ratios, "warmup_steps": warmup, "timed_steps": steps}
