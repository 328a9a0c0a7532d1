"""The comparison report, from arms run through the real apps in process (tiny, two sites, two seeds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_grid import InProcessGrid
from flwr.app import Context, RecordDict
from scipy import stats
from test_federation_run import NODES, SITES, run_config
from tracking_readers import config_text, curve, events

from petite_fl.experiments.compare_report import report
from petite_fl.experiments.pooled import Centralised, run_pooled
from petite_fl.experiments.pooled_ft import finetune_site, run_pooled_ft
from petite_fl.federation.flower.app import client_app
from petite_fl.federation.flower.server import serve
from petite_fl.federation.server.arms import arm_dir
from petite_fl.runconfig import compose_run
from petite_fl.training.jobs import backbone_for

ARMS = ["no-finetune", "local", "fedavg", "fedavg-ft"]
CENTRALISED = ["pooled", "pooled-ft"]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def compare_rc(tmp_path_factory) -> tuple[dict, Path]:
    """The comparison's run-config and folder: two test subjects per scanner (a paired interval needs
    two), two training seeds."""
    tmp = tmp_path_factory.mktemp("compare")
    folder = tmp / "compare"
    return run_config(tmp / "cache", **{"data.synth.subjects": 4, "overrides": (
        "federation.val.patches=4 data.synth.splits={train:1,val:1,test:2} compare.seeds=2 "
        f"compare.run=[{','.join(ARMS)}] compare.dir={folder}")}), folder


@pytest.fixture(scope="module")
def compared(compare_rc):
    rc, folder = compare_rc
    grid = InProcessGrid(client_app, rc, NODES)
    results = serve(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    cfg = compose_run(rc)
    backbone = backbone_for(cfg)
    for seed in (0, 1):
        run_pooled(compose_run(rc, ["strategy=pooled", f"seed={seed}"]), backbone, arm_dir(folder, "pooled", seed),
                   quiet=True)
        run_pooled_ft(compose_run(rc, ["strategy=pooled-ft", f"seed={seed}"]), backbone,
                      arm_dir(folder, "pooled-ft", seed), quiet=True)
    md = report(folder, cfg, [*ARMS, *CENTRALISED], [0, 1], backbone, ["compare.seeds=2"], 12.0).read_text()
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


def test_pooled_ft_splits_the_budget_as_fedavg_ft_and_the_report_reads_it(compared):
    folder, _, _, md = compared
    runs = {a: json.loads((arm_dir(folder, a, 0) / "summary.json").read_text())
            for a in ("pooled", "pooled-ft", "fedavg-ft")}
    b, ft = runs["pooled-ft"]["budget"], runs["fedavg-ft"]["budget"]
    # 2 rounds × 2 steps, 2 sites: fedavg-ft has 1 FedAvg round, then 1 local round of 2 steps per site
    assert (b["centralised_rounds"], b["finetune_rounds"]) == (ft["federated_rounds"], 1)
    assert b["finetune_steps_per_site"] == (ft["rounds"] - ft["federated_rounds"]) * ft["local_steps"] == 2
    assert b["centralised_steps"] == ft["federated_rounds"] * ft["local_steps"] * len(SITES) == 4
    assert b["centralised_steps"] + b["finetune_steps_per_site"] * len(SITES) == runs["pooled"]["total_steps"] == 8
    assert runs["pooled-ft"]["total_steps"] == 8
    budgets = {line.split("**")[1]: line for line in md.splitlines() if line.startswith("- **")}
    assert "4 steps in one place" in budgets["pooled-ft"] and "then 2 local steps per site" in budgets["pooled-ft"]
    assert "centralised, then local fine-tuning" in budgets["pooled-ft"]
    assert "centralised, one model" in budgets["pooled"] and "bound" not in budgets["pooled"]
    diffs = {(r["arm"], r["baseline"], r["site"]) for r in rows(folder / "differences.csv") if r["metric"] == "psnr_fg"}
    assert {("pooled-ft", "local", s) for s in [*SITES, "pooled"]} <= diffs
    assert {r["arm"] for r in rows(folder / "subjects.csv")} >= {"pooled-ft"}


def test_pooled_ft_fine_tunes_a_copy_of_one_centralised_adapter_at_each_site(compared, compare_rc):
    from safetensors.torch import load_file

    folder = compared[0]
    run = arm_dir(folder, "pooled-ft", 1)
    summary = json.loads((run / "summary.json").read_text())
    central = load_file(run / "centralised-adapter.safetensors")
    tuned = {s: load_file(summary["sites"][s]["adapter"]) for s in SITES}
    assert {Path(summary["sites"][s]["adapter"]).name for s in SITES} == {f"adapter-{s}.safetensors" for s in SITES}
    for site in SITES:  # each site's fine-tuning moved its own copy
        assert tuned[site].keys() == central.keys()
        assert any(not torch.equal(tuned[site][k], central[k]) for k in central)
    assert any(not torch.equal(tuned["scanner4"][k], tuned["scanner5"][k]) for k in central)
    # scanner5's adapter is a function of the centralised one and its own scans only: fine-tuning it
    # alone, with no scanner4 before it, gives the same tensors
    cfg = compose_run(compare_rc[0], ["strategy=pooled-ft", "seed=1"])
    arm = Centralised.start(cfg, backbone_for(compose_run(compare_rc[0])), "pooled-ft")  # every arm's backbone
    alone, _ = finetune_site(arm, "scanner5", central, arm.objective.state_dict())
    assert all(torch.allclose(alone[k], tuned["scanner5"][k], atol=1e-6) for k in central)


def test_pooled_ft_is_refused_over_a_federation_in_one_line_before_anything_runs(compare_rc, tmp_path):
    from petite_fl.errors import ConfigError

    rc = {**compare_rc[0], "overrides": f"compare.run=[local,pooled-ft] compare.dir={tmp_path}"}
    grid = InProcessGrid(client_app, rc, NODES)
    context = Context(run_id=2, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    with pytest.raises(ConfigError) as err:
        serve(grid, context)
    assert str(err.value) == ("arm(s) pooled-ft (compare.run) train on every site's scans in one place: they run "
                              "only in `petite compare`'s simulation, not over a federation, whose data stays at "
                              "its sites")
    assert not grid.replies and not (tmp_path / "arms").exists()


def test_the_report_shows_how_far_shared_lora_a_moved_in_the_arms_that_share_it(compared):
    folder, _, _, md = compared
    table = rows(folder / "lora_a_drift.csv")
    assert {r["arm"] for r in table} == {"fedavg", "fedavg-ft"}  # local and the centralised arms share nothing
    fedavg = [r for r in table if r["arm"] == "fedavg"]
    assert {(r["seed"], r["round"], r["site"]) for r in fedavg} == {
        (str(seed), str(rnd), site) for seed in (0, 1) for rnd in (1, 2) for site in [*SITES, "global"]}
    own = rows(arm_dir(folder, "fedavg", 1) / "lora_a_drift.csv")
    assert [r["a_from_init"] for r in own] == [r["a_from_init"] for r in fedavg if r["seed"] == "1"]
    assert {r["round"] for r in table if r["arm"] == "fedavg-ft"} == {"1"}  # its second round is local
    assert "## How far shared LoRA A moved" in md
    lines = [line for line in md.splitlines() if line.startswith("| fedavg | ")]
    assert [line.split(" | ")[1] for line in lines[-2:]] == ["1", "2"]
    first = [float(r["a_from_init"]) for r in fedavg if r["round"] == "1" and r["site"] != "global"]
    assert f"{min(first):.3g}–{max(first):.3g}" in lines[-2]
