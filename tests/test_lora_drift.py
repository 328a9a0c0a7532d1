"""How far shared LoRA A moves: the measure on known matrices, and in a tiny split-lora run's outputs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_federation_run import NODES, SITES, run_config
from tracking_readers import curve, events

from petite_fl.artifacts import load_backbone
from petite_fl.federation.server.coordinator import Coordinator
from petite_fl.federation.server.drift import GLOBAL, drift_rows, lora_a_names, relative_distance, tracked
from petite_fl.federation.transport import LocalTransport
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.runconfig import compose_run
from petite_fl.training.jobs import backbone_for

A1, A2 = "enc.q.lora_A.default.weight", "enc.k.lora_A.default.weight"
B1, SSF = "enc.q.lora_B.default.weight", "dec.ssf_scale"


def test_the_distance_of_a_from_its_start_on_known_matrices():
    init = {A1: torch.tensor([[3.0, 0.0]]), A2: torch.tensor([[0.0, 4.0]]), B1: torch.zeros(2, 1)}  # ‖A₀‖ = 5
    start = {A1: torch.tensor([[3.0, 0.0]]), A2: torch.tensor([[0.0, 8.0]]), B1: torch.ones(2, 1)}  # ‖A_g‖ = √73
    site = {A1: torch.tensor([[3.0, 3.0]]), A2: torch.tensor([[0.0, 8.0]]), B1: torch.full((2, 1), 9.0)}
    other = {A1: torch.tensor([[3.0, 0.0]]), A2: torch.tensor([[0.0, 4.0]])}
    new_global = {A1: torch.tensor([[3.0, 1.5]]), A2: torch.tensor([[0.0, 6.0]])}
    assert lora_a_names([SSF, B1, A2, A1]) == [A2, A1]
    assert relative_distance(site, init, [A1, A2]) == pytest.approx(5.0 / 5.0)  # Δ = (0, 3, 0, 4)
    rows = {r["site"]: r for r in drift_rows(3, init, start, {"s1": site, "s2": other}, new_global)}
    assert list(rows) == ["s1", "s2", GLOBAL] and all(r["round"] == 3 and r["a_tensors"] == 2 for r in rows.values())
    assert rows["s1"]["a_from_init"] == pytest.approx(1.0)
    assert rows["s1"]["a_from_round"] == pytest.approx(3.0 / math.sqrt(73.0))  # B moved too: not counted
    assert rows["s2"]["a_from_init"] == 0.0 and rows["s2"]["a_from_round"] == pytest.approx(4.0 / math.sqrt(73.0))
    assert rows[GLOBAL]["a_from_init"] == pytest.approx(math.hypot(1.5, 2.0) / 5.0)
    assert rows[GLOBAL]["a_from_round"] == pytest.approx(math.hypot(1.5, 2.0) / math.sqrt(73.0))
    # what averaging changes of what each site sent, on the scale of the round's starting A
    assert rows["s1"]["a_to_average"] == pytest.approx(2.5 / math.sqrt(73.0)) == rows["s2"]["a_to_average"]
    assert rows[GLOBAL]["a_to_average"] is None
    assert tracked([rows["s1"], rows[GLOBAL]]) == {
        "lora_a/from_init/s1": 1.0, "lora_a/from_round/s1": rows["s1"]["a_from_round"],
        "lora_a/to_average/s1": rows["s1"]["a_to_average"], "lora_a/from_init/global": rows[GLOBAL]["a_from_init"],
        "lora_a/from_round/global": rows[GLOBAL]["a_from_round"]}


def test_no_rows_where_no_a_is_shared_or_a_site_sent_none():
    init = {A1: torch.ones(1, 2), SSF: torch.ones(3)}
    assert drift_rows(1, init, {SSF: torch.ones(3)}, {"s1": {SSF: torch.zeros(3)}}, {SSF: torch.zeros(3)}) == []
    rows = drift_rows(1, init, {A1: torch.ones(1, 2)}, {"s1": {}}, {A1: torch.ones(1, 2)})  # a local round
    assert [r["site"] for r in rows] == [GLOBAL] and rows[0]["a_from_init"] == 0.0


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_split_lora_run_records_how_far_each_sites_a_moved(federation_cache):
    rc = run_config(federation_cache, **{"strategy": "split-lora", "federation.run_name": "lora-a-drift",
                                         "overrides": f"federation.val.patches=4 federation.site_root="
                                                      f"{federation_cache}/drift-sites"})
    cfg = compose_run(rc)
    summary = Coordinator(cfg, LocalTransport(NODES), quiet=True).run()
    run_dir = Path(summary["run_dir"])
    rows = read(run_dir / "lora_a_drift.csv")
    assert {(int(r["round"]), r["site"]) for r in rows} == {(k, s) for k in (1, 2) for s in [*SITES, GLOBAL]}
    for r in rows:
        moved, this_round = float(r["a_from_init"]), float(r["a_from_round"])
        assert 0.0 < moved < 10.0 and 0.0 < this_round < 10.0
        assert (r["a_to_average"] == "") == (r["site"] == GLOBAL)
        if r["round"] == "1":  # round 1 starts from A₀
            assert moved == pytest.approx(this_round)
    # the last global row, against the saved global adapter and A₀ rebuilt as the sites build it
    model, _ = load_backbone(backbone_for(cfg))
    torch.manual_seed(int(cfg.seed))
    init = adapter_state_dict(model, apply_peft(model, spec_from_config(cfg.peft, model)))
    final = load_file(run_dir / "global-adapter.safetensors")
    names = lora_a_names(final)
    assert names and set(final) == set(names)  # split-lora sends A only
    last = next(r for r in rows if r["round"] == "2" and r["site"] == GLOBAL)
    assert float(last["a_from_init"]) == pytest.approx(relative_distance(final, init, names), rel=1e-6)
    acc = events(run_dir / "tensorboard")
    for site in [*SITES, GLOBAL]:
        assert curve(acc, f"lora_a/from_init/{site}") == pytest.approx(
            {int(r["round"]): float(r["a_from_init"]) for r in rows if r["site"] == site})
