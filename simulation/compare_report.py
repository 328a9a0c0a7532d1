"""The comparison report: per-subject results of every arm and seed, paired, with intervals.

Each arm's run writes `summary.json` with every test subject's metrics by position in
the split. For an arm A and a baseline B (local PEFT, no fine-tuning) the paired
difference A − B of each (seed, scanner, subject) is summarised per scanner and pooled
over scanners by `petite_fl.statistics` (mean, 95 % interval, verdict). The verdict uses
head-mask PSNR: whole-volume SSIM is dominated by the air around the head and swings by
0.1 between arms whose PSNR differs by 0.1 dB. An arm that lost a site is compared on the
sites both arms have, and the table says so.
"""

from __future__ import annotations

import csv
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from petite_fl import __version__
from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.console import console, human_bytes
from petite_fl.data.synthetic import SynthSpec
from petite_fl.errors import PetiteError
from petite_fl.federation.arms import arm_dir
from petite_fl.federation.payload import upload_share
from petite_fl.federation.site import site_list
from petite_fl.statistics import BETTER, BOOTSTRAP_MIN, WORSE, Interval, paired_interval
from petite_fl.training.inference import METRICS

VERDICT_METRIC = "psnr_fg"
#: (metric, label, higher is better, digits) of the difference tables, verdict metric first
DIFF_METRICS = (("psnr_fg", "head-mask PSNR (dB)", True, 2), ("ssim_fg", "head-mask SSIM", True, 4),
                ("psnr", "whole-volume PSNR (dB)", True, 2))
MARK = {BETTER: "▲", WORSE: "▼"}
FEW_SUBJECTS = 5  # below this many test subjects per scanner the report warns that intervals are very wide


@dataclass
class ArmRuns:
    """One arm's summaries by seed (an arm with zero rounds runs once and stands for every seed)."""

    arm: str
    runs: dict[int, dict[str, Any]]

    @property
    def seedless(self) -> bool:
        """Zero rounds: no training, so one run stands for every seed."""
        return int(self.first.get("rounds", 1)) == 0

    def has(self, seed: int) -> bool:
        return seed in self.runs or self.seedless

    def seed(self, seed: int) -> dict[str, Any]:
        """That seed's run; never another seed's (a failed seed is left out, not replaced)."""
        if seed in self.runs:
            return self.runs[seed]
        if self.seedless:
            return self.first
        raise KeyError(f"{self.arm} has no run for seed {seed}")

    @property
    def first(self) -> dict[str, Any]:
        return next(iter(self.runs.values()))

    def sites(self) -> set[str]:
        """Sites with per-subject test results in every seed."""
        sets = [{s for s, v in r["sites"].items() if v.get("test_subjects")} for r in self.runs.values()]
        return set.intersection(*sets) if sets else set()

    def subjects(self, seed: int, site: str, metric: str) -> np.ndarray:
        rows = self.seed(seed)["sites"][site]["test_subjects"]
        return np.array([r[metric] for r in sorted(rows, key=lambda r: r["position"])], dtype=np.float64)


def load_arms(folder: Path, arms: list[str], seeds: list[int]) -> tuple[dict[str, ArmRuns], dict[str, str]]:
    """({arm: its runs}, {arm: why it has none}) from <folder>/arms/<arm>/seed-<s>/."""
    out, missing = {}, {}
    for arm in arms:
        runs = {}
        for seed in seeds:
            path = arm_dir(folder, arm, seed) / "summary.json"
            if path.is_file():
                runs[seed] = json.loads(path.read_text())
        if runs:
            out[arm] = ArmRuns(arm, runs)
        else:
            err = next((arm_dir(folder, arm, s) / "error.json" for s in seeds
                        if (arm_dir(folder, arm, s) / "error.json").is_file()), None)
            missing[arm] = json.loads(err.read_text())["error"] if err else f"no results in {folder / 'arms' / arm}"
    if not out:
        raise PetiteError(f"no arm has results in {folder / 'arms'}: "
                          + "; ".join(f"{a}: {w}" for a, w in missing.items()))
    return out, missing


