"""Checks that a finished federated run learned, read from what the run wrote (log.json, adapter files).

Round 0's validation is the model before any fine-tuning (the coordinator always validates it), so
"learned" is a rise of the sites' validation PSNR (head-centred windows, `federation.val.mode=patches`)
from round 0 to the last round. The margins are set from measurements of the tiny test configs
(tests/test_federation_run.py → LEARNING): well below what honest training gives there, far above what
a run whose learning rate changes nothing measurable gives (1e-12: rises of ~1e-9 dB).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

#: the sites' mean rise of validation PSNR over round 0 that every federated run must reach (dB)
MEAN_RISE_DB = 0.005
#: the least rise at every single site (dB): no site may be left behind or made worse
SITE_RISE_DB = 0.001
#: how far (L2 over every personal tensor) two sites' personal tensors must be apart after training
PERSONAL_GAP = 1e-3


def val_psnr(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """{site: {round: validation PSNR}} as the coordinator logged it (round 0 = no fine-tuning)."""
    log = json.loads((Path(run_dir) / "log.json").read_text())
    out: dict[str, dict[int, float]] = {}
    for row in log["eval"]:
        if row["split"] == "val":
            out.setdefault(row["site"], {})[int(row["round"])] = float(row["psnr"])
    return out


def rises(summary: dict[str, Any]) -> dict[str, float]:
    """Each site's validation PSNR after the last round minus round 0's."""
    val = val_psnr(summary["run_dir"])
    last = int(summary["rounds"])
    assert all({0, last} <= set(v) for v in val.values()), f"round 0 or {last} not validated: {val}"
    return {site: v[last] - v[0] for site, v in val.items()}


def assert_learned(summary: dict[str, Any], sites: list[str], every_site: bool = True) -> None:
    """The run's sites' validation PSNR rose over round 0: by MEAN_RISE_DB on average, SITE_RISE_DB at each
    (`every_site=False`: the mean only, for a run measured to lower one site's PSNR while it learns)."""
    rise = rises(summary)
    assert sorted(rise) == sorted(sites)
    mean = sum(rise.values()) / len(rise)
    shown = {s: round(r, 4) for s, r in rise.items()}
    assert mean >= MEAN_RISE_DB, f"{summary['strategy']}: mean val PSNR rise {mean:.4f} dB < {MEAN_RISE_DB}: {shown}"
    least = min(rise.values()) if every_site else SITE_RISE_DB
    assert least >= SITE_RISE_DB, f"{summary['strategy']}: a site's val PSNR rise < {SITE_RISE_DB} dB: {shown}"


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: set[str]) -> float:
    return float(sum(float((a[n].float() - b[n].float()).pow(2).sum()) for n in names) ** 0.5)
