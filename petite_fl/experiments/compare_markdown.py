"""The comparison's report text: report.md and the console tables, from results already computed."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from petite_fl import __version__
from petite_fl.console import console, human_bytes
from petite_fl.experiments.compare_endpoints import ALL, TRUTH_VERDICT, Primary
from petite_fl.experiments.compare_results import ArmRuns
from petite_fl.statistics import BETTER, EQUIVALENT, HIGHER, LOWER, UNCLEAR, WORSE

MARK = {BETTER: "▲", WORSE: "▼", EQUIVALENT: "≈", HIGHER: "↑", LOWER: "↓"}
FEW_SUBJECTS = 5  # below this many test subjects per scanner the report warns that intervals are very wide
ARM_LABELS = {"pooled": "centralised, one model", "pooled-ft": "centralised, then fine-tuned at each site"}
FIXED_HEAD, RANDOM_HEAD = "these scanners (fixed effect)", "a new site like these (random effects)"


@dataclass
class Context:
    """What every section of the report reads."""

    cfg: DictConfig
    arms: list[str]
    seeds: list[int]
    data: dict[str, ArmRuns]
    sites: list[str]
    diffs: list[dict[str, Any]]
    baselines: list[str]
    metric: str  # the verdict metric
    margin: float
    primary: Primary | None
    primary_row: dict[str, Any] | None
    primary_why: str


def arm_label(arm: str) -> str:
    """The arm as the report names it: the pooled arms say what they are (centralised), not a bound."""
    return f"{arm} ({ARM_LABELS[arm]})" if arm in ARM_LABELS else arm


def budget_text(summary: dict[str, Any]) -> str:
    """One arm's budget and schedule, from its own resolved config (written by its run)."""
    b = summary.get("budget") or {}
    if not b:
        return f"{summary['rounds']} rounds × {summary['local_steps']} local steps"
    if "finetune_steps_per_site" in b:  # pooled-ft: centralised, then local fine-tuning (fedavg-ft's split)
        head = (f"{b['centralised_steps']} steps in one place (= {b['centralised_rounds']} rounds × {b['local_steps']} "
                f"local steps × sites), then {b['finetune_steps_per_site']} local steps per site "
                f"(= {b['finetune_rounds']} × {b['local_steps']}, as fedavg-ft's local rounds)")
    elif "total_steps" in b:
        head = (f"{b['total_steps']} steps in one place (= {b['rounds']} rounds × {b['local_steps']} local steps "
                "× sites)")
    elif not b["rounds"]:
        head = "no training"
    else:
        head = f"{b['rounds']} rounds × {b['local_steps']} local steps per site"
        if b.get("federated_rounds", b["rounds"]) < b["rounds"]:
            head += f" ({b['federated_rounds']} FedAvg, then {b['rounds'] - b['federated_rounds']} local)"
    if not b.get("rounds"):
        return head
    head += f"; batch {b['batch_size']} volume(s) × {b['patches_per_volume']} patches, lr {b['lr']:g}"
    schedule = b.get("schedule") or {}  # written by runs that carry it (training/schedule.py)
    if schedule.get("warmup_fraction") is None:
        return head
    return head + (f"; schedule: linear warm-up over {100 * schedule['warmup_fraction']:g} % of the local budget, "
                   "then cosine to 0")


def verdict_text(row: dict[str, Any]) -> str:
    unit = f" {ALL[row['metric']].unit}" if ALL[row["metric"]].unit else ""
    return f"equivalent within ±{row['margin']:g}{unit}" if row["verdict"] == EQUIVALENT else row["verdict"]


def interval_text(row: dict[str, Any] | None, digits: int) -> str:
    """'▲+0.42 [+0.10, +0.74]' (the mark is the row's own verdict)."""
    if row is None:
        return "–"
    mark = MARK.get(row["verdict"], "")
    if not np.isfinite(row["low"]):
        return f"{mark}{row['mean']:+.{digits}f} [–]"
    return f"{mark}{row['mean']:+.{digits}f} [{row['low']:+.{digits}f}, {row['high']:+.{digits}f}]"


def find(diffs: list[dict[str, Any]], arm: str, base: str, metric: str, site: str) -> dict[str, Any] | None:
    return next((r for r in diffs if r["endpoint"] == "secondary"
                 and (r["arm"], r["baseline"], r["metric"], r["site"]) == (arm, base, metric, site)), None)


