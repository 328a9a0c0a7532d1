"""Cross-scanner experiment (no federation): pretrain on one scanner, adapt to another.

Pretrains a backbone on `source`, then fine-tunes it on `target` with every single PEFT
method, the PETITE Mix-PEFT and full fine-tuning, evaluates each on the target's test
split, and writes a table shaped like the paper's (method × PSNR / SSIM / NRMSE / %
trainable) as Markdown and CSV.

    python -m simulation.cross_scanner                      # tiny preset, CPU, ~10 min
    python -m simulation.cross_scanner model=cvtgan         # the other backbone
    python -m simulation.cross_scanner model.preset=paper train=default   # paper size (GPU)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from rich.table import Table

from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.cli.common import console, run_cli
from petite_fl.config import compose, expand_path
from petite_fl.data.site import load_site
from petite_fl.metrics import compute_metrics, foreground_mask
from petite_fl.training.inference import summarise
from petite_fl.training.jobs import evaluate, finetune, pretrain, resolve_site

METHODS = ["none", "full", "layernorm", "bitfit", "lora", "adapter", "ssf", "vpt", "petite"]
LABELS = {"none": "no fine-tuning", "full": "full fine-tuning", "layernorm": "LayerNorm", "bitfit": "BitFit",
          "lora": "LoRA", "adapter": "Adapters", "ssf": "SSF", "vpt": "VPT", "petite": "PETITE Mix-PEFT"}
DEFAULTS = ["train=tiny"]


def run(overrides: list[str], quiet: bool = False, methods: list[str] = METHODS) -> tuple[list[dict[str, Any]], Path]:
    cfg = compose(overrides=[*DEFAULTS, *overrides])
    out = expand_path(cfg.out) if cfg.out else (
        expand_path(cfg.paths.cache) / "runs" / "cross_scanner"
        / f"{cfg.model.name}-{cfg.model.preset}-{Path(str(cfg.source)).stem}-to-{Path(str(cfg.target)).stem}")
    start = time.perf_counter()
    backbone, _ = pretrain(cfg, quiet=quiet)
    rows = []
    # References: the short scan itself, and the backbone on its own scanner (in-domain).
    rows.append(_row("short-scan input itself (no network)", 0.0, input_as_prediction(cfg, str(cfg.target))))
    _, summary = evaluate(cfg, str(cfg.source), backbone, None, quiet=quiet)
    rows.append(_row(f"no fine-tuning, on {Path(str(cfg.source)).stem} (in-domain)", 0.0, summary))
    for method in methods:
        mcfg = compose(overrides=[*DEFAULTS, *overrides, f"peft={method}", "out=null"])
        adapter, meta = (None, None) if method == "none" else finetune(mcfg, quiet=quiet)
        _, summary = evaluate(mcfg, str(cfg.target), backbone, adapter, quiet=quiet)
        label = LABELS[method] + (f" ({meta['peft']['encoder']}+{meta['peft']['decoder']}+BitFit)"
                                  if method == "petite" else "")
        rows.append(_row(label, 0.0 if meta is None else meta["trainable_percent"], summary))
        if not quiet:
            console.print(f"{label}: PSNR {rows[-1]['psnr']:.2f} dB, SSIM {rows[-1]['ssim']:.3f}")
    seconds = time.perf_counter() - start
    _write(out, rows, cfg, seconds)
    return rows, out


def input_as_prediction(cfg: Any, site_ref: str) -> dict[str, Any]:
    """Metrics of the scaled input against the target: what a network must beat."""
    split = str(cfg.train.eval.split)
    site = load_site(resolve_site(cfg, site_ref), splits=(split,), scaling=str(cfg.data.loader.scaling))
    rows = []
    for sid, x, y in site.arrays(split):
        target = torch.as_tensor(y)
        mask = foreground_mask(target, float(cfg.data.loader.foreground_threshold))
        rows.append({"subject": sid, **compute_metrics(torch.as_tensor(x), target, mask)})
    return {"subjects": len(rows), "metrics": summarise(rows)}


def _row(label: str, percent: float, summary: dict[str, Any]) -> dict[str, Any]:
    m = summary["metrics"]
    row = {"method": label, "trainable_percent": round(percent, 4), "subjects": summary["subjects"]}
    for key in ("psnr", "ssim", "nrmse", "psnr_fg", "ssim_fg", "nrmse_fg"):
        row[key], row[f"{key}_std"] = m[key]["mean"], m[key]["std"]
    return row


def _write(out: Path, rows: list[dict[str, Any]], cfg: Any, seconds: float) -> None:
    write_csv(out / "results.csv", rows)
    title = (f"{cfg.model.name} ({cfg.model.preset}), pretrained on {Path(str(cfg.source)).stem}, "
             f"fine-tuned and tested on {Path(str(cfg.target)).stem}")
    lines = [f"### {title}", "",
             "| method | PSNR (dB) | SSIM | NRMSE | PSNR fg | SSIM fg | % trainable |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        percent = "–" if r["trainable_percent"] == 0 else f"{r['trainable_percent']:.3f}"
        lines.append(f"| {r['method']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['ssim']:.3f} | "
                     f"{r['nrmse']:.4f} | {r['psnr_fg']:.2f} | {r['ssim_fg']:.3f} | {percent} |")
    lines += ["", f"{rows[0]['subjects']} test subjects; {cfg.train.pretrain.steps} pretraining and "
              f"{cfg.train.finetune.steps} fine-tuning steps; {seconds / 60:.1f} min in all."]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(out / "config.json", {"config": OmegaConf.to_container(cfg, resolve=True), "seconds": seconds})


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        rows, out = run(overrides)
        table = Table(title=f"cross-scanner results — {out}")
        for col in ("method", "PSNR", "SSIM", "NRMSE", "PSNR fg", "% trainable"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["method"], f"{r['psnr']:.2f} ± {r['psnr_std']:.2f}", f"{r['ssim']:.3f}",
                          f"{r['nrmse']:.4f}", f"{r['psnr_fg']:.2f}", f"{r['trainable_percent']:.3f}")
        console.print(table)
        console.print(f"written: {out / 'results.md'}, {out / 'results.csv'}")
        return 0

    return run_cli("cross_scanner", body)


if __name__ == "__main__":
    sys.exit(main())
