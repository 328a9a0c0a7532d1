"""The comparison report, from arms run through the real apps in process (tiny, two sites)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from flower_grid import InProcessGrid
from flwr.app import Context, RecordDict
from test_federation_run import NODES, SITES, run_config

from client.app import app as client_app
from petite_fl.federation.apps import config_for, serve
from petite_fl.training.jobs import backbone_for
from simulation.compare import report


def test_arms_in_one_run_then_report_md_csv_and_figures(tmp_path):
    arms = ["no-finetune", "local", "fedavg"]
    folder = tmp_path / "compare"
    rc = run_config(tmp_path / "cache", **{"federation.rounds": 1})
    rc["overrides"] += f" compare.run=[{','.join(arms)}] compare.dir={folder}"
    grid = InProcessGrid(client_app, rc, NODES)
    results = serve(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    assert sorted(results) == sorted(arms)
    cfg = config_for(rc)
    # every arm's messages carried its overrides, so the sites trained what the server averaged
    for arm in arms:
        sent = [m for m in grid.sent if m.metadata.group_id.startswith(f"{arm}/")]
        carried = [set(json.loads(m.content.config_records["config"]["overrides"])) for m in sent]
        assert sent and all(set(cfg.compare.arms[arm]) <= c for c in carried)
    md = report(folder, cfg, arms, backbone_for(cfg), ["federation.rounds=1"], 12.0).read_text()
    for arm in arms:
        assert f"| {arm} |" in md
    assert "Δ mean vs local" in md and "unetr-paper" in md.split("## Communication")[1]
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["arm"], r["site"]) for r in rows} == {(a, s) for a in arms for s in SITES}
    no_ft = {r["site"]: float(r["psnr"]) for r in rows if r["arm"] == "no-finetune"}
    assert all(10 < v < 60 for v in no_ft.values())
    for name in ("psnr_per_scanner.png", "ssim_per_scanner.png", "convergence.png", "bytes_per_round.png",
                 *(f"slices_{s}.png" for s in SITES)):
        assert (folder / name).stat().st_size > 1000 and f"]({name})" in md
    assert Path(folder / "payload.json").is_file()