def _verdict_metric_lines(ctx: Context) -> list[str]:
    label = ALL[ctx.metric].label
    if ctx.metric == TRUTH_VERDICT:
        what = f"**Verdict metric: {label}** (`{ctx.metric}`): every compared site is simulated and has a ground truth."
    else:
        what = (f"**Verdict metric: {label}** (`{ctx.metric}`): not every compared site has a ground truth "
                "(real data), so the verdict is against the target scan, itself noisy.")
    lines = [what, f"Equivalence margin: ±{ctx.margin:g} dB (`compare.margin`) on PSNR; SSIM, NRMSE and the "
             "regional uptake ratio have no equivalence verdict (no agreed margin)."]
    if len(ctx.seeds) == 1:
        lines.append("**One training seed: training randomness is not in these intervals** — they cover the choice "
                     "of test subjects for this one training run; another seed can move a difference further.")
    return lines


def _primary_lines(ctx: Context) -> list[str]:
    if ctx.primary is None:
        return ["## Primary endpoint", "", "None named (`compare.primary`): every difference below is secondary "
                "(exploratory)."]
    head = ["## Primary endpoint", "", f"{ctx.primary.describe(ctx.sites)} (`compare.primary`):", ""]
    r = ctx.primary_row
    if r is None:
        return [*head, f"**Not evaluable**: {ctx.primary_why}. Nothing below replaces it."]
    digits = ALL[r["metric"]].digits
    tost = f"; 90 % interval [{r['low90']:+.{digits}f}, {r['high90']:+.{digits}f}]" if r["margin"] else ""
    return [*head, f"**Δ = {interval_text(r, digits)}** (mean [95 % interval]{tost}; {r['subjects']} subjects, "
            f"{r['seeds']} seed(s)) → **{verdict_text(r)}**.", "", "Everything after this section is secondary."]


def _header(ctx: Context, overrides: list[str], seconds: float | None, backbone: Path, where: str) -> list[str]:
    cfg = ctx.cfg
    return ["# petite-fl: local vs federated PEFT", "", *[line + "  " for line in _verdict_metric_lines(ctx)], "",
            *_primary_lines(ctx), "", "## Run", "",
            f"Command: `petite compare {' '.join(overrides)}` (preset `compare={cfg.compare.name}`)  ",
            f"Machine: {platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'} · "
            f"{torch.get_num_threads()} threads  ",
            f"Wall time: {f'{seconds / 60:.1f} min' if seconds is not None else 'not recorded'} · "
            f"petite-fl {__version__}  ",
            f"Backbone: {cfg.model.name} ({cfg.model.preset}) pretrained on {cfg.source} · `{backbone.name}`  ",
            f"Scaling: `{cfg.data.loader.scaling}` (`data.loader.scaling`); metrics in the target's units on it  ",
            f"{where} · training seeds: {', '.join(map(str, ctx.seeds))}"]


def _how_to_read(ctx: Context, n_test: int, missing: dict[str, str]) -> list[str]:
    k = len(ctx.sites)
    lines = ["## How to read it", "",
             "- Every difference is paired: the same test subject of the same scanner, with the same training seed, "
             "under two arms. Cells read *mean [95 % interval]*.",
             f"- Over scanners, two intervals answer two questions. **{FIXED_HEAD}**: the mean Δ over *these* "
             "scanners (each counts once), with their subjects and seeds as the uncertainty. "
             f"**{RANDOM_HEAD}**: the mean Δ over scanners like these, what a new site can expect on average; the "
             f"scanner is the unit, so how much scanners differ is in it. With {k} scanners that spread rests on "
             f"{k - 1} degree(s) of freedom (t = {_t975(k):.2f}): the interval is wide, and that is the honest "
             "answer to *should a new site join?* from this many sites. A single new site's own Δ scatters around "
             "it further.",
             f"- Verdicts: **better** / **worse** (▲/▼) when the 95 % interval excludes zero; **equivalent within "
             f"±margin** (≈) when the 90 % interval lies inside ±{ctx.margin:g} dB (two one-sided tests at 5 %; it "
             f"wins when both hold: a detectable difference smaller than the margin); otherwise **{UNCLEAR}**: the "
             "arms may differ by as much as the interval allows, in either direction; it does not mean they are equal.",
             "- **Worst site**: the scanner whose mean Δ is worst (lowest; highest for an error), with its own "
             "interval — picked by its estimate, so it is the first place to look, not corrected for that choice.",
             "- Intervals (`petite_fl.statistics`): Student t whose squared standard error sums the subjects', the "
             "seeds' (a seed shared by every subject does not average out) and, over scanners, the scanners' "
             "variance components; Satterthwaite degrees of freedom. Their coverage is checked by simulation "
             "(`python -m petite_fl.experiments.coverage`). Seeds enter through t; no bootstrap (its coverage at "
             "these sizes is below 90 %)."]
    if n_test < FEW_SUBJECTS:
        lines.append(f"- With {n_test} test subject(s) per scanner the per-scanner intervals are very wide (a t "
                     f"quantile of {_t975(n_test):.1f} × the standard error): read the columns over scanners, and "
                     "run `petite compare compare=study` for a measurement that can tell arms apart.")
    if missing:
        lines.append("- Arms without results: " + "; ".join(f"**{a}**: {w}" for a, w in missing.items()))
    return lines


