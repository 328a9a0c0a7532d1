"""The cross-scanner experiment writes a paper-shaped table (tiny steps, two methods)."""

from __future__ import annotations

import csv
from pathlib import Path

from simulation.cross_scanner import run
from tests.test_jobs import _overrides


def test_cross_scanner_table_has_references_and_methods(tmp_path: Path):
    rows, out = run(_overrides(tmp_path, f"out={tmp_path / 'exp'}"), quiet=True, methods=["none", "petite"])
    labels = [r["method"] for r in rows]
    assert labels[0] == "short-scan input itself (no network)"
    assert labels[1].startswith("no fine-tuning, on scanner4")
    assert labels[2] == "no fine-tuning" and labels[3].startswith("PETITE Mix-PEFT (lora+ssf+BitFit)")
    assert 0 < rows[3]["trainable_percent"] < 100
    table = (out / "results.md").read_text()
    assert "| method | PSNR (dB) | SSIM | NRMSE |" in table and "PETITE Mix-PEFT" in table
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
