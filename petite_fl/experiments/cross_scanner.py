"""Cross-scanner experiment (no federation): pretrain on one scanner, adapt to another.

Pretrains a backbone on `source`, then fine-tunes it on `target` with every single PEFT
method, the PETITE Mix-PEFT and full fine-tuning (same steps and data for each, once per
seed), and measures on the target's test split, paired per subject with no fine-tuning:
- what the transformer carries: the PSNR drop when its outputs are zeroed
  (`petite_fl.models.ablation`), in-domain and on the target;
- what each method recovers: ΔPSNR over no fine-tuning with a 95 % interval over
  subjects and seeds (`petite_fl.statistics`), a verdict, and the trainable share;
- with `--gaps`, the scanner gap: full fine-tuning vs none on every other scanner.
Markdown and CSV, shaped like the paper's table.

    python -m petite_fl.experiments.cross_scanner                   # tiny preset, CPU
    python -m petite_fl.experiments.cross_scanner --seeds 3 --gaps  # run-to-run noise, the gap per scanner
    python -m petite_fl.experiments.cross_scanner model=cvtgan      # the other backbone
    python -m petite_fl.experiments.cross_scanner model.preset=paper train=default   # paper size (GPU)

(`python -m simulation.cross_scanner` is the same from a checkout.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.table import Table

from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.config import compose, expand_path, hydra_override
from petite_fl.console import console, run_cli
from petite_fl.data.site import load_site
from petite_fl.data.sites import resolve_site
from petite_fl.metrics import compute_metrics, foreground_mask
from petite_fl.scanners import available_scanners
from petite_fl.statistics import per_scanner
from petite_fl.training.inference import METRICS, summarise
from petite_fl.training.jobs import evaluate, finetune, pretrain

METHODS = ["none", "full", "layernorm", "bitfit", "lora", "adapter", "ssf", "vpt", "petite"]
LABELS = {"none": "no fine-tuning", "full": "full fine-tuning", "layernorm": "LayerNorm", "bitfit": "BitFit",
          "lora": "LoRA", "adapter": "Adapters", "ssf": "SSF", "vpt": "VPT", "petite": "PETITE Mix-PEFT"}
DEFAULTS = ["train=tiny"]


def run(overrides: list[str], quiet: bool = False, methods: list[str] = METHODS, seeds: int = 1,
        gaps: bool = False) -> tuple[list[dict[str, Any]], Path]:
    if seeds < 1:
        raise ValueError(f"--seeds must be ≥ 1, got {seeds}")
    cfg = compose(overrides=[*DEFAULTS, *overrides])
    source, target = Path(str(cfg.source)).stem, Path(str(cfg.target)).stem
    out = expand_path(cfg.out) if cfg.out else (
        expand_path(cfg.paths.cache) / "runs" / "cross_scanner"
        / f"{cfg.model.name}-{cfg.model.preset}-{source}-to-{target}")
    start = time.perf_counter()
    backbone, _ = pretrain(cfg, quiet=quiet)
    fixed = [*DEFAULTS, *overrides, hydra_override("backbone", backbone), "out=null"]  # one backbone for every seed

    def measure(site: str, method: str = "none", seed: int = int(cfg.seed), ablate: bool = False):
        """Fine-tune on `site` itself (not only on `target`), then evaluate there."""
        mcfg = compose(overrides=[*fixed, f"peft={method}", f"seed={seed}", hydra_override("target", site)])
        adapter, meta = (None, None) if method == "none" else finetune(mcfg, quiet=quiet)
        rows, _ = evaluate(mcfg, site, backbone, adapter, quiet=quiet, ablate=ablate)
        return rows, meta

    base, _ = measure(str(cfg.target))
    table = [_row("short-scan input itself (no network)", input_as_prediction(cfg, str(cfg.target)))]
    in_domain, _ = measure(str(cfg.source))
    table.append(_row(f"no fine-tuning, on {source} (in-domain)", [in_domain]))
    table.append(_row(f"… with the transformer's outputs zeroed, on {source}", [measure(str(cfg.source),
                                                                                         ablate=True)[0]], in_domain))
    table.append(_row("no fine-tuning", [base]))
    table.append(_row("… with the transformer's outputs zeroed", [measure(str(cfg.target), ablate=True)[0]], base))
    for method in [m for m in methods if m != "none"]:
        runs = [measure(str(cfg.target), method, int(cfg.seed) + s) for s in range(seeds)]
        meta = runs[0][1]
        label = LABELS[method] + (f" ({meta['peft']['encoder']}+{meta['peft']['decoder']}+BitFit)"
                                  if method == "petite" else "")
        table.append(_row(label, [r for r, _ in runs], base, meta["trainable_percent"]))
        if not quiet:
            console.print(f"{label}: Δ head-mask PSNR {table[-1]['delta']}", markup=False, highlight=False)
    gap_rows = []
    if gaps:
        for site in [s for s in cfg.data.synth.scanners if s in available_scanners() and s != source]:
            none, _ = measure(site)
            full = [measure(site, "full", int(cfg.seed) + s) for s in range(seeds)]
            gap_rows.append({"scanner": site, "fine_tuned_on": Path(str(full[0][1]["target"])).stem,
                             **_row("full fine-tuning vs none", [r for r, _ in full], none)})
    _write(out, table, gap_rows, cfg, seeds, time.perf_counter() - start)
    return table + gap_rows, out


def input_as_prediction(cfg: Any, site_ref: str) -> list[list[dict[str, Any]]]:
    """Per-subject metrics of the scaled input against the target: what a network must beat."""
    split = str(cfg.train.eval.split)
    site = load_site(resolve_site(cfg, site_ref), splits=(split,), scaling=str(cfg.data.loader.scaling))
    rows = []
    for sid, x, y in site.arrays(split):
        target = torch.as_tensor(y)
        mask = foreground_mask(target, float(cfg.data.loader.foreground_threshold))
        rows.append({"subject": sid, **compute_metrics(torch.as_tensor(x), target, mask)})
    return [rows]


def _row(label: str, runs: list[list[dict[str, Any]]], base: list[dict[str, Any]] | None = None,
         percent: float = 0.0) -> dict[str, Any]:
    """Means over seeds and subjects; with `base`, the paired head-mask PSNR difference."""
    row: dict[str, Any] = {"method": label, "trainable_percent": round(percent, 4), "subjects": len(runs[0]),
                           "seeds": len(runs)}
    for key in METRICS:
        row[key] = float(np.mean([summarise(r)[key]["mean"] for r in runs]))
    if base is not None:
        d = np.array([[r[i]["psnr_fg"] - base[i]["psnr_fg"] for i in range(len(base))] for r in runs])
        iv = per_scanner(d)  # the target scanner's subjects × seeds
        row.update({"delta": iv.text(), "delta_mean": iv.mean, "delta_low": iv.low, "delta_high": iv.high,
                    "interval": iv.method, "verdict": iv.verdict()})
        if all("truth_psnr_fg" in x for r in [*runs, base] for x in r):  # a simulated site: also against its truth
            t = np.array([[r[i]["truth_psnr_fg"] - base[i]["truth_psnr_fg"] for i in range(len(base))] for r in runs])
            tv = per_scanner(t)
            row.update({"truth_psnr_fg": float(np.mean([[x["truth_psnr_fg"] for x in r] for r in runs])),
                        "truth_delta": tv.text(), "truth_delta_mean": tv.mean, "truth_delta_low": tv.low,
                        "truth_delta_high": tv.high, "truth_verdict": tv.verdict()})
    return row


def _write(out: Path, rows: list[dict[str, Any]], gaps: list[dict[str, Any]], cfg: Any, seeds: int,
           seconds: float) -> None:
    write_csv(out / "results.csv", rows)
    if gaps:
        write_csv(out / "gaps.csv", gaps)
    title = (f"{cfg.model.name} ({cfg.model.preset}), pretrained on {Path(str(cfg.source)).stem}, "
             f"fine-tuned and tested on {Path(str(cfg.target)).stem}")
    lines = [f"### {title}", "",
             "| method | PSNR fg (dB) | Δ PSNR fg vs reference [95 % interval] | verdict | PSNR (dB) | SSIM fg | "
             "SSIM | % trainable |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        percent = "–" if not r["trainable_percent"] else f"{r['trainable_percent']:.3f}"
        lines.append(f"| {r['method']} | {r['psnr_fg']:.2f} | {r.get('delta', '')} | {r.get('verdict', '')} | "
                     f"{r['psnr']:.2f} | {r['ssim_fg']:.3f} | {r['ssim']:.3f} | {percent} |")
    lines += ["", f"{rows[0]['subjects']} test subjects; {seeds} seed(s) per method; {cfg.train.pretrain.steps} "
              f"pretraining and {cfg.train.finetune.steps} fine-tuning steps; {seconds / 60:.1f} min in all. The "
              "reference of a Δ is no fine-tuning on the same scanner (the ablation rows: the same model "
              "unablated); intervals are paired over subjects (and seeds)."]
    if gaps:
        lines += ["", "### The scanner gap: full fine-tuning vs none, per scanner (head-mask PSNR, dB)", "",
                  "| scanner | vs target: none → full | gap vs target [95 %] | vs truth: none → full | "
                  "gap vs truth [95 %] | verdict (truth) |", "|---|---:|---:|---:|---:|---|"]
        for g in gaps:
            truth = (f"{g['truth_psnr_fg'] - g['truth_delta_mean']:.2f} → {g['truth_psnr_fg']:.2f} | "
                     f"{g['truth_delta']} | {g['truth_verdict']}") if "truth_delta" in g else "– | – | –"
            lines.append(f"| {g['scanner']} | {g['psnr_fg'] - g['delta_mean']:.2f} → {g['psnr_fg']:.2f} | "
                         f"{g['delta']} | {truth} |")
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json(out / "config.json", {"config": OmegaConf.to_container(cfg, resolve=True), "seconds": seconds})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petite_fl.experiments.cross_scanner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per method (default 1)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated PEFT methods")
    parser.add_argument("--gaps", action="store_true", help="also full fine-tuning vs none on every other scanner")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=cvtgan target=scanner3")
    args = parser.parse_args(argv)

    def body() -> int:
        rows, out = run(args.overrides, methods=[m for m in args.methods.split(",") if m], seeds=args.seeds,
                        gaps=args.gaps)
        table = Table(title=f"cross-scanner results — {out}")
        for col in ("method", "PSNR fg", "Δ PSNR fg [95 %]", "verdict", "PSNR", "% trainable"):
            table.add_column(col)
        for r in rows:
            table.add_row(r.get("scanner", "") + " " + r["method"], f"{r['psnr_fg']:.2f}", r.get("delta", ""),
                          r.get("verdict", ""), f"{r['psnr']:.2f}", f"{r['trainable_percent']:.3f}")
        console.print(table)
        console.print(f"written: {out / 'results.md'}, {out / 'results.csv'}")
        return 0

    return run_cli("cross_scanner", body)


if __name__ == "__main__":
    sys.exit(main())
