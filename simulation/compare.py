"""`petite compare`: local vs federated PEFT on the five synthetic scanners, one report.

Every arm (no fine-tuning, local PEFT, fedavg, shared-encoder, personalized, local full
fine-tuning) runs through the same Flower apps in one `flwr run` simulation, on the same
data, the same backbone (pretrained on the source scanner, cached) and the same
local-step budget. The sites report whole-volume test metrics; this module gathers
them into report.md, results.csv and PNG figures.
"""

from __future__ import annotations

import csv
import json
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from petite_fl import __version__
from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.config import compose, expand_path, overrides_from_run_config
from petite_fl.console import console, human_bytes
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.payload import upload_share
from petite_fl.federation.site import site_list
from petite_fl.training.inference import METRICS
from petite_fl.training.jobs import backbone_for, config_hash, resolve_site
from simulation.flower_run import LocalSimulation, app_defaults, resources

DEFAULT_ARMS = ("no-finetune", "local", "fedavg", "shared-encoder", "personalized")  # + local-full on request


def _hydra(key: str, value: Any) -> str:
    text = str(value)
    return f"{key}={text}" if all(c.isalnum() or c in "_-./[],:" for c in text) else f"{key}='{text}'"


def compare_overrides(overrides: list[str]) -> list[str]:
    """compare.overrides (the comparison's sizing), then the user's own."""
    base = compose("config", [*overrides_from_run_config(app_defaults()), *overrides])
    return [*[str(o) for o in base.compare.overrides], *overrides]


def compare_config(overrides: list[str]) -> DictConfig:
    """The config of a Flower run: pyproject's Flower defaults, then these overrides."""
    return compose("config", [*overrides_from_run_config(app_defaults()), *overrides])


def run(overrides: list[str], arms: list[str] | None = None, out: Path | None = None) -> Path:
    """Run the comparison; returns the folder with report.md."""
    begin = time.perf_counter()
    user = list(overrides)
    overrides = compare_overrides(user)
    cfg = compare_config(overrides)
    arms = list(arms or DEFAULT_ARMS)
    unknown = [a for a in arms if a not in cfg.compare.arms]
    if unknown:
        raise ConfigError(f"unknown arm(s) {unknown}; defined in compare.arms: {', '.join(cfg.compare.arms)}")
    sites = site_list(cfg)
    folder = Path(out) if out else expand_path(cfg.paths.cache) / "runs" / "compare" / config_hash(
        __version__, OmegaConf.to_container(cfg, resolve=True), arms)
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"comparison of {', '.join(arms)} on {', '.join(sites)} → {folder}")

    # Data and backbone first, here, with progress: the sites then find them cached.
    for site in sites:
        resolve_site(cfg, site)
    backbone = backbone_for(cfg)
    console.print(f"backbone: {backbone}")

    extra = [*overrides, _hydra("backbone", backbone), f"compare.run=[{','.join(arms)}]", _hydra("compare.dir", folder)]
    cpus, gpus = resources(str(cfg.train.device))
    with LocalSimulation() as sim:
        result = sim.run({"overrides": shlex.join(extra)}, num_supernodes=len(sites), cpus_per_client=cpus,
                         gpus_per_client=gpus)
    console.print(f"Flower run {result.run_id} {result.status} in {result.seconds:.0f} s")
    report(folder, cfg, arms, backbone, user, time.perf_counter() - begin)
    return folder


# -- the report ---------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def load_arms(folder: Path, arms: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for arm in arms:
        d = folder / "arms" / arm
        if not (d / "summary.json").is_file():
            raise PetiteError(f"arm '{arm}' has no results in {d}")
        out[arm] = {"summary": json.loads((d / "summary.json").read_text()),
                    "metrics": _read_csv(d / "metrics.csv"), "train": _read_csv(d / "train.csv"),
                    "transfer": _read_csv(d / "transfer.csv")}
    return out


