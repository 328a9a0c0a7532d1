"""The cross-scanner experiment writes a paper-shaped table (tiny steps, two methods)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from petite_fl.experiments.cross_scanner import run
from tests.test_jobs import _overrides


@pytest.mark.slow  # 67 s on 2 cores: an experiment's whole table (pretraining, every reference row, the gaps)
def test_cross_scanner_table_has_references_ablation_methods_and_intervals(tmp_path: Path):
    rows, out = run(_overrides(tmp_path, f"out={tmp_path / 'exp'}", "data.synth.scanners=[scanner4,scanner5,scanner2]"),
                    quiet=True, methods=["none", "petite"], gaps=True)
    gaps = rows[6:]
    rows = rows[:6]
    # the gap on each scanner is full fine-tuning on that scanner, not on the target
    assert [(g["scanner"], g["fine_tuned_on"]) for g in gaps] == [("scanner5", "scanner5"), ("scanner2", "scanner2")]
    assert (out / "gaps.csv").is_file() and "### The scanner gap" in (out / "results.md").read_text()
    # a simulated scanner has its truth: the gap is given against it too, beside the target's
    assert all("truth_delta" in g and g["truth_psnr_fg"] > 0 for g in gaps)
    assert "| gap vs truth [95 %] |" in (out / "results.md").read_text()
    labels = [r["method"] for r in rows]
    assert labels[0] == "short-scan input itself (no network)"
    assert labels[1].startswith("no fine-tuning, on scanner4")
    assert labels[2] == "… with the transformer's outputs zeroed, on scanner4"
    assert labels[3] == "no fine-tuning" and labels[4] == "… with the transformer's outputs zeroed"
    assert labels[5].startswith("PETITE Mix-PEFT (lora+ssf+BitFit)")
    petite = rows[5]
    assert 0 < petite["trainable_percent"] < 100
    # paired with no fine-tuning on the same subjects: one test subject gives no interval, and says so
    assert petite["interval"] == "none" and petite["verdict"] == "no detectable difference at this sample size"
    assert petite["delta_mean"] == pytest.approx(petite["psnr_fg"] - rows[3]["psnr_fg"])
    table = (out / "results.md").read_text()
    assert "| method | PSNR fg (dB) | Δ PSNR fg vs reference [95 % interval] |" in table and "PETITE Mix-PEFT" in table
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
