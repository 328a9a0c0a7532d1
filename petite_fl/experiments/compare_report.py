"""The comparison report: per-subject results of every arm and seed, paired, with intervals.

Writes the report folder: CSV tables (means, subjects, differences from `compare_results`,
convergence, how far shared LoRA A moved from `compare_drift`), payload.json, the figures
(`compare_figures`) and report.md (`compare_markdown`). The verdict metric is head-mask
PSNR against the ground truth where every compared site has one (simulation), else against
the target (`compare_results.verdict_metric`); whole-volume SSIM is not a verdict metric,
dominated by the air around the head (it swung by 0.1 between arms whose PSNR differed by
0.1 dB). The primary endpoint (`compare.primary`) comes first; an arm that lost a site is
compared on the sites both arms have, and the table says so.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.console import console
from petite_fl.data.sites import site_labels, split_counts
from petite_fl.errors import PetiteError
from petite_fl.experiments.compare_drift import drift_markdown, drift_rows
from petite_fl.experiments.compare_endpoints import SUBJECT_METRICS, margin_of, primary_of
from petite_fl.experiments.compare_markdown import Context, markdown, print_tables, upload_line
from petite_fl.experiments.compare_results import (
    ArmRuns,
    all_differences,
    load_arms,
    primary_difference,
    verdict_metric,
)
from petite_fl.federation.flower.payload import upload_share
from petite_fl.runconfig import site_list
from petite_fl.tracking import job_tracker


def report(folder: Path, cfg: DictConfig, arms: list[str], seeds: list[int], backbone: Path,
           overrides: list[str], seconds: float | None, deployed: str | None = None) -> Path:
    """Every file of the report from the arms' runs in `folder`; returns report.md's path.

    `deployed`: the connection of the deployed coordinator the arms ran at. Its sites are those that
    answered, and the report shows no slices: the coordinator holds no site's scans."""
    data, missing = load_arms(folder, arms, seeds)
    arms = [a for a in arms if a in data]
    refs = answered_sites(cfg, data) if deployed else site_list(cfg)
    labels = {r: r for r in refs} if deployed else site_labels(refs)  # a deployed site's name is its label
    data = {arm: relabelled(runs, labels) for arm, runs in data.items()}
    sites = [labels[r] for r in refs]
    baselines = [b for b in cfg.compare.baselines if b in data]
    margin, primary = margin_of(cfg), primary_of(cfg)
    means = _mean_rows(data, sites)
    diffs = all_differences(data, arms, seeds, sites, baselines, margin)
    first, why = primary_difference(data, primary, seeds, sites, margin) if primary else (None, "")
    if first is not None:
        diffs = [first, *diffs]
    write_csv(folder / "results.csv", means)
    write_csv(folder / "subjects.csv", _subject_rows(data, sites))
    write_csv(folder / "differences.csv", diffs)
    track(folder, cfg, means, diffs)
    curves = _curves(data)
    write_csv(folder / "convergence.csv", curves)
    payload = _payload(cfg)
    write_json(folder / "payload.json", payload)
    ctx = Context(cfg, arms, seeds, data, sites, diffs, baselines, verdict_metric(data, sites), margin, primary,
                  first, why)
    from petite_fl.experiments.compare_figures import figures

    names = figures(folder, ctx, curves, backbone,
                    refs=None if deployed or not backbone.is_file() else {labels[r]: r for r in refs})
    where = deployed_line(deployed, data, sites) if deployed else sites_line(cfg, refs, labels)
    drift = drift_rows(folder, {a: data[a] for a in arms})  # how far shared LoRA A moved (split-lora, fedavg)
    if drift:
        write_csv(folder / "lora_a_drift.csv", drift)
    md = markdown(ctx, missing, curves, payload, names, overrides, seconds, backbone, where,
                  extra=drift_markdown(drift))
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(md)
    print_tables(ctx)
    console.print(upload_line(cfg, payload), markup=False)
    console.print(f"report: {folder / 'report.md'}", markup=False)
    return folder / "report.md"