def report(folder: Path, cfg: DictConfig, arms: list[str], backbone: Path, overrides: list[str],
           seconds: float) -> Path:
    data = load_arms(folder, arms)
    sites = site_list(cfg)
    rows = []
    for arm, d in data.items():
        s = d["summary"]
        for site in sites:
            test = (s["sites"].get(site) or {}).get("test") or {}
            rows.append({"arm": arm, "strategy": s["strategy"], "peft": s["peft"], "site": site,
                         **{k: test.get(k) for k in METRICS},
                         "upload_bytes_per_round": s["sites"].get(site, {}).get("upload_bytes_per_round"),
                         "backbone_bytes_received": s["sites"].get(site, {}).get("backbone_bytes")})
    write_csv(folder / "results.csv", rows)
    curves = _curves(data)
    write_csv(folder / "convergence.csv", curves)
    payload = _payload(cfg)
    write_json(folder / "payload.json", payload)
    figures = _figures(folder, data, sites, curves, cfg, backbone)
    md = _markdown(cfg, arms, data, sites, rows, curves, payload, figures, overrides, seconds, backbone)
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(md)
    _print(rows, arms, sites)
    console.print(f"report: {folder / 'report.md'}")
    return folder / "report.md"


def _curves(data) -> list[dict[str, Any]]:
    """Per arm and round: weighted-mean validation metrics and mean training loss."""
    out = []
    for arm, d in data.items():
        rounds = sorted({int(r["round"]) for r in d["metrics"] if r["split"] == "val"})
        for rnd in rounds:
            val = [r for r in d["metrics"] if r["split"] == "val" and int(r["round"]) == rnd]
            w = sum(int(r["subjects"]) for r in val)
            row = {"arm": arm, "round": rnd,
                   **{f"val_{k}": sum(float(r[k]) * int(r["subjects"]) for r in val) / w for k in ("psnr", "ssim")}}
            losses = [float(r["train_loss"]) for r in d["train"] if int(r["round"]) == rnd and r["train_loss"]]
            row["train_loss"] = sum(losses) / len(losses) if losses else None
            out.append(row)
    return out


def _payload(cfg: DictConfig) -> dict[str, Any]:
    """Upload per round ÷ backbone, from the real record builder, tiny and paper size."""
    strategies = {n: compose("config", [f"strategy={n}"]).strategy
                  for n in ("fedavg", "shared-encoder", "personalized", "local")}
    out = {}
    for preset in dict.fromkeys([str(cfg.model.preset), "paper"]):
        out[f"{cfg.model.name}-{preset}"] = upload_share(str(cfg.model.name), preset, cfg.peft, strategies)
    return out


def _mean(rows, arm, key) -> float | None:
    vals = [r[key] for r in rows if r["arm"] == arm and r[key] is not None]
    return sum(vals) / len(vals) if vals else None


def _protection(summary: dict[str, Any]) -> str:
    """' · SecAgg+ …, ε = … at δ = …' for a protected arm (summaries before #6 have neither key)."""
    text = summary.get("protection") or "none"
    if text == "none":
        return ""
    spent = summary.get("privacy")
    eps = f", ε = {spent['epsilon']:.3g} at δ = {spent['delta']:g} (client-level)" if spent else ""
    return f" · protection: {text}{eps}"


