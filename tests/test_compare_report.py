"""The comparison report, from arms run through the real apps in process (tiny, two sites, two seeds)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_grid import InProcessGrid
from flwr.app import Context, RecordDict
from scipy import stats
from test_federation_run import NODES, SITES, run_config
from tracking_readers import config_text, curve, events

from petite_fl.experiments.compare_folder import Plan, save
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
    two), two training seeds; only the two sites' scanners, windows that touch the head (as the study)."""
    tmp = tmp_path_factory.mktemp("compare")
    folder = tmp / "compare"
    return run_config(tmp / "cache", **{"data.synth.subjects": 4, "data.synth.scanners": "[scanner4,scanner5]",
                                         "train.eval.region": "head", "overrides": (
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
    save(folder, Plan([*ARMS, *CENTRALISED], [0, 1], str(backbone), ["compare.seeds=2"]), cfg)  # as `petite compare`
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
    # fedavg − local on scanner5, seeds × subjects crossed: the two-way ANOVA variance of the grand mean
    d = np.array([[per_subject["fedavg", s, "scanner5", p] - per_subject["local", s, "scanner5", p]
                   for p in ("0", "1")] for s in ("0", "1")])
    ms_subj, ms_seed = 2 * d.mean(axis=0).var(ddof=1), 2 * d.mean(axis=1).var(ddof=1)
    ms_res = ((d - d.mean(0) - d.mean(1, keepdims=True) + d.mean()) ** 2).sum()
    row = diffs["fedavg", "local", "psnr_fg", "scanner5"]
    assert float(row["mean"]) == pytest.approx(d.mean())
    assert float(row["se"]) ** 2 == pytest.approx(max(ms_subj + ms_seed - ms_res, ms_subj, ms_seed) / 4)
    half = stats.t.ppf(0.975, float(row["df"])) * float(row["se"])
    assert (float(row["low"]), float(row["high"])) == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["method"] == "t" and row["seeds"] == "2" and row["interval"] == "per scanner"
    # over scanners: these scanners (fixed) and scanners like these (random), each scanner counted once
    fixed, rnd = diffs["local", "no-finetune", "psnr_fg", "fixed"], diffs["local", "no-finetune", "psnr_fg", "random"]
    assert fixed["subjects"] == "4" and fixed["interval"] == "fixed over scanners"  # no-finetune stands for both seeds
    assert rnd["interval"] == "random over scanners" and rnd["scanners"] == "2" and fixed["mean"] == rnd["mean"]
    assert fixed["verdict"] in ("better", "worse", "equivalent", "no detectable difference at this sample size")
    assert ("pooled", "local", "psnr_fg", "fixed") in diffs


def test_report_leads_with_head_mask_differences_intervals_and_budgets(compared):
    folder, _, _, md = compared
    assert "## Δ head-mask PSNR vs target (dB) vs local" in md
    assert "## Δ head-mask PSNR vs target (dB) vs no-finetune" in md
    assert "**Verdict metric: head-mask PSNR" in md and "does not mean they are equal" in md
    assert "very wide" in md  # two test subjects per scanner: the report says so
    budgets = {line.split("**")[1]: line for line in md.splitlines() if line.startswith("- **")}
    assert "2 rounds × 2 local steps per site (1 FedAvg, then 1 local)" in budgets["fedavg-ft"]
    assert "8 steps in one place" in budgets["pooled (centralised, one model)"]
    assert "no training" in budgets["no-finetune"]
    assert not re.search(r"\bbound\b", md)  # the pooled arm is centralised training, not a bound
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
    cmp = differences(data, "fedavg", "local", [0, 1], SITES, "psnr_fg")
    assert list(cmp.per_site) == ["scanner5"] and cmp.left_out == ["scanner4"] and not cmp.seeds_out
    assert cmp.fixed.subjects == 2 and cmp.random is None  # one scanner: no random-effects interval
    row = next(r for r in all_differences(data, ["local", "fedavg"], [0, 1], SITES, ["local"], 0.1)
               if r["site"] == "fixed" and r["metric"] == "psnr_fg")
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
    cmp = differences(data, "fedavg", "local", [0, 1], SITES, "psnr_fg")
    assert cmp.seeds_out == [1] and cmp.fixed.seeds == 1
    d = data["fedavg"].subjects(0, "scanner5", "psnr_fg") - data["local"].subjects(0, "scanner5", "psnr_fg")
    assert cmp.per_site["scanner5"].mean == pytest.approx(d.mean())
    both = differences(data, "local", "no-finetune", [0, 1], SITES, "psnr_fg")
    assert both.fixed.seeds == 2 and not both.seeds_out
    row = next(r for r in all_differences(data, ["local", "fedavg"], [0, 1], SITES, ["local"], 0.1)
               if r["site"] == "fixed" and r["metric"] == "psnr_fg")
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
    line = budgets["pooled-ft (centralised, then fine-tuned at each site)"]
    assert "4 steps in one place" in line and "then 2 local steps per site" in line
    assert "centralised, then local fine-tuning" in line
    assert "centralised, one model" in budgets["pooled (centralised, one model)"]
    diffs = {(r["arm"], r["baseline"], r["site"]) for r in rows(folder / "differences.csv") if r["metric"] == "psnr_fg"}
    assert {("pooled-ft", "local", s) for s in [*SITES, "fixed", "random"]} <= diffs
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


# Hand-written summaries (no training): the report's statistics and wording on data whose answer is known.

HAND_SITES = ["scanner4", "scanner5"]
#: arm → Δ vs local per site (dB) and per-subject noise: better, worse (worst at scanner5), equivalent, unclear
HAND_ARMS = {"local": ({"scanner4": 0.0, "scanner5": 0.0}, 0.0),
             "fedavg": ({"scanner4": 0.5, "scanner5": 0.5}, 0.02),
             "fedavg-ft": ({"scanner4": -0.3, "scanner5": -0.7}, 0.02),
             "split-lora": ({"scanner4": 0.0, "scanner5": 0.0}, 0.005),
             "pooled": ({"scanner4": 0.0, "scanner5": 0.0}, 0)}


def hand_rows(arm: str, site: str, seed: int, truth: bool) -> list[dict]:
    shift, noise = HAND_ARMS[arm]
    rng = np.random.default_rng([seed, HAND_SITES.index(site), list(HAND_ARMS).index(arm)])
    out = []
    for j in range(6):
        delta = shift[site] + noise * rng.standard_normal()
        if arm == "pooled":  # ±1 dB by subject, +0.2 / −0.2 dB by scanner: intervals far wider than the margin
            delta = (1.0 if j % 2 else -1.0) + (0.2 if site == "scanner4" else -0.2)
        level = 24.0 + 0.4 * j + 0.05 * seed
        row = {"position": j, "psnr_fg": level + delta, "ssim_fg": 0.8 + delta / 100, "nrmse_fg": 0.2 - delta / 100,
               "psnr": level + 3 + delta, "ssim": 0.9, "nrmse": 0.1}
        if truth:
            bias = 2.0 - delta  # the arms that gain PSNR also shrink the regional ratio's bias here
            row.update({"truth_psnr_fg": level + 2 + delta, "truth_ssim_fg": 0.85 + delta / 100,
                        "truth_nrmse_fg": 0.15, "truth_psnr": level + 5 + delta, "ratio_bias": bias,
                        "ratio_abs_err": abs(bias)})
        out.append(row)
    return out


def write_hand_arms(folder: Path, seeds: list[int], truth_at: list[str]) -> None:
    for arm in HAND_ARMS:
        for seed in seeds:
            out = arm_dir(folder, arm, seed)
            out.mkdir(parents=True)
            sites = {site: {"test": {"subjects": 6}, "test_subjects": hand_rows(arm, site, seed, site in truth_at),
                            "upload_bytes_per_round": 0, "download_bytes_per_round": 0, "backbone_bytes": 0}
                     for site in HAND_SITES}
            budget = {"rounds": 2, "local_steps": 4, "federated_rounds": 2, "batch_size": 1, "patches_per_volume": 2,
                      "lr": 1e-3, "seed": seed,
                      "schedule": {"warmup_fraction": 0.1, "warmup_steps": 1, "total_steps": 8,
                                   "decay": "cosine to 0 over the remaining steps"}}
            (out / "summary.json").write_text(json.dumps({
                "run": arm, "run_dir": str(out), "strategy": arm, "describe": f"{arm}, hand-written", "peft": "petite",
                "rounds": 2, "local_steps": 4, "budget": budget, "protection": "none", "sites": sites}))


@pytest.fixture(scope="module")
def hand_cfg(federation_cache):
    """The in-process federation tests' config and data (the report's slices read a scan of each site)."""
    return lambda *extra: compose_run(run_config(federation_cache), list(extra))


PRIMARY = "compare.primary={arm:fedavg,baseline:local,sites:[scanner5],metric:truth_psnr_fg}"


def test_report_gives_the_primary_endpoint_first_four_verdicts_two_intervals_and_the_worst_site(
        hand_cfg, tmp_path, capsys):
    write_hand_arms(tmp_path, [0, 1, 2], truth_at=HAND_SITES)
    md = report(tmp_path, hand_cfg(PRIMARY), list(HAND_ARMS), [0, 1, 2], Path("backbone.safetensors"), [PRIMARY],
                3.0).read_text()
    lines = md.splitlines()
    assert lines[2].startswith("**Verdict metric: head-mask PSNR vs truth (dB)** (`truth_psnr_fg`)")
    order = [md.index(h) for h in ("## Primary endpoint", "## How to read it",
                                   "## Δ head-mask PSNR vs truth (dB) vs local")]
    assert order == sorted(order)
    primary = md[order[0]:order[1]]
    assert "fedavg vs local on scanner5, head-mask PSNR vs truth (dB), fixed effect" in primary
    assert "→ **better**" in primary and "Everything after this section is secondary." in primary
    table = md[order[2]:md.index("##", order[2] + 3)]
    by_arm = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| better |" in by_arm["fedavg"] and "| worse |" in by_arm["fedavg-ft"]
    assert "| equivalent within ±0.1 dB |" in by_arm["split-lora"]
    assert "| no detectable difference at this sample size |" in by_arm["pooled (centralised, one model)"]
    assert "scanner5: ▼" in by_arm["fedavg-ft"]  # its worst site, with that site's own interval
    assert "these scanners (fixed effect)" in table and "a new site like these (random effects)" in table
    assert "With 2 scanners that spread rests on 1 degree(s) of freedom (t = 12.71): the interval is wide" in md
    assert "## Δ regional uptake-ratio error |bias| vs truth (%) vs local (secondary)" in md
    assert "## Δ regional uptake-ratio bias vs truth (%) vs local (secondary)" in md
    scaling = hand_cfg(PRIMARY).data.loader.scaling
    assert "schedule: linear warm-up over 10 % of the local budget, then cosine to 0" in md
    assert f"Scaling: `{scaling}`" in md
    assert "training randomness is not in these intervals" not in md  # three seeds
    diffs = rows(tmp_path / "differences.csv")
    assert diffs[0]["endpoint"] == "primary" and diffs[0]["sites"] == "scanner5" and diffs[0]["verdict"] == "better"
    assert {r["interval"] for r in diffs} == {"per scanner", "fixed over scanners", "random over scanners"}
    worst = next(r for r in diffs if (r["arm"], r["metric"], r["site"]) == ("fedavg-ft", "truth_psnr_fg", "fixed"))
    assert worst["worst_site"] == "scanner5" and float(worst["worst_mean"]) == pytest.approx(-0.7, abs=0.02)
    err = next(r for r in diffs if (r["arm"], r["metric"], r["site"]) == ("fedavg", "ratio_abs_err", "fixed"))
    assert err["verdict"] == "better" and err["margin"] == ""  # lower is better; no margin for a ratio
    out = capsys.readouterr().out
    assert out.index("primary endpoint: fedavg vs local") < out.index("Δ head-mask PSNR vs truth (dB) vs local")


def test_without_ground_truth_everywhere_the_verdict_is_against_the_target_and_says_so(hand_cfg, tmp_path):
    write_hand_arms(tmp_path, [0], truth_at=["scanner5"])
    md = report(tmp_path, hand_cfg("compare.primary={arm:fedavg,baseline:local,sites:[scanner4],"
                                   "metric:truth_psnr_fg}"),
                list(HAND_ARMS), [0], Path("backbone.safetensors"), [], 3.0).read_text()
    assert md.splitlines()[2].startswith("**Verdict metric: head-mask PSNR vs target (dB)** (`psnr_fg`)")
    assert "**Not evaluable**: truth_psnr_fg is not paired at scanner4" in md
    assert "**One training seed: training randomness is not in these intervals**" in md
    assert "## Δ head-mask PSNR vs target (dB) vs local (secondary)" in md
    assert not any(r["endpoint"] == "primary" for r in rows(tmp_path / "differences.csv"))


@pytest.mark.parametrize("argv, message", [
    (["compare", "compare.margin=0"], "compare.margin must be a number > 0"),
    (["compare", "compare.margin=-0.1"], "compare.margin must be a number > 0"),
    (["compare", "compare.margin=wide"], "compare.margin must be a number > 0"),
    (["compare", "compare=study", "--arms", "local,fedavg"], "compare.primary.arm fedavg-ft is not an arm of this run"),
    (["compare", "compare=study", "compare.primary.baseline=no-finetune", "--arms", "local,fedavg-ft"],
     "compare.primary.baseline no-finetune is not an arm of this run"),
    (["compare", "compare=study", "compare.primary.sites=[scanner3,scanner9]"],
     "compare.primary.sites: scanner9 not in this run"),
    (["compare", "compare=study", "compare.primary.metric=sharpness"], "compare.primary.metric sharpness is unknown"),
])
def test_a_bad_margin_or_primary_endpoint_is_refused_in_one_line_before_anything_runs(argv, message, capsys, tmp_path,
                                                                                       monkeypatch):
    from petite_fl.cli.main import main

    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.nii.gz")) and not (tmp_path / "runs").exists()


def test_every_per_subject_metric_has_a_reading():
    from petite_fl.experiments.compare_endpoints import ALL, SUBJECT_METRICS

    assert set(SUBJECT_METRICS) <= set(ALL)