# -- paired differences -----------------------------------------------------------------------


def differences(data: dict[str, ArmRuns], arm: str, base: str, seeds: list[int], sites: list[str],
                metric: str) -> tuple[dict[str, Interval], Interval | None, list[str], list[int]]:
    """({site: interval}, pooled interval, sites left out, seeds left out) of `arm` − `base` in `metric`.

    Only the seeds both arms completed are paired: a failed seed is left out and named.
    """
    common = [s for s in sites if s in data[arm].sites() and s in data[base].sites()]
    both = [seed for seed in seeds if data[arm].has(seed) and data[base].has(seed)]
    strata = {}
    for site in common if both else []:
        a = np.stack([data[arm].subjects(seed, site, metric) for seed in both])
        b = np.stack([data[base].subjects(seed, site, metric) for seed in both])
        if a.shape != b.shape:  # another split size: not the same subjects, nothing to pair
            continue
        strata[site] = a - b
    per_site = {site: paired_interval({site: d}) for site, d in strata.items()}
    pooled = paired_interval(strata) if strata else None
    return per_site, pooled, [s for s in sites if s not in strata], [seed for seed in seeds if seed not in both]


def all_differences(data, arms, seeds, sites, baselines) -> list[dict[str, Any]]:
    rows = []
    for base in baselines:
        for arm in arms:
            if arm == base:
                continue
            for metric, _, higher, _ in DIFF_METRICS:
                per_site, pooled, left_out, seeds_out = differences(data, arm, base, seeds, sites, metric)
                for where, iv in [*per_site.items(), ("pooled", pooled)]:
                    if iv is None:
                        continue
                    rows.append({"arm": arm, "baseline": base, "metric": metric, "site": where, "mean": iv.mean,
                                 "low": iv.low, "high": iv.high, "subjects": iv.subjects, "seeds": iv.seeds,
                                 "method": iv.method, "verdict": iv.verdict(higher),
                                 "sites_left_out": ",".join(left_out) if where == "pooled" else "",
                                 "seeds_left_out": ",".join(map(str, seeds_out))})
    return rows


# -- the report -------------------------------------------------------------------------------


def report(folder: Path, cfg: DictConfig, arms: list[str], seeds: list[int], backbone: Path,
           overrides: list[str], seconds: float) -> Path:
    data, missing = load_arms(folder, arms, seeds)
    arms = [a for a in arms if a in data]
    sites = site_list(cfg)
    baselines = [b for b in cfg.compare.baselines if b in data]
    means = _mean_rows(data, sites)
    diffs = all_differences(data, arms, seeds, sites, baselines)
    write_csv(folder / "results.csv", means)
    write_csv(folder / "subjects.csv", _subject_rows(data, sites))
    write_csv(folder / "differences.csv", diffs)
    curves = _curves(data)
    write_csv(folder / "convergence.csv", curves)
    payload = _payload(cfg)
    write_json(folder / "payload.json", payload)
    from simulation.compare_figures import figures

    names = figures(folder, data, arms, sites, curves, diffs, baselines, cfg, backbone)
    md = _markdown(cfg, arms, seeds, data, missing, sites, means, diffs, baselines, curves, payload, names,
                   overrides, seconds, backbone)
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(md)
    _print(diffs, arms, sites, baselines)
    console.print(f"report: {folder / 'report.md'}", markup=False)
    return folder / "report.md"


def _mean_rows(data: dict[str, ArmRuns], sites: list[str]) -> list[dict[str, Any]]:
    """Per arm, seed and site: the test means (head mask first) and bytes."""
    rows = []
    for arm, runs in data.items():
        for seed, s in runs.runs.items():
            for site in sites:
                v = s["sites"].get(site) or {}
                test = v.get("test") or {}
                rows.append({"arm": arm, "seed": seed, "strategy": s["strategy"], "peft": s["peft"], "site": site,
                             "subjects": test.get("subjects"),
                             **{k: test.get(k) for k in ("psnr_fg", "ssim_fg", "nrmse_fg", "psnr", "ssim", "nrmse")},
                             "upload_bytes_per_round": v.get("upload_bytes_per_round"),
                             "backbone_bytes_received": v.get("backbone_bytes")})
    return rows