def _markdown(cfg, arms, data, sites, rows, curves, payload, figures, overrides, seconds, backbone) -> str:
    def cell(arm, site, key, fmt):
        r = next((r for r in rows if r["arm"] == arm and r["site"] == site), None)
        return format(r[key], fmt) if r and r[key] is not None else "–"

    lines = ["# petite-fl: local vs federated PEFT", "",
             f"Command: `petite compare {' '.join(overrides)}`  ",
             f"Machine: {platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · "
             f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'} · "
             f"{torch.get_num_threads()} threads  ",
             f"Wall time: {seconds / 60:.1f} min · petite-fl {__version__}  ",
             f"Backbone: {cfg.model.name} ({cfg.model.preset}) pretrained on {cfg.source} · `{backbone.name}`  ",
             f"Budget per site: {cfg.federation.rounds} rounds × {cfg.federation.local_steps} local steps "
             f"(batch {cfg.train.batch_size} volumes × {cfg.data.loader.patches_per_volume} patches); "
             f"PEFT `{cfg.peft.name}`", "",
             "Arms: " + "; ".join(f"**{a}**: {data[a]['summary']['describe']} ({data[a]['summary']['peft']})"
                                  + _protection(data[a]["summary"]) for a in arms), "",
             "## Test PSNR (dB) per scanner, whole volume", "",
             "| arm | " + " | ".join(sites) + " | mean | Δ mean vs local |",
             "|---|" + "---:|" * (len(sites) + 2)]
    base = _mean(rows, "local", "psnr") if "local" in arms else None
    for arm in arms:
        m = _mean(rows, arm, "psnr")
        delta = f"{m - base:+.2f}" if base is not None and m is not None else "–"
        lines.append(f"| {arm} | " + " | ".join(cell(arm, s, "psnr", ".2f") for s in sites)
                     + f" | {m:.2f} | {delta} |")
    lines += ["", "## Test SSIM per scanner", "", "| arm | " + " | ".join(sites) + " | mean |",
              "|---|" + "---:|" * (len(sites) + 1)]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(cell(arm, s, "ssim", ".4f") for s in sites)
                     + f" | {_mean(rows, arm, 'ssim'):.4f} |")
    lines += ["", "Foreground (head) PSNR / SSIM and NRMSE per scanner are in `results.csv`.", "",
              "## Convergence (validation, weighted mean over sites)", "",
              "| arm | " + " | ".join(f"round {r}" for r in range(int(cfg.federation.rounds) + 1)) + " |",
              "|---|" + "---:|" * (int(cfg.federation.rounds) + 1)]
    for arm in arms:
        by_round = {c["round"]: c for c in curves if c["arm"] == arm}
        lines.append(f"| {arm} | " + " | ".join(f"{by_round[r]['val_psnr']:.2f}" if r in by_round else "–"
                                               for r in range(int(cfg.federation.rounds) + 1)) + " |")
    lines += ["", "## Communication", "",
              "Measured in this run (bytes of the arrays in each message, per site per round; under SecAgg+ "
              "every record of its four stages, keys and masked vectors included):", "",
              "| arm | upload / round | download / round | backbone received (first run) |", "|---|---:|---:|---:|"]
    for arm in arms:
        s = data[arm]["summary"]
        up = max((v["upload_bytes_per_round"] for v in s["sites"].values()), default=0)
        down = max((v["download_bytes_per_round"] for v in s["sites"].values()), default=0)
        bb = max((v["backbone_bytes"] for v in s["sites"].values()), default=0)
        lines.append(f"| {arm} | {human_bytes(up)} | {human_bytes(down)} | {human_bytes(bb)} |")
    lines += ["", "Upload per site per round ÷ backbone, from the same record builder applied to each model "
              f"size (PEFT `{cfg.peft.name}`):", "", "| model | " + " | ".join(next(iter(payload.values())))
              + " |", "|---|" + "---:|" * len(next(iter(payload.values())))]
    for model, per in payload.items():
        lines.append(f"| {model} ({human_bytes(next(iter(per.values()))['backbone_bytes'])}) | "
                     + " | ".join(f"{v['percent']:.3f} %" for v in per.values()) + " |")
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += ["", "Slices: the middle axial slice of each scanner's first test subject, predicted by each arm's "
              "final model for that site on a slab of one patch depth around it (whole-volume metrics above "
              "come from the sites)."]
    return "\n".join(lines) + "\n"


def _print(rows, arms, sites) -> None:
    from rich.table import Table

    table = Table(title="test PSNR dB (whole volume)")
    table.add_column("arm")
    for s in sites:
        table.add_column(s, justify="right")
    table.add_column("mean", justify="right")
    for arm in arms:
        vals = [next((r["psnr"] for r in rows if r["arm"] == arm and r["site"] == s), None) for s in sites]
        mean = _mean(rows, arm, "psnr")
        table.add_row(arm, *[f"{v:.2f}" if v is not None else "–" for v in vals], f"{mean:.2f}" if mean else "–")
    console.print(table)


# -- figures --------------------------------------------------------------------------------


