"""The comparison's report text: report.md and the console tables, from results already computed."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from petite_fl import __version__
from petite_fl.console import console, human_bytes
from petite_fl.experiments.compare_results import DIFF_METRICS, VERDICT_METRIC, ArmRuns
from petite_fl.statistics import BETTER, BOOTSTRAP_MIN, WORSE, Interval

MARK = {BETTER: "▲", WORSE: "▼"}
FEW_SUBJECTS = 5  # below this many test subjects per scanner the report warns that intervals are very wide


def budget_text(summary: dict[str, Any]) -> str:
    """One arm's budget, from its own resolved config (written by its run)."""
    b = summary.get("budget") or {}
    if not b:
        return f"{summary['rounds']} rounds × {summary['local_steps']} local steps"
    if "total_steps" in b:
        head = (f"{b['total_steps']} steps in one place (= {b['rounds']} rounds × {b['local_steps']} local steps "
                "× sites)")
    elif not b["rounds"]:
        head = "no training"
    else:
        head = f"{b['rounds']} rounds × {b['local_steps']} local steps per site"
        if b.get("federated_rounds", b["rounds"]) < b["rounds"]:
            head += f" ({b['federated_rounds']} FedAvg, then {b['rounds'] - b['federated_rounds']} local)"
    return head + (f"; batch {b['batch_size']} volume(s) × {b['patches_per_volume']} patches, lr {b['lr']:g}"
                   if b.get("rounds") else "")


def _cell(rows: list[dict[str, Any]], arm: str, base: str, metric: str, site: str, digits: int) -> str:
    r = next((r for r in rows if (r["arm"], r["baseline"], r["metric"], r["site"]) == (arm, base, metric, site)), None)
    if r is None:
        return "–"
    iv = Interval(r["mean"], r["low"], r["high"], r["subjects"], r["seeds"], r["method"])
    return f"{MARK.get(r['verdict'], '')}{iv.text(digits)}"


def _diff_table(diffs, arms, sites, base, metric, digits) -> list[str]:
    lines = ["| arm | " + " | ".join(sites) + " | pooled over scanners | verdict (pooled) |",
             "|---|" + "---:|" * (len(sites) + 1) + "---|"]
    for arm in arms:
        if arm == base:
            continue
        pooled = next((r for r in diffs if (r["arm"], r["baseline"], r["metric"], r["site"])
                       == (arm, base, metric, "pooled")), None)
        if pooled is None:
            continue
        out = [f"without {pooled['sites_left_out']}"] if pooled["sites_left_out"] else []
        out += [f"without seed(s) {pooled['seeds_left_out']}"] if pooled.get("seeds_left_out") else []
        verdict = pooled["verdict"] + (f" ({'; '.join(out)})" if out else "")
        lines.append(f"| {arm} | " + " | ".join(_cell(diffs, arm, base, metric, s, digits) for s in sites)
                     + f" | {_cell(diffs, arm, base, metric, 'pooled', digits)} | {verdict} |")
    return lines


def _level_table(means, arms, sites, key, digits) -> list[str]:
    lines = ["| arm | " + " | ".join(sites) + " | mean |", "|---|" + "---:|" * (len(sites) + 1)]
    for arm in arms:
        vals = [[r[key] for r in means if r["arm"] == arm and r["site"] == s and r[key] is not None] for s in sites]
        cells = [f"{np.mean(v):.{digits}f}" if v else "–" for v in vals]
        flat = [np.mean(v) for v in vals if v]
        mean = f"{np.mean(flat):.{digits}f}" if flat else "–"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def markdown(cfg: DictConfig, arms: list[str], seeds: list[int], data: dict[str, ArmRuns], missing: dict[str, str],
             sites: list[str], means: list[dict[str, Any]], diffs: list[dict[str, Any]], baselines: list[str],
             curves: list[dict[str, Any]], payload: dict[str, Any], figures: list[str], overrides: list[str],
             seconds: float | None, backbone: Path, where: str) -> str:
    """report.md: the command and machine, how to read it, the difference and level tables, figures.

    `where`: the line on the sites' data (`compare_report.sites_line`, or a deployment's)."""
    n_test = min((len(v["test_subjects"]) for a in data.values() for v in a.first["sites"].values()
                  if v.get("test_subjects")), default=0)
    small = n_test < FEW_SUBJECTS
    lines = ["# petite-fl: local vs federated PEFT", "",
             f"Command: `petite compare {' '.join(overrides)}` (preset `compare={cfg.compare.name}`)  ",
             f"Machine: {platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
             f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'} · "
             f"{torch.get_num_threads()} threads  ",
             f"Wall time: {f'{seconds / 60:.1f} min' if seconds is not None else 'not recorded'} · "
             f"petite-fl {__version__}  ",
             f"Backbone: {cfg.model.name} ({cfg.model.preset}) pretrained on {cfg.source} · `{backbone.name}`  ",
             f"{where} · training seeds: {', '.join(map(str, seeds))}", "",
             "## How to read it", "",
             "- Every difference is paired: the same test subject of the same scanner, with the same training seed, "
             "under two arms. Cells read *mean [95 % interval]*; ▲ marks an interval above zero (better), ▼ below "
             "(worse). **The verdict uses head-mask PSNR**; whole-volume metrics are beside it (air, which the head "
             "mask leaves out, dominates them).",
             "- *No detectable difference at this sample size* means the interval includes zero: the arms may differ "
             "by as much as the interval allows, in either direction. It does not mean they are equal.",
             f"- Intervals: Student t over test subjects and seeds (standard error² = the variance of the subjects' "
             f"means over seeds ÷ subjects + the variance of the seeds' means over subjects ÷ seeds; "
             f"Welch–Satterthwaite degrees of freedom) while a scanner has fewer than {BOOTSTRAP_MIN} test subjects; "
             "otherwise a bootstrap over seeds and, within each scanner, subjects. A verdict column reads the "
             "interval of its own table's metric."]
    if small:
        lines.append(f"- With {n_test} test subject(s) per scanner the per-scanner intervals are very wide (a t "
                     f"quantile of {_t975(n_test):.1f} × the standard error): read the pooled column, and run "
                     "`petite compare compare=study` for a measurement that can tell arms apart.")
    if missing:
        lines.append("- Arms without results: " + "; ".join(f"**{a}**: {w}" for a, w in missing.items()))
    lines += ["", "## Arms and budgets", ""]
    for arm in arms:
        s = data[arm].first
        lines.append(f"- **{arm}**: {s['describe']} ({s['peft']}); {budget_text(s)}{_protection(s)}")
    for base in baselines:
        for metric, label, _, digits in DIFF_METRICS[:2]:
            lines += ["", f"## Δ {label} vs {base}", "", *_diff_table(diffs, arms, sites, base, metric, digits)]
    lines += ["", "Whole-volume PSNR differences and every interval's method and subject count are in "
              "`differences.csv`.", "", "## Test metrics per scanner (mean over seeds)", "",
              "Head-mask PSNR (dB):", "", *_level_table(means, arms, sites, "psnr_fg", 2), "",
              "Head-mask SSIM:", "", *_level_table(means, arms, sites, "ssim_fg", 4), "",
              "Whole-volume PSNR (dB):", "", *_level_table(means, arms, sites, "psnr", 2), "",
              "Whole-volume SSIM:", "", *_level_table(means, arms, sites, "ssim", 4), "",
              "Per-subject values: `subjects.csv` (by position in each scanner's test split).", ""]
    lines += _convergence(cfg, arms, curves) + _communication(cfg, arms, data, payload)
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    if any(name.startswith("slices_") for name in figures):
        lines += ["", "Slices: the middle axial slice of each scanner's first test subject, predicted by each "
                  "arm's final model for that site (first seed) on a slab of one window depth around it."]
    return "\n".join(lines) + "\n"


