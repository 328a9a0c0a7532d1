"""The comparison's figures: a forest plot of the verdict metric's Δ with intervals, levels, convergence,
bytes, slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from petite_fl.atomic import atomic_path
from petite_fl.experiments.compare_endpoints import ALL
from petite_fl.experiments.compare_markdown import Context, find
from petite_fl.statistics import BETTER, EQUIVALENT, WORSE


def figures(folder: Path, ctx: Context, curves: list[dict[str, Any]], backbone: Path,
            refs: dict[str, str] | None = None) -> list[str]:
    """The report's figures. `refs` ({site label: scanner or manifest}): predicted slices too, which need the
    sites' test scans and adapters on this machine (a simulation's); None: none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, arms, sites, cfg = ctx.data, ctx.arms, ctx.sites, ctx.cfg
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(arms)}
    names = []
    if ctx.baselines:
        names.append(_forest(folder, ctx, colors))
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


def _forest(folder, ctx: Context, colors) -> str:
    """The verdict metric's Δ per scanner and over scanners (fixed, random), one row per arm, 95 % intervals."""
    import matplotlib.pyplot as plt

    places = [*ctx.sites, "fixed", "random"]
    names = {"fixed": "these scanners (fixed)", "random": "new site (random)"}
    height = 0.9 + 0.28 * len(ctx.arms) * len(places)
    fig, axes = plt.subplots(1, len(ctx.baselines), figsize=(5.5 * len(ctx.baselines), height), squeeze=False)
    for ax, base in zip(axes[0], ctx.baselines, strict=True):
        shown = [a for a in ctx.arms if a != base]
        y, labels = 0, []
        for place in places:
            for arm in shown:
                r = find(ctx.diffs, arm, base, ctx.metric, place)
                if r is not None:
                    lo, hi = r["low"], r["high"]
                    err = None if not np.isfinite(lo) else [[r["mean"] - lo], [hi - r["mean"]]]
                    marker = {BETTER: "^", WORSE: "v", EQUIVALENT: "D"}.get(r["verdict"], "o")
                    ax.errorbar(r["mean"], -y, xerr=err, fmt=marker, color=colors[arm], capsize=2, ms=5,
                                mew=1.5 if place in names else 1)
                labels.append((-y, f"{names.get(place, place)} · {arm}"))
                y += 1
            y += 0.6
        ax.axvline(0.0, color="0.4", lw=0.8)
        for edge in (-ctx.margin, ctx.margin) if ALL[ctx.metric].unit == "dB" else ():
            ax.axvline(edge, color="0.7", lw=0.6, ls="--")
        ax.set_yticks([p for p, _ in labels], [t for _, t in labels], fontsize=6)
        ax.set_xlabel(f"Δ {ALL[ctx.metric].label} vs {base}\nmean and 95 % interval (dashed: ±margin)", fontsize=8)
        ax.set_title(f"vs {base} (▲ better, ▼ worse, ◆ equivalent, ● no detectable difference)", fontsize=8)
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
    if ax.get_legend_handles_labels()[0]:  # no arm uploaded anything (e.g. only no-finetune): no legend
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