def answered_sites(cfg: DictConfig, data: dict[str, ArmRuns]) -> list[str]:
    """The sites with results in some arm: those federation.sites lists first, in its order."""
    found = {s for runs in data.values() for r in runs.runs.values() for s in r["sites"]}
    return [s for s in site_list(cfg) if s in found] + sorted(found - set(site_list(cfg)))


def relabelled(runs: ArmRuns, labels: dict[str, str]) -> ArmRuns:
    """The arm's summaries with each site under its label (a manifest site under its name, not its path)."""
    return ArmRuns(runs.arm, {seed: {**r, "sites": {labels.get(s, s): v for s, v in r["sites"].items()}}
                              for seed, r in runs.runs.items()})


def sites_line(cfg: DictConfig, refs: list[str], labels: dict[str, str]) -> str:
    """Subjects per split of each simulated site, and which manifest a labelled site is."""
    def counts(ref: str) -> str:
        try:
            c = split_counts(cfg, ref)[0]
        except PetiteError:  # a manifest moved since the comparison ran
            return "?"
        return "/".join(str(c.get(k, 0)) for k in ("train", "val", "test"))

    files = [f"{labels[r]} = `{r}`" for r in refs if labels[r] != r]
    return ("Subjects per site (train/val/test): " + ", ".join(f"{labels[r]} {counts(r)}" for r in refs)
            + (f" · manifests: {', '.join(files)}" if files else ""))


def deployed_line(connection: str, data: dict[str, ArmRuns], sites: list[str]) -> str:
    """Where a deployed comparison ran and what each site evaluated (from the sites' own replies)."""
    counts = {s: max(((runs.first["sites"].get(s) or {}).get("test") or {}).get("subjects") or 0
                     for runs in data.values()) for s in sites}
    return (f"Deployed federation `{connection}`: each site trained and evaluated on its own data; test subjects "
            "per site (from their replies): " + ", ".join(f"{s} {n}" for s, n in counts.items())
            + "; the coordinator never held a scan (no slices)")


def track(folder: Path, cfg: DictConfig, means: list[dict[str, Any]], diffs: list[dict[str, Any]]) -> None:
    """The comparison in the folder's tracker (`cfg.tracking`): per arm its test means (over seeds, per
    site and over sites) as `final/<arm>/test_<metric>/<site|mean>`, and every paired difference with
    its interval as `diff/<arm>-<baseline>/<metric>/<site|fixed|random|primary>/{mean,low,high}`. The arms'
    own runs track into their run folders."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in means:
        for k in SUBJECT_METRICS:
            if row.get(k) is not None:
                values[f"final/{row['arm']}/test_{k}/{row['site']}"].append(float(row[k]))
                values[f"final/{row['arm']}/test_{k}/mean"].append(float(row[k]))
    for row in diffs:
        for end in ("mean", "low", "high"):
            values[f"diff/{row['arm']}-{row['baseline']}/{row['metric']}/{row['site']}/{end}"].append(float(row[end]))
    with job_tracker(cfg, folder, "compare", folder.name, "coordinator") as tracker:
        tracker.scalars({k: sum(v) / len(v) for k, v in values.items()}, 0)


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
                             **{k: test[k] for k in SUBJECT_METRICS if test.get(k) is not None},
                             "upload_bytes_per_round": v.get("upload_bytes_per_round"),
                             "backbone_bytes_received": v.get("backbone_bytes")})
    return rows


def _subject_rows(data: dict[str, ArmRuns], sites: list[str]) -> list[dict[str, Any]]:
    return [{"arm": arm, "seed": seed, "site": site, "position": r["position"],
             **{k: r[k] for k in SUBJECT_METRICS if r.get(k) is not None}}
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
            weight = [int(r.get("weight") or r["subjects"]) for r in val]  # bounded (server/weights.py) where logged
            w = sum(weight)
            row = {"arm": arm, "round": rnd, **{f"val_{k}": sum(float(r[k]) * n for r, n in zip(val, weight,
                                                                                                 strict=True)) / w
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
