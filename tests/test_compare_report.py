"""The comparison report, from arms run through the real apps in process (tiny, two sites, two seeds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from flower_grid import InProcessGrid
from flwr.app import Context, RecordDict
from scipy import stats
from test_federation_run import NODES, SITES, run_config
from tracking_readers import config_text, curve, events

from petite_fl.experiments.compare_folder import Plan, save
from petite_fl.experiments.compare_report import report
from petite_fl.experiments.pooled import run_pooled
from petite_fl.federation.flower.app import client_app
from petite_fl.federation.flower.server import serve
from petite_fl.federation.server.arms import arm_dir
from petite_fl.runconfig import compose_run
from petite_fl.training.jobs import backbone_for

ARMS = ["no-finetune", "local", "fedavg", "fedavg-ft"]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    folder = tmp / "compare"
    # two test subjects per scanner (a paired interval needs two), two training seeds
    rc = run_config(tmp / "cache", **{"data.synth.subjects": 4, "overrides": (
        "federation.val.patches=4 data.synth.splits={train:1,val:1,test:2} compare.seeds=2 "
        f"compare.run=[{','.join(ARMS)}] compare.dir={folder}")})
    grid = InProcessGrid(client_app, rc, NODES)
    results = serve(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    cfg = compose_run(rc)
    backbone = backbone_for(cfg)
    for seed in (0, 1):
        run_pooled(compose_run(rc, ["strategy=pooled", f"seed={seed}"]), backbone, arm_dir(folder, "pooled", seed),
                   quiet=True)
    save(folder, Plan([*ARMS, "pooled"], [0, 1], str(backbone), ["compare.seeds=2"]), cfg)  # as `petite compare`
    md = report(folder, cfg, [*ARMS, "pooled"], [0, 1], backbone, ["compare.seeds=2"], 12.0).read_text()
    return folder, results, grid, md


def test_every_arm_runs_once_per_seed_and_an_untrained_arm_once(compared):
    _, results, _, _ = compared
    assert sorted(results) == sorted([f"{a}/seed-{s}" for a in ARMS[1:] for s in (0, 1)] + ["no-finetune/seed-0"])


def test_sites_send_per_subject_metrics_by_position_never_subject_ids(compared):
    folder, _, grid, _ = compared
    final = [m for m in grid.replies if not m.has_error() and m.metadata.group_id.endswith("/final")]
    assert final
    for reply in final:
        metrics = dict(reply.content.metric_records["metrics"])
        assert len(metrics["test_subject_psnr_fg"]) == metrics["test_subjects"] == 2
        assert "sub-" not in json.dumps(metrics)
    subjects = rows(folder / "subjects.csv")
    assert {(r["arm"], r["seed"], r["site"], r["position"]) for r in subjects if r["arm"] == "fedavg"} == {
        ("fedavg", str(seed), site, str(p)) for seed in (0, 1) for site in SITES for p in (0, 1)}


def test_differences_are_paired_per_subject_with_a_t_interval(compared):
    folder, _, _, _ = compared
    per_subject = {(r["arm"], r["seed"], r["site"], r["position"]): float(r["psnr_fg"])
                   for r in rows(folder / "subjects.csv")}
    diffs = {(r["arm"], r["baseline"], r["metric"], r["site"]): r for r in rows(folder / "differences.csv")}
    # fedavg − local on scanner5, seeds × subjects: t with the subjects' and the seeds' variances
    d = np.array([[per_subject["fedavg", s, "scanner5", p] - per_subject["local", s, "scanner5", p]
                   for p in ("0", "1")] for s in ("0", "1")])
    v1, v2 = d.mean(axis=0).var(ddof=1) / 2, d.mean(axis=1).var(ddof=1) / 2
    half = stats.t.ppf(0.975, (v1 + v2) ** 2 / (v1 ** 2 + v2 ** 2)) * np.sqrt(v1 + v2)
    row = diffs["fedavg", "local", "psnr_fg", "scanner5"]
    assert float(row["mean"]) == pytest.approx(d.mean())
    assert (float(row["low"]), float(row["high"])) == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["method"] == "t" and row["seeds"] == "2"
    # no-finetune ran once (zero rounds): it stands for both seeds
    pooled = diffs["local", "no-finetune", "psnr_fg", "pooled"]
    assert pooled["subjects"] == "4" and pooled["verdict"] in ("better", "worse",
                                                               "no detectable difference at this sample size")
    assert ("pooled", "local", "psnr_fg", "pooled") in diffs


def test_report_leads_with_head_mask_differences_intervals_and_budgets(compared):
    folder, _, _, md = compared
    assert "## Δ head-mask PSNR (dB) vs local" in md and "## Δ head-mask PSNR (dB) vs no-finetune" in md
    assert "The verdict uses head-mask PSNR" in md and "does not mean they are equal" in md
    assert "very wide" in md  # two test subjects per scanner: the report says so
    budgets = {line.split("**")[1]: line for line in md.splitlines() if line.startswith("- **")}
    assert "2 rounds × 2 local steps per site (1 FedAvg, then 1 local)" in budgets["fedavg-ft"]
    assert "8 steps in one place" in budgets["pooled"] and "no training" in budgets["no-finetune"]
    for name in ("forest_psnr.png", "psnr_per_scanner.png", "convergence.png", "bytes_per_round.png",
                 *(f"slices_{s}.png" for s in SITES)):
        assert (folder / name).stat().st_size > 1000 and f"]({name})" in md
    assert "Δ mean vs local" not in md  # no difference without its interval


def test_an_arm_that_lost_a_site_is_compared_on_the_common_sites(compared, tmp_path):
    import shutil

    from petite_fl.experiments.compare_results import all_differences, differences, load_arms

    folder = compared[0]
    shutil.copytree(folder / "arms", tmp_path / "arms")
    for seed in (0, 1):
        path = arm_dir(tmp_path, "fedavg", seed) / "summary.json"
        summary = json.loads(path.read_text())
        summary["sites"].pop("scanner4")
        path.write_text(json.dumps(summary))
    data, _ = load_arms(tmp_path, ["local", "fedavg"], [0, 1])
    per_site, pooled, left_out, seeds_out = differences(data, "fedavg", "local", [0, 1], SITES, "psnr_fg")
    assert list(per_site) == ["scanner5"] and left_out == ["scanner4"] and pooled.subjects == 2 and not seeds_out
    row = next(r for r in all_differences(data, ["local", "fedavg"], [0, 1], SITES, ["local"])
               if r["site"] == "pooled" and r["metric"] == "psnr_fg")
    assert row["sites_left_out"] == "scanner4"


def test_a_failed_seed_is_left_out_and_named_never_replaced_by_another(compared, tmp_path):
    import shutil

    from petite_fl.experiments.compare_results import all_differences, differences, load_arms

    folder = compared[0]
    shutil.copytree(folder / "arms", tmp_path / "arms")
    (arm_dir(tmp_path, "fedavg", 1) / "summary.json").unlink()
    data, _ = load_arms(tmp_path, ["no-finetune", "local", "fedavg"], [0, 1])
    with pytest.raises(KeyError):
        data["fedavg"].seed(1)
    assert data["no-finetune"].seed(1) is data["no-finetune"].seed(0)  # zero rounds: one run for every seed
    per_site, pooled, _, seeds_out = differences(data, "fedavg", "local", [0, 1], SITES, "psnr_fg")
    assert seeds_out == [1] and pooled.seeds == 1
    d = data["fedavg"].subjects(0, "scanner5", "psnr_fg") - data["local"].subjects(0, "scanner5", "psnr_fg")
    assert per_site["scanner5"].mean == pytest.approx(d.mean())
    _, both, _, none_out = differences(data, "local", "no-finetune", [0, 1], SITES, "psnr_fg")
    assert both.seeds == 2 and not none_out
    row = next(r for r in all_differences(data, ["local", "fedavg"], [0, 1], SITES, ["local"])
               if r["site"] == "pooled" and r["metric"] == "psnr_fg")
    assert row["seeds_left_out"] == "1"


def test_the_comparison_tracks_each_arms_means_and_its_paired_intervals(compared):
    folder = compared[0]
    acc = events(folder / "tensorboard")
    fedavg = [float(r["psnr_fg"]) for r in rows(folder / "results.csv") if r["arm"] == "fedavg"]
    assert len(fedavg) == 4 and curve(acc, "final/fedavg/test_psnr_fg/mean") == pytest.approx({0: np.mean(fedavg)})
    diff = [r for r in rows(folder / "differences.csv") if r["arm"] == "fedavg" and r["metric"] == "psnr_fg"]
    assert diff
    for row in diff:
        for end in ("mean", "low", "high"):
            tag = f"diff/fedavg-{row['baseline']}/psnr_fg/{row['site']}/{end}"
            assert curve(acc, tag) == pytest.approx({0: float(row[end])})
    assert "job: compare" in config_text(acc) and "baselines:" in config_text(acc)


def test_report_rebuilds_the_same_report_from_the_folder_alone(compared, tmp_path):
    """`petite compare --report DIR`: from compare.json, config.yaml and the arms' results, nothing run."""
    import shutil

    from petite_fl.cli.main import main

    folder, _, _, md = compared
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("slices_*"))
    for name in ("report.md", "differences.csv", "results.csv", "forest_psnr.png"):
        (copy / name).unlink()
    # Without its backbone file (moved since) the slices cannot be drawn again: the rest is rebuilt, and
    # the test stays fast (the slices' predictions are most of a report's time).
    plan = json.loads((copy / "compare.json").read_text())
    (copy / "compare.json").write_text(json.dumps({**plan, "backbone": str(tmp_path / "moved.safetensors")}))
    assert main(["compare", "--report", str(copy)]) == 0
    assert (copy / "differences.csv").read_text() == (folder / "differences.csv").read_text()
    assert (copy / "results.csv").read_text() == (folder / "results.csv").read_text()
    assert (copy / "forest_psnr.png").stat().st_size > 1000 and not list(copy.glob("slices_*"))
    again = (copy / "report.md").read_text()
    assert "Wall time: not recorded" in again  # the fixture's plan has none: never made up

    def kept(text: str) -> list[str]:
        lines = [x for x in text.splitlines() if not x.startswith(("Wall time", "Backbone:", "![slices_", "Slices:"))]
        return "\n".join(lines).rstrip().splitlines()

    assert kept(again) == kept(md)


def test_a_deployed_report_names_the_sites_that_answered_and_shows_no_slices(compared, tmp_path):
    """At a deployed coordinator the sites are those that answered (federation.sites may list others), the
    data line comes from their replies, and no slice is drawn: the coordinator holds no scan."""
    import shutil

    from omegaconf import OmegaConf

    from petite_fl.experiments.compare_folder import load

    folder = compared[0]
    shutil.copytree(folder / "arms", tmp_path / "arms")
    plan, cfg = load(folder)
    OmegaConf.update(cfg, "federation.sites", ["scanner1", *SITES])  # scanner1 never answered
    md = report(tmp_path, cfg, ARMS, plan.seeds, Path(plan.backbone), ["--federation", "petite"], 60.0,
                deployed="petite").read_text()
    assert "Deployed federation `petite`" in md and "test subjects per site (from their replies): scanner4 2, " \
        "scanner5 2" in md
    assert "scanner1" not in md and not list(tmp_path.glob("slices_*.png")) and "Slices:" not in md
    assert "| fedavg | " in md and "Command: `petite compare --federation petite`" in md