def _t975(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, max(1, n - 1)))


def _diff_rows(ctx: Context, base: str, metric: str) -> list[list[str]]:
    """One row of cells per arm: per scanner, worst site, fixed and its verdict, random and its verdict."""
    digits, rows = ALL[metric].digits, []
    for arm in ctx.arms:
        fixed = find(ctx.diffs, arm, base, metric, "fixed")
        if arm == base or fixed is None:
            continue
        rnd = find(ctx.diffs, arm, base, metric, "random")
        out = [f"without {fixed['sites_left_out']}"] if fixed["sites_left_out"] else []
        out += [f"without seed(s) {fixed['seeds_left_out']}"] if fixed.get("seeds_left_out") else []
        worst = fixed["worst_site"]
        rows.append([arm_label(arm), *[interval_text(find(ctx.diffs, arm, base, metric, s), digits) for s in ctx.sites],
                     f"{worst}: {interval_text(find(ctx.diffs, arm, base, metric, worst), digits)}" if worst else "–",
                     interval_text(fixed, digits), verdict_text(fixed) + (f" ({'; '.join(out)})" if out else ""),
                     interval_text(rnd, digits), verdict_text(rnd) if rnd else "–"])
    return rows


def _diff_table(ctx: Context, base: str, metric: str) -> list[str]:
    return ["| arm | " + " | ".join(ctx.sites) + f" | worst site | {FIXED_HEAD} | verdict | {RANDOM_HEAD} | verdict |",
            "|---|" + "---:|" * (len(ctx.sites) + 2) + "---|---:|---|",
            *["| " + " | ".join(row) + " |" for row in _diff_rows(ctx, base, metric)]]


def report_metrics(ctx: Context) -> list[str]:
    """The difference tables report.md shows: the verdict metric, the target's PSNR beside the truth's, the
    regional uptake ratio when measured, head-mask SSIM; the rest is in differences.csv."""
    ssim = "truth_ssim_fg" if ctx.metric == TRUTH_VERDICT else "ssim_fg"
    wanted = dict.fromkeys([ctx.metric, "psnr_fg", "ratio_abs_err", "ratio_bias", ssim])
    return [m for m in wanted if any(r["metric"] == m for r in ctx.diffs)]


def _level_table(ctx: Context, metric: str) -> list[str]:
    digits = ALL[metric].digits
    lines = ["| arm | " + " | ".join(ctx.sites) + " | mean |", "|---|" + "---:|" * (len(ctx.sites) + 1)]
    for arm in ctx.arms:
        runs = ctx.data[arm]
        vals = [float(np.mean([runs.subjects(seed, s, metric).mean() for seed in runs.runs]))
                if s in runs.sites() and runs.reports(s, metric) else None for s in ctx.sites]
        flat = [v for v in vals if v is not None]
        cells = " | ".join("–" if v is None else f"{v:.{digits}f}" for v in vals)
        lines.append(f"| {arm_label(arm)} | {cells} | {f'{np.mean(flat):.{digits}f}' if flat else '–'} |")
    return lines


def markdown(ctx: Context, missing: dict[str, str], curves: list[dict[str, Any]], payload: dict[str, Any],
             figures: list[str], overrides: list[str], seconds: float | None, backbone: Path, where: str,
             extra: list[str] | None = None) -> str:
    """report.md: the verdict metric and the primary endpoint first, then the run, how to read it, the
    secondary difference tables, levels, convergence, communication, `extra` sections, figures.

    `where`: the line on the sites' data (`compare_report.sites_line`, or a deployment's)."""
    n_test = min((len(v["test_subjects"]) for a in ctx.data.values() for v in a.first["sites"].values()
                  if v.get("test_subjects")), default=0)
    lines = [*_header(ctx, overrides, seconds, backbone, where), "", *_how_to_read(ctx, n_test, missing), "",
             "## Arms and budgets", ""]
    for arm in ctx.arms:
        s = ctx.data[arm].first
        lines.append(f"- **{arm_label(arm)}**: {s['describe']} ({s['peft']}); {budget_text(s)}{_protection(s)}")
    for base in ctx.baselines:
        for metric in report_metrics(ctx):
            lines += ["", f"## Δ {ALL[metric].label} vs {base} (secondary)", "", *_diff_table(ctx, base, metric)]
    lines += ["", "Every metric's differences (whole volume, NRMSE, …), each interval's kind, degrees of freedom, "
              "90 % bounds and subject count are in `differences.csv`.", "",
              "## Test metrics per scanner (mean over subjects and seeds)", ""]
    levels = dict.fromkeys([*report_metrics(ctx), "psnr", "ssim"])
    for metric in [m for m in levels if any(ctx.data[a].reports(s, m) for a in ctx.arms for s in ctx.sites)]:
        lines += [f"{ALL[metric].label}:", "", *_level_table(ctx, metric), ""]
    lines += ["Per-subject values: `subjects.csv` (by position in each scanner's test split).", ""]
    lines += _convergence(ctx.arms, curves) + _communication(ctx.cfg, ctx.arms, ctx.data, payload)
    lines += ["", *extra] if extra else []
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    if any(name.startswith("slices_") for name in figures):
        lines += ["", "Slices: the middle axial slice of each scanner's first test subject, predicted by each "
                  "arm's final model for that site (first seed) on a slab of one window depth around it."]
    return "\n".join(lines) + "\n"