def _t975(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, max(1, n - 1)))


def _protection(summary: dict[str, Any]) -> str:
    text = summary.get("protection") or "none"
    if text == "none":
        return ""
    spent = summary.get("privacy")
    eps = f", ε = {spent['epsilon']:.3g} at δ = {spent['delta']:g} (client-level)" if spent else ""
    return f" · protection: {text}{eps}"


def _convergence(cfg, arms, curves) -> list[str]:
    rounds = range(max((c["round"] for c in curves), default=0) + 1)
    lines = ["## Convergence (validation PSNR, weighted mean over sites, first seed)", "",
             "| arm | " + " | ".join(f"round {r}" for r in rounds) + " |", "|---|" + "---:|" * len(rounds)]
    for arm in arms:
        by_round = {c["round"]: c for c in curves if c["arm"] == arm}
        lines.append(f"| {arm} | " + " | ".join(f"{by_round[r]['val_psnr']:.2f}" if r in by_round else "–"
                                               for r in rounds) + " |")
    return lines


def _communication(cfg, arms, data, payload) -> list[str]:
    lines = ["", "## Communication", "",
             "Measured in this run (bytes of the arrays in each message, per site per round; under SecAgg+ "
             "every record of its four stages, keys and masked vectors included):", "",
             "| arm | upload / round | download / round | backbone received (first run) |", "|---|---:|---:|---:|"]
    for arm in arms:
        s = data[arm].first["sites"].values()
        up = max((v.get("upload_bytes_per_round", 0) for v in s), default=0)
        down = max((v.get("download_bytes_per_round", 0) for v in s), default=0)
        bb = max((v.get("backbone_bytes", 0) for v in s), default=0)
        lines.append(f"| {arm} | {human_bytes(up)} | {human_bytes(down)} | {human_bytes(bb)} |")
    first = next(iter(payload.values()))
    lines += ["", "Upload per site per round ÷ backbone, from the same record builder applied to each model "
              f"size (PEFT `{cfg.peft.name}`):", "", "| model | " + " | ".join(first) + " |",
              "|---|" + "---:|" * len(first)]
    for model, per in payload.items():
        lines.append(f"| {model} ({human_bytes(next(iter(per.values()))['backbone_bytes'])}) | "
                     + " | ".join(f"{v['percent']:.3f} %" for v in per.values()) + " |")
    return lines


def print_tables(diffs: list[dict[str, Any]], arms: list[str], sites: list[str], baselines: list[str]) -> None:
    """The head-mask PSNR difference tables on the console, one per baseline."""
    from rich.table import Table

    for base in baselines:
        table = Table(title=f"Δ head-mask PSNR (dB) vs {base}: mean [95 % interval]")
        table.add_column("arm")
        for s in [*sites, "pooled"]:
            table.add_column(s, justify="right")
        table.add_column("verdict (pooled)")
        for arm in arms:
            if arm == base:
                continue
            pooled = next((r for r in diffs if (r["arm"], r["baseline"], r["metric"], r["site"])
                           == (arm, base, VERDICT_METRIC, "pooled")), None)
            if pooled:
                table.add_row(arm, *[_cell(diffs, arm, base, VERDICT_METRIC, s, 2) for s in [*sites, "pooled"]],
                              pooled["verdict"])
        console.print(table)
