"""The comparison's figures: a forest plot of ΔPSNR with intervals, levels, convergence, bytes, slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from petite_fl.atomic import atomic_path
from petite_fl.statistics import BETTER, WORSE


def figures(folder: Path, data: dict, arms: list[str], sites: list[str], curves: list[dict[str, Any]],
            diffs: list[dict[str, Any]], baselines: list[str], cfg: DictConfig, backbone: Path,
            refs: dict[str, str] | None = None) -> list[str]:
    """The report's figures. `refs` ({site label: scanner or manifest}): predicted slices too, which need the
    sites' test scans and adapters on this machine (a simulation's); None: none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
    names = []
    if baselines:
        names.append(_forest(folder, arms, sites, diffs, baselines, colors))
    names.append(_levels(folder, data, arms, sites, colors))
    names.append(_convergence(folder, arms, curves, colors))
    names.append(_bytes(folder, data, arms, colors))
    if refs is not None:
        names += _slices(folder, data, refs, cfg, backbone)
    return names


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


def _forest(folder, arms, sites, diffs, baselines, colors) -> str:
    """ΔPSNR (head mask) per scanner and pooled, one row per arm, with 95 % intervals."""
    import matplotlib.pyplot as plt

    places = [*sites, "pooled"]
    height = 0.9 + 0.28 * len(arms) * len(places)
    fig, axes = plt.subplots(1, len(baselines), figsize=(5.5 * len(baselines), height), squeeze=False)
    for ax, base in zip(axes[0], baselines, strict=True):
        shown = [a for a in arms if a != base]
        y, labels = 0, []
        for place in places:
            for arm in shown:
                r = next((r for r in diffs if (r["arm"], r["baseline"], r["metric"], r["site"])
                          == (arm, base, "psnr_fg", place)), None)
                if r is not None:
                    lo, hi = r["low"], r["high"]
                    err = None if not np.isfinite(lo) else [[r["mean"] - lo], [hi - r["mean"]]]
                    marker = {BETTER: "^", WORSE: "v"}.get(r["verdict"], "o")
                    ax.errorbar(r["mean"], -y, xerr=err, fmt=marker, color=colors[arm], capsize=2, ms=5,
                                mew=1.5 if place == "pooled" else 1)
                labels.append((-y, f"{place} · {arm}"))
                y += 1
            y += 0.6
        ax.axvline(0.0, color="0.4", lw=0.8)
        ax.set_yticks([p for p, _ in labels], [t for _, t in labels], fontsize=6)
        ax.set_xlabel(f"Δ head-mask PSNR vs {base} (dB), mean and 95 % interval")
        ax.set_title(f"vs {base} (▲ better, ▼ worse, ● no detectable difference)", fontsize=8)
    return _save(fig, folder / "forest_psnr.png")


def _levels(folder, data, arms, sites, colors) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(4 + 3.2 * len(sites), 4))
    width = 0.8 / len(arms)
    panels = (("psnr_fg", "test head-mask PSNR (dB)"), ("psnr", "test whole-volume PSNR (dB)"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        finite = []
        for i, arm in enumerate(arms):
            vals = []
            for s in sites:
                per_seed = [((r["sites"].get(s) or {}).get("test") or {}).get(key) for r in data[arm].runs.values()]
                per_seed = [v for v in per_seed if v is not None]
                vals.append(float(np.mean(per_seed)) if per_seed else np.nan)
            finite += [v for v in vals if np.isfinite(v)]
            ax.bar(np.arange(len(sites)) + (i - (len(arms) - 1) / 2) * width, vals, width, label=arm,
                   color=colors[arm])
        if finite:
            lo, hi = min(finite), max(finite)
            ax.set_ylim(lo - 0.15 * (hi - lo + 1e-6) - 0.5, hi + 0.1 * (hi - lo + 1e-6))
        ax.set_xticks(range(len(sites)), sites)
        ax.set_ylabel(label)
        ax.set_title(f"{label}, mean over seeds", fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    return _save(fig, folder / "psnr_per_scanner.png")


def _convergence(folder, arms, curves, colors) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm in arms:
        c = sorted((r for r in curves if r["arm"] == arm), key=lambda r: r["round"])
        if c:
            a1.plot([r["round"] for r in c], [r["val_psnr"] for r in c], "o-", label=arm, color=colors[arm])
            loss = [(r["round"], r["train_loss"]) for r in c if r["train_loss"] is not None]
            if loss:
                a2.plot(*zip(*loss, strict=True), "o-", label=arm, color=colors[arm])
    a1.set(xlabel="round", ylabel="validation PSNR (dB), weighted mean", title="convergence (first seed)")
    a2.set(xlabel="round", ylabel="training loss, mean over sites", title="local training loss")
    a2.set_yscale("log")
    a1.legend(fontsize=7)
    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, folder / "convergence.png")


def _bytes(folder, data, arms, colors) -> str:
    import csv

    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in arms:
        path = Path(data[arm].first["run_dir"]) / "transfer.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as fh:
            tr = [r for r in csv.DictReader(fh) if r["what"] in ("peft", "peft-secagg")]
        rounds = sorted({int(r["round"]) for r in tr})
        if rounds:
            ax.plot(rounds, [sum(int(r["bytes_up"]) for r in tr if int(r["round"]) == k) / 1024 for k in rounds],
                    "o-", label=arm, color=colors[arm])
    ax.set(xlabel="round", ylabel="KiB uploaded (all sites)", title="upload per round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    return _save(fig, folder / "bytes_per_round.png")


def _slices(folder, data, refs, cfg, backbone) -> list[str]:
    import matplotlib.pyplot as plt

    from petite_fl.data.site import load_site
    from petite_fl.data.sites import resolve_site, training_patch
    from petite_fl.training.device import device_and_amp
    from petite_fl.training.inference import predict_volume
    from petite_fl.training.jobs import load_model

    device, amp = device_and_amp(cfg)
    names = []
    for site, ref in refs.items():
        manifest = resolve_site(cfg, ref)
        sd = load_site(manifest, splits=("test",), scaling=str(cfg.data.loader.scaling))
        if not sd.pairs["test"]:
            continue
        _, x, y = sd.arrays("test")[0]
        roi = None
        z = x.shape[2] // 2
        panels = [("input (short scan)", x[:, :, z]), ("target (full scan)", y[:, :, z])]
        for arm, runs in data.items():
            adapter = (runs.first["sites"].get(site) or {}).get("adapter")
            if not adapter or not Path(adapter).is_file():
                continue
            model, _, _ = load_model(backbone, Path(adapter), device)
            roi = roi or training_patch(manifest, cfg.train, model.size_multiple)
            lo = max(0, min(z - roi[2] // 2, x.shape[2] - roi[2]))
            slab = predict_volume(model, x[:, :, lo:lo + roi[2]], roi, device=device,
                                  overlap=float(cfg.train.eval.overlap),
                                  sw_batch_size=int(cfg.train.eval.sw_batch_size), amp=amp,
                                  region=str(cfg.train.eval.region))
            panels.append((arm, slab[:, :, z - lo]))
        vmax = float(np.percentile(y[:, :, z], 99.5)) or 1.0
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
        for ax, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
            ax.imshow(np.rot90(image), cmap="gray_r", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{site}, first test subject, axial slice {z}", fontsize=9)
        names.append(_save(fig, folder / f"slices_{site}.png"))
    return names