def _protection(summary: dict[str, Any]) -> str:
    text = summary.get("protection") or "none"
    if text == "none":
        return ""
    spent = summary.get("privacy")
    eps = f", ε = {spent['epsilon']:.3g} at δ = {spent['delta']:g} (client-level)" if spent else ""
    return f" · protection: {text}{eps}"


def _convergence(arms, curves) -> list[str]:
    rounds = range(max((c["round"] for c in curves), default=0) + 1)
    lines = ["## Convergence (validation PSNR, weighted mean over sites, first seed)", "",
             "| arm | " + " | ".join(f"round {r}" for r in rounds) + " |", "|---|" + "---:|" * len(rounds)]
    for arm in arms:
        by_round = {c["round"]: c for c in curves if c["arm"] == arm}
        lines.append(f"| {arm_label(arm)} | " + " | ".join(f"{by_round[r]['val_psnr']:.2f}" if r in by_round else "–"
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
        lines.append(f"| {arm_label(arm)} | {human_bytes(up)} | {human_bytes(down)} | {human_bytes(bb)} |")
    first = next(iter(payload.values()))
    lines += ["", "Upload per site per round ÷ backbone, from the same record builder applied to each model "
              f"size (PEFT `{cfg.peft.name}`):", "", "| model | " + " | ".join(first) + " |",
              "|---|" + "---:|" * len(first)]
    for model, per in payload.items():
        lines.append(f"| {model} ({human_bytes(next(iter(per.values()))['backbone_bytes'])}){size_label(cfg, model)} | "
                     + " | ".join(f"{v['percent']:.3f} %" for v in per.values()) + " |")
    return lines


def size_label(cfg, model: str) -> str:
    """What a payload row's network is: this run's (a demonstration size unless paper) or the paper's."""
    if model.endswith("-paper"):
        return ", the paper's network" + (" (this run's)" if str(cfg.model.preset) == "paper" else "")
    return ", this run's: a demonstration size" if model == f"{cfg.model.name}-{cfg.model.preset}" else ""


def upload_line(cfg, payload: dict[str, dict[str, dict[str, float]]], strategy: str = "fedavg") -> str:
    """The console's upload share: this run's network labelled for its size, beside the paper-size figure."""
    parts = [f"{per[strategy]['percent']:.2f} % of {model}{size_label(cfg, model)}"
             for model, per in payload.items() if strategy in per]
    return f"upload per site per round ({strategy}, PEFT {cfg.peft.name}): " + "; ".join(parts)


def print_tables(ctx: Context) -> None:
    """The primary endpoint, then the verdict metric's difference tables on the console, one per baseline."""
    from rich.table import Table

    label = ALL[ctx.metric].label
    for line in _verdict_metric_lines(ctx):
        console.print(line.replace("**", ""), markup=False)
    p, r = ctx.primary, ctx.primary_row
    if p is None:
        text = "none named (compare.primary): every difference is secondary"
    elif r is None:
        text = f"{p.describe(ctx.sites)}: not evaluable: {ctx.primary_why}"
    else:
        text = f"{p.describe(ctx.sites)}: Δ = {interval_text(r, ALL[r['metric']].digits)} → {verdict_text(r)}"
    console.print(f"primary endpoint: {text}", markup=False)
    for base in ctx.baselines:
        table = Table(title=f"Δ {label} vs {base} (secondary): mean [95 % interval]")
        for col in ["arm", *ctx.sites, "worst site", FIXED_HEAD, "verdict", RANDOM_HEAD, "verdict"]:
            table.add_column(col, justify="left" if col in ("arm", "verdict") else "right")
        for row in _diff_rows(ctx, base, ctx.metric):
            table.add_row(*row)
        console.print(table)