def _figures(folder, data, sites, curves, cfg, backbone) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = []
    arms = list(data)
    colors = {a: plt.cm.tab10(i) for i, a in enumerate(arms)}
    for key, label in (("psnr", "test PSNR (dB)"), ("ssim", "test SSIM")):
        fig, ax = plt.subplots(figsize=(2 + 1.6 * len(sites), 4))
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            vals = [((data[arm]["summary"]["sites"].get(s) or {}).get("test") or {}).get(key, np.nan) for s in sites]
            ax.bar(np.arange(len(sites)) + (i - (len(arms) - 1) / 2) * width, vals, width, label=arm,
                   color=colors[arm])
        finite = [v for arm in arms for s in sites
                  if (v := ((data[arm]["summary"]["sites"].get(s) or {}).get("test") or {}).get(key)) is not None]
        if finite:
            lo, hi = min(finite), max(finite)
            ax.set_ylim(lo - 0.15 * (hi - lo + 1e-6) - (0.5 if key == "psnr" else 0.01), hi + 0.1 * (hi - lo + 1e-6))
        ax.set_xticks(range(len(sites)), sites)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, ncol=3)
        ax.set_title(f"{label} per scanner")
        names.append(_save(fig, folder / f"{key}_per_scanner.png"))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm in arms:
        c = sorted((r for r in curves if r["arm"] == arm), key=lambda r: r["round"])
        if c:
            a1.plot([r["round"] for r in c], [r["val_psnr"] for r in c], "o-", label=arm, color=colors[arm])
            loss = [(r["round"], r["train_loss"]) for r in c if r["train_loss"] is not None]
            if loss:
                a2.plot(*zip(*loss, strict=True), "o-", label=arm, color=colors[arm])
    a1.set(xlabel="round", ylabel="validation PSNR (dB), weighted mean", title="convergence")
    a2.set(xlabel="round", ylabel="training loss, mean over sites", title="local training loss")
    a2.set_yscale("log")
    a1.legend(fontsize=7)
    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    names.append(_save(fig, folder / "convergence.png"))
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in arms:
        tr = [r for r in data[arm]["transfer"] if r["what"] in ("peft", "peft-secagg")]
        rounds = sorted({int(r["round"]) for r in tr})
        if rounds:
            ax.plot(rounds, [sum(int(r["bytes_up"]) for r in tr if int(r["round"]) == k) / 1024 for k in rounds],
                    "o-", label=arm, color=colors[arm])
    ax.set(xlabel="round", ylabel="KiB uploaded (all sites)", title="upload per round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    names.append(_save(fig, folder / "bytes_per_round.png"))
    names += _slices(folder, data, sites, cfg, backbone)
    return names


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


def _slices(folder, data, sites, cfg, backbone) -> list[str]:
    import matplotlib.pyplot as plt

    from petite_fl.data.site import load_site
    from petite_fl.training.inference import predict_volume
    from petite_fl.training.jobs import device_and_amp, load_model, training_patch

    device, amp = device_and_amp(cfg)
    names = []
    for site in sites:
        manifest = resolve_site(cfg, site)
        sd = load_site(manifest, splits=("test",), scaling=str(cfg.data.loader.scaling))
        if not sd.pairs["test"]:
            continue
        sid, x, y = sd.arrays("test")[0]
        roi = None
        z = x.shape[2] // 2
        panels = [("input (short scan)", x[:, :, z]), ("target (full scan)", y[:, :, z])]
        for arm, d in data.items():
            adapter = (d["summary"]["sites"].get(site) or {}).get("adapter")
            if not adapter or not Path(adapter).is_file():
                continue
            model, _, _ = load_model(backbone, Path(adapter), device)
            roi = roi or training_patch(manifest, cfg.train, model.size_multiple)
            lo = max(0, min(z - roi[2] // 2, x.shape[2] - roi[2]))
            slab = predict_volume(model, x[:, :, lo:lo + roi[2]], roi, device=device,
                                  overlap=float(cfg.train.eval.overlap),
                                  sw_batch_size=int(cfg.train.eval.sw_batch_size), amp=amp)
            panels.append((arm, slab[:, :, z - lo]))
        vmax = float(np.percentile(y[:, :, z], 99.5)) or 1.0
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
        for ax, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
            ax.imshow(np.rot90(image), cmap="gray_r", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{site}, {sid}, axial slice {z}", fontsize=9)
        names.append(_save(fig, folder / f"slices_{site}.png"))
    return names
