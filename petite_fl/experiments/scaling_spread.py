"""How a scaling spreads a scanner's subjects: the no-fine-tuning floor, before and after.

Every scanner's first `--subjects` synthetic subjects (the data set's own, by seed and
index) are imaged in memory with their noise-free image and scaled by each scaling of the
registry as the loader scales them. Per subject, in head-mask PSNR (the target above 10 %
of its maximum, data range 1 on the scaled target):
- `k`: the input's scale over the target's: 1 for a scaling with one factor;
- `short`: the short scan itself against the target, what a network that changes nothing
  scores (a fresh tiny UNETR is the identity): the no-fine-tuning floor;
- `oracle`: the noise-free image as a network that sees only the input's units can give it:
  in the input's units times the scanner's mean k, since no network can know a subject's
  own k (with one factor it is the noise-free image in the target's units exactly);
- `gm`: where grey matter lands (median of the noise-free voxels above half the uptake,
  in the input's scaled units).
Then mean ± sd over each scanner's subjects. Markdown and CSV in `--out`.

    python -m petite_fl.experiments.scaling_spread --subjects 12
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petite_fl.atomic import atomic_path, write_csv
from petite_fl.config import compose, expand_path
from petite_fl.console import console, run_cli
from petite_fl.data.scalings import available_scalings, get_scaling
from petite_fl.data.synthetic import SynthSpec, synthesize_subject
from petite_fl.metrics import foreground_mask, psnr
from petite_fl.scanners import get_scanner

#: the oracle's PSNR from three moments of (a = noise-free in input units, b = target), for any factor c
Moments = tuple[float, float, float]


def spec_of(overrides: Sequence[str], subjects: int) -> SynthSpec:
    """The configured generator with `subjects` subjects per scanner (indices 0 … subjects − 1)."""
    spec = SynthSpec.from_config(compose(overrides=list(overrides)).data.synth)
    return SynthSpec(**{**spec.__dict__, "subjects": subjects, "splits": (("train", subjects), ("val", 0), ("test", 0)),
                        "sizes": ()})


def subject_rows(scanner: str, index: int, spec: SynthSpec, scalings: Sequence[str],
                 threshold: float = 0.1) -> list[dict[str, Any]]:
    """One subject under every scaling: k, short, gm, and the oracle's moments."""
    profile = get_scanner(scanner)
    scan = synthesize_subject(profile, index, spec)
    rows = []
    for name in scalings:
        scaling = get_scaling(name)
        x_map = scaling.of_input(scan.input, profile.voxel_mm)
        y_map = scaling.of_target(scan.target, x_map)
        x, y = x_map.apply(scan.input), y_map.apply(scan.target)
        mask = foreground_mask(torch.as_tensor(y), threshold).numpy()
        a = x_map.apply(scan.noise_free)[mask].astype(np.float64)
        b = y[mask].astype(np.float64)
        rows.append({"scanner": scanner, "subject": index, "scaling": name, "k": x_map.scale / y_map.scale,
                     "short": float(psnr(torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(mask))),
                     "gm": float(np.median(x_map.apply(scan.noise_free)[scan.noise_free > 0.5])),
                     "moments": (float(a @ a) / a.size, float(a @ b) / a.size, float(b @ b) / a.size)})
    return rows


def oracle_psnr(moments: Moments, c: float) -> float:
    """Head-mask PSNR of c × a against b: 10 log10(1 / mean((c·a − b)²))."""
    aa, ab, bb = moments
    return -10.0 * math.log10(c * c * aa - 2.0 * c * ab + bb)


def measure(spec: SynthSpec, scanners: Sequence[str], scalings: Sequence[str],
            out: Path | None = None) -> list[dict[str, Any]]:
    """Per-subject rows, with each scanner's oracle at its mean k (and `out/subjects.csv`)."""
    rows = []
    for scanner in scanners:
        for i in range(spec.subjects):
            rows += subject_rows(scanner, i, spec, scalings)
            console.print(f"{scanner} subject {i + 1}/{spec.subjects}", markup=False, highlight=False)
    for scanner in scanners:
        for name in scalings:
            group = [r for r in rows if r["scanner"] == scanner and r["scaling"] == name]
            k_mean = float(np.mean([r["k"] for r in group]))
            for r in group:
                r["oracle"] = oracle_psnr(r["moments"], k_mean)  # a × k is the truth in the target's units
    rows = [{k: v for k, v in r.items() if k != "moments"} for r in rows]
    if out is not None:
        write_csv(out / "subjects.csv", rows)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample sd over subjects, per scanner and scaling."""
    out = []
    for scanner in dict.fromkeys(r["scanner"] for r in rows):
        for name in dict.fromkeys(r["scaling"] for r in rows):
            group = [r for r in rows if r["scanner"] == scanner and r["scaling"] == name]
            row: dict[str, Any] = {"scanner": scanner, "scaling": name, "subjects": len(group)}
            for key in ("k", "short", "oracle", "gm"):
                values = np.array([r[key] for r in group])
                row[key] = float(values.mean())
                row[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out.append(row)
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| scanner | scaling | subjects | k (input/target scale) | short scan PSNR fg (dB) | "
             "noise-free at the scanner's mean k, PSNR fg (dB) | grey matter lands at |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['scanner']} | {r['scaling']} | {r['subjects']} | {r['k']:.3f} ± {r['k_sd']:.3f} | "
                     f"{r['short']:.2f} ± {r['short_sd']:.2f} | {r['oracle']:.2f} ± {r['oracle_sd']:.2f} | "
                     f"{r['gm']:.2f} ± {r['gm_sd']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m petite_fl.experiments.scaling_spread", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=12, help="subjects per scanner (default 12)")
    parser.add_argument("--scanners", default="scanner1,scanner2,scanner3,scanner4,scanner5")
    parser.add_argument("--scalings", default=",".join(available_scalings()[:2]),
                        help="registered scalings to compare (default: the default and minmax)")
    parser.add_argument("--out", type=Path, default=None, help="folder (default $PETITE_FL_HOME/runs/scaling_spread)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the generator (data.synth.*)")
    args = parser.parse_args(argv)
    if args.subjects < 2:
        parser.error("--subjects must be at least 2 (a spread needs two)")

    def body() -> None:
        scalings = [get_scaling(s.strip(), "--scalings").name for s in args.scalings.split(",") if s.strip()]
        scanners = [get_scanner(s.strip()).name for s in args.scanners.split(",") if s.strip()]
        table = summary(measure(spec_of(args.overrides, args.subjects), scanners, scalings, out := _out(args)))
        write_csv(out / "summary.csv", table)
        text = markdown(table)
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(text)
        console.print(text, markup=False, highlight=False)

    return run_cli("scaling_spread", body)


def _out(args: argparse.Namespace) -> Path:
    return args.out or expand_path(compose(overrides=list(args.overrides)).paths.cache) / "runs" / "scaling_spread"


if __name__ == "__main__":
    sys.exit(main())