def _subject_rows(data: dict[str, ArmRuns], sites: list[str]) -> list[dict[str, Any]]:
    return [{"arm": arm, "seed": seed, "site": site, "position": r["position"], **{k: r[k] for k in METRICS}}
            for arm, runs in data.items() for seed, s in runs.runs.items() for site in sites
            for r in (s["sites"].get(site) or {}).get("test_subjects") or []]


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _curves(data: dict[str, ArmRuns]) -> list[dict[str, Any]]:
    """Per arm and round (first seed): weighted-mean validation metrics and mean training loss."""
    out = []
    for arm, runs in data.items():
        folder = Path(runs.first["run_dir"])
        metrics, train = _read_csv(folder / "metrics.csv"), _read_csv(folder / "train.csv")
        for rnd in sorted({int(r["round"]) for r in metrics if r["split"] == "val"}):
            val = [r for r in metrics if r["split"] == "val" and int(r["round"]) == rnd]
            w = sum(int(r["subjects"]) for r in val)
            row = {"arm": arm, "round": rnd, **{f"val_{k}": sum(float(r[k]) * int(r["subjects"]) for r in val) / w
                                                for k in ("psnr", "ssim")}}
            losses = [float(r["train_loss"]) for r in train if int(r["round"]) == rnd and r["train_loss"]]
            row["train_loss"] = sum(losses) / len(losses) if losses else None
            out.append(row)
    return out


def _payload(cfg: DictConfig) -> dict[str, Any]:
    """Upload per round ÷ backbone, from the real record builder, tiny and paper size."""
    from petite_fl.config import compose

    strategies = {n: compose("config", [f"strategy={n}"]).strategy
                  for n in ("fedavg", "shared-encoder", "split-lora", "personalized", "local")}
    out = {}
    for preset in dict.fromkeys([str(cfg.model.preset), "paper"]):
        out[f"{cfg.model.name}-{preset}"] = upload_share(str(cfg.model.name), preset, cfg.peft, strategies)
    return out


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


def _data_line(cfg: DictConfig, sites: list[str]) -> str:
    if str(cfg.data.name).startswith("synthetic"):
        spec = SynthSpec.from_config(cfg.data.synth)
        sizes = {s: dict(spec.splits_for(s)) for s in sites}
        return "Subjects per scanner (train/val/test): " + ", ".join(
            f"{s} {v['train']}/{v['val']}/{v['test']}" for s, v in sizes.items())
    return "Sites: " + ", ".join(sites)


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


def _markdown(cfg, arms, seeds, data, missing, sites, means, diffs, baselines, curves, payload, figures,
              overrides, seconds, backbone) -> str:
    n_test = min((len(v["test_subjects"]) for a in data.values() for v in a.first["sites"].values()
                  if v.get("test_subjects")), default=0)
    small = n_test < FEW_SUBJECTS
    lines = ["# petite-fl: local vs federated PEFT", "",
             f"Command: `petite compare {' '.join(overrides)}` (preset `compare={cfg.compare.name}`)  ",
             f"Machine: {platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
             f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'} · "
             f"{torch.get_num_threads()} threads  ",
             f"Wall time: {seconds / 60:.1f} min · petite-fl {__version__}  ",
             f"Backbone: {cfg.model.name} ({cfg.model.preset}) pretrained on {cfg.source} · `{backbone.name}`  ",
             f"{_data_line(cfg, sites)} · training seeds: {', '.join(map(str, seeds))}", "",
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
    lines += ["", "Slices: the middle axial slice of each scanner's first test subject, predicted by each arm's "
              "final model for that site (first seed) on a slab of one window depth around it."]
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


def _print(diffs, arms, sites, baselines) -> None:
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
