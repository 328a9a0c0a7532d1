"""Benchmark section `comm`: bytes per site per round of every PEFT spec, and 16-bit transport's effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def comm_bytes() -> dict[str, Any]:
    """Bytes per site per round of every spec at paper size (no training: exact on any machine)."""
    from petite_fl.config import compose
    from petite_fl.errors import ConfigError
    from petite_fl.federation.flower.payload import round_payload
    from petite_fl.models.registry import available_backbones, build_backbone
    from petite_fl.peft.registry import available_methods
    from petite_fl.peft.spec import PETITE_CHOICE, feasible_mixes

    strategies = {s: dict(compose("config", [f"strategy={s}"]).strategy) for s in ("fedavg", "shared-encoder")}
    rows, options = [], []
    for model in available_backbones():
        small = build_backbone(model, "tiny")
        specs = [{"name": "full"}]
        specs += [{"name": m} for m in available_methods() if m not in ("none", "full")]
        specs += [{"name": "mix", "encoder": s.encoder, "decoder": s.decoder, "bitfit": True}
                  for s in feasible_mixes(small)]
        for cfg in specs:
            try:
                fed = round_payload(model, "paper", cfg, strategies["fedavg"])
                enc = round_payload(model, "paper", cfg, strategies["shared-encoder"])
            except ConfigError:  # a single method this backbone cannot take (e.g. VPT on a CNN decoder)
                continue
            kind = "full" if cfg["name"] == "full" else "mix" if cfg["name"] == "mix" else "single"
            petite = kind == "mix" and (cfg["encoder"], cfg["decoder"]) == PETITE_CHOICE[model]
            rows.append({"model": model, "kind": kind, "spec": fed["spec"], "petite": petite,
                         "trainable_percent": fed["trainable_percent"], "upload_bytes": fed["upload_bytes"],
                         "download_bytes": fed["download_bytes"], "percent_of_backbone": fed["percent_of_backbone"],
                         "shared_encoder_upload_bytes": enc["upload_bytes"], "backbone_bytes": fed["backbone_bytes"]})
        # Below float32: 16-bit transport and FFA-LoRA, on the PETITE mix and on LoRA alone.
        petite = {"name": "petite"}
        ffa = {"lora": {"ffa": True}}
        for label, cfg, transport in [
            ("PETITE, float32", petite, "float32"), ("PETITE, float16", petite, "float16"),
            ("PETITE, bfloat16", petite, "bfloat16"), ("PETITE + FFA-LoRA", {**petite, "args": ffa}, "float32"),
            ("PETITE + FFA-LoRA, bfloat16", {**petite, "args": ffa}, "bfloat16"),
            ("LoRA, float32", {"name": "lora"}, "float32"),
            ("LoRA + FFA-LoRA", {"name": "lora", "args": ffa}, "float32"),
        ]:
            r = round_payload(model, "paper", cfg, strategies["fedavg"], transport)
            options.append({"model": model, "option": label, "transport": transport, "upload_bytes": r["upload_bytes"],
                            "percent_of_backbone": r["percent_of_backbone"]})
        for group in ("PETITE", "LoRA"):
            base = next(o for o in options if o["model"] == model and o["option"] == f"{group}, float32")
            for o in options:
                if o["model"] == model and o["option"].startswith(group):
                    o["saving_vs_float32"] = 1.0 - o["upload_bytes"] / base["upload_bytes"]
    mixes = [r for r in rows if r["kind"] == "mix"]
    return {"rows": rows, "options": options, "mix_count": len(mixes),
            "max_mix_percent": max(r["percent_of_backbone"] for r in mixes)}


def comm_quality(out: Path, overrides: list[str]) -> dict[str, Any]:
    """Head-mask PSNR of fedavg in float32 vs 16-bit transport vs FFA-LoRA (petite compare arms), paired."""
    from petite_fl.experiments.compare import compare_config, compare_overrides
    from petite_fl.experiments.compare import run as compare_run
    from petite_fl.experiments.compare_results import differences, load_arms

    arms = ["fedavg", "fedavg-fp16", "fedavg-bf16", "fedavg-ffa"]
    folder = compare_run(overrides, arms, out / "compare-options")
    cfg = compare_config(compare_overrides(overrides))
    seeds = [int(cfg.seed) + i for i in range(int(cfg.compare.seeds))]
    data, _ = load_arms(folder, arms, seeds)
    sites = list(cfg.federation.sites)
    base = data["fedavg"].first
    rows = []
    for arm, runs in data.items():
        s = runs.first
        pooled = differences(data, arm, "fedavg", seeds, sites, "psnr_fg").fixed if arm != "fedavg" else None
        rows.append({"arm": arm, "psnr_fg": s["test_mean"]["psnr_fg"], "upload_bytes": s["upload_bytes_per_round"],
                     "psnr_fg_change": pooled.text() if pooled else "–", "verdict": pooled.verdict() if pooled else "",
                     "byte_saving": 1.0 - s["upload_bytes_per_round"] / base["upload_bytes_per_round"]})
    return {"rows": rows, "rounds": base["rounds"], "local_steps": base["local_steps"], "folder": str(folder)}
