"""The learning curve's numbers and report: per-size PSNR, the gate, the convergence check.

Every figure is a mean over test subjects (and seeds) with its 95 % interval; differences
are paired per test subject and seed: `petite_fl.statistics.per_scanner`, the crossed
subjects × seeds interval a comparison uses for one scanner (seeds enter through t).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.statistics import BETTER, per_scanner

METRIC = "psnr_truth"


def grid(records: list[dict[str, Any]], size: int, steps: int, metric: str = METRIC) -> np.ndarray:
    """(seeds, subjects) of one size and budget, subjects in the test split's order."""
    rows = [r for r in records if r["size"] == size and r["steps"] == steps]
    seeds = sorted({r["seed"] for r in rows})
    return np.array([[r[metric] for r in rows if r["seed"] == s] for s in seeds])


def check_steps(lc: DictConfig) -> int:
    """The convergence check's budget: `steps × check.factor` (2: doubled; 0.5: halved)."""
    return round(int(lc.steps) * float(lc.check.factor))


def _interval(d: np.ndarray) -> dict[str, Any]:
    """A (seeds, subjects) array's mean with its 95 % interval and the verdict it supports."""
    iv = per_scanner(d)
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "text": iv.text(), "verdict": iv.verdict(),
            "method": iv.method, "subjects": iv.subjects, "seeds": iv.seeds}


def summarise(records: list[dict[str, Any]], cfg: DictConfig, timings: dict[str, float]) -> dict[str, Any]:
    lc = cfg.learning_curve
    steps, target = int(lc.steps), str(cfg.target)
    base = grid(records, 0, 0)[0]
    sizes = []
    for n in lc.sizes:
        g = grid(records, int(n), steps)
        level = _interval(g)
        sizes.append({"size": int(n), "psnr_truth": level["mean"], "low": level["low"], "high": level["high"],
                      "psnr_target": float(grid(records, int(n), steps, "psnr_target").mean()),
                      "vs_no_finetune": _interval(g - base[None, :])})
    low, high = int(lc.gate.low), int(lc.gate.high)
    gain = _interval(grid(records, high, steps) - grid(records, low, steps))
    gate = {"from_scans": low, "to_scans": high, "min_gain_db": float(lc.gate.min_gain_db), **gain,
            "passed": bool(gain["mean"] >= float(lc.gate.min_gain_db) and gain["verdict"] == BETTER)}
    check = []
    short, long = sorted((steps, check_steps(lc)))
    for n in lc.check.sizes:
        d = _interval(grid(records, int(n), long) - grid(records, int(n), short))
        check.append({"size": int(n), "steps": short, "longer_steps": long, **d,
                      "converged": bool(d["mean"] < float(lc.check.max_gain_db))})
    trained = [r for r in records if r["steps"]]
    per_step = [r["train_s"] / r["steps"] for r in trained]
    cpu_step = [r["train_cpu_s"] / r["steps"] for r in trained if r.get("train_cpu_s", 0) > 0]
    return {"target": target, "source": str(cfg.source), "peft": str(lc.peft), "lr": float(lc.lr), "steps": steps,
            "seeds": int(lc.seeds),
            "test_subjects": int(base.size), "no_finetune_psnr_truth": float(base.mean()),
            "no_finetune_psnr_target": float(grid(records, 0, 0, "psnr_target")[0].mean()), "sizes": sizes,
            "gate": gate, "convergence": check, "seconds_per_step": float(np.mean(per_step)) if per_step else None,
            "cpu_seconds_per_step": float(np.mean(cpu_step)) if cpu_step else None, "threads": int(lc.threads),
            "warmup_fraction": float(cfg.train.warmup), "scaling": str(cfg.data.loader.scaling), "timings": timings}


def markdown(s: dict[str, Any], cfg: DictConfig) -> str:
    lc = cfg.learning_curve
    lines = [f"### Learning curve: local {s['peft']} (lr {s['lr']:g}) on {s['target']} (pretrained on {s['source']})",
             "",
             f"{s['test_subjects']} fixed test subjects × {s['seeds']} seed(s); {s['steps']} fine-tuning steps "
             f"(linear warm-up over {100 * float(cfg.train.warmup):g} % of them, then cosine to 0), batch "
             f"{cfg.train.batch_size} volume × {cfg.data.loader.patches_per_volume} patches; head-mask PSNR "
             f"(`truth_psnr_fg`) against the noise-free truth, scaling `{cfg.data.loader.scaling}`; 95 % intervals "
             "over test subjects and seeds (seeds enter through t).", "",
             "| training scans | PSNR vs truth (dB) [95 %] | Δ vs no fine-tuning [95 %] | PSNR vs target (dB) |",
             "|---:|---:|---:|---:|",
             f"| 0 (no fine-tuning) | {s['no_finetune_psnr_truth']:.2f} | – | {s['no_finetune_psnr_target']:.2f} |"]
    for r in s["sizes"]:
        lines.append(f"| {r['size']} | {r['psnr_truth']:.2f} [{r['low']:.2f}, {r['high']:.2f}] | "
                     f"{r['vs_no_finetune']['text']} | {r['psnr_target']:.2f} |")
    g = s["gate"]
    lines += ["", f"**Gate** ({g['from_scans']} → {g['to_scans']} scans gains ≥ {g['min_gain_db']:g} dB, "
              f"interval above zero): {g['text']} dB — {'passed' if g['passed'] else 'NOT passed'}.", "",
              "**Convergence** (the same runs with more steps; converged when the gain is below "
              f"{lc.check.max_gain_db:g} dB):", ""]
    if not s["convergence"]:
        lines.append("not checked (learning_curve.check.sizes is empty): nothing here says these runs converged.")
    else:
        lines += ["| training scans | steps → steps | Δ PSNR vs truth [95 %] | converged |", "|---:|---|---:|---|"]
    for c in s["convergence"]:
        lines.append(f"| {c['size']} | {c['steps']} → {c['longer_steps']} | {c['text']} | "
                     f"{'yes' if c['converged'] else 'no'} |")
    t = s["timings"]
    per_step = (f"{s['seconds_per_step']:.3f} s (CPU {s['cpu_seconds_per_step'] or 0:.3f} s) per fine-tuning step, "
                f"{s['threads']} thread(s)") if s["seconds_per_step"] else "no training"
    lines += ["", f"Wall time {t['total_s'] / 60:.1f} min (data {t['data_s']:.0f} s, pretraining "
              f"{t['pretrain_s']:.0f} s); {per_step}."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, records: list[dict[str, Any]], cfg: DictConfig,
                 timings: dict[str, float]) -> dict[str, Any]:
    """results.csv (one row per model and test subject), results.json, results.md; returns the summary."""
    summary = summarise(records, cfg, timings)
    summary["markdown"] = markdown(summary, cfg)
    write_csv(out / "results.csv", records)
    write_json(out / "results.json", summary)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(summary["markdown"])
    return summary
