"""Influence that cannot be bought (issue 26, G2): a site's own counts are claims, bounded by what the
coordinator's operator attests (server/weights.py), in training, in the reported means, and under SecAgg+.

Three tiny sites (SecAgg+ needs three) in process with the real ServerApp/ClientApp logic; the liar
(scanner5, node 1002) runs the real site code and alters only the figures it reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flower_grid import InProcessGrid
from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.compat.common import recorddict_compat as compat
from safetensors.torch import load_file
from test_privacy import NODES, run_config

from petite_fl.config import compose
from petite_fl.data.sites import split_counts
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.aggregate import weighted_average
from petite_fl.federation.flower.client import handle
from petite_fl.federation.flower.records import ARRAYS, FITRES, from_record
from petite_fl.federation.flower.secagg import TRAIN_MODS
from petite_fl.federation.flower.transport import FlowerTransport
from petite_fl.federation.server.coordinator import Coordinator
from petite_fl.federation.server.runlog import RunLog
from petite_fl.runconfig import compose_run, site_sections

BIG = 10**9           # the claimed training scans and validation subjects
BIG_TEST = 10**5      # the claimed test subjects (a final reply lists one value per test subject)
LIAR, LIAR_SITE = 1002, "scanner5"
SITES = ["scanner3", "scanner4", "scanner5"]


def liar(claims: set[str]) -> ClientApp:
    """The real ClientApp, whose node LIAR claims 10⁹ where `claims` says: at the hello, as its train
    reply's weight (inside Flower's mods: what SecAgg+ masks), in its validation or its test counts."""
    app = ClientApp()

    @app.query("hello")
    def hello(message, context):
        reply = handle(message, context)
        if "hello" in claims and context.node_id == LIAR and not reply.has_error():
            reply.content["config"]["num_examples"] = BIG
        return reply

    @app.query("backbone")
    def backbone(message, context):
        return handle(message, context)

    @app.train(mods=TRAIN_MODS)
    def train(message, context):
        reply = handle(message, context)
        if context.node_id != LIAR or reply.has_error():
            return reply
        if FITRES in reply.content.array_records:  # Flower's legacy layout (SecAgg+): the mod reads this weight
            res = compat.recorddict_to_fitres(reply.content, keep_input=True)
            res.num_examples = BIG if "train" in claims else res.num_examples
            if "val" in claims and "val_psnr" in res.metrics:
                res.metrics.update({"val_subjects": BIG, "val_psnr": 45.0})
            return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=message)
        metrics = reply.content["metrics"]
        if "train" in claims:
            metrics["num-examples"] = BIG
        if "val" in claims and "val_psnr" in metrics:
            metrics["val_subjects"], metrics["val_psnr"] = BIG, 45.0
        return reply

    @app.evaluate()
    def evaluate(message, context):
        reply = handle(message, context)
        if "test" in claims and context.node_id == LIAR and not reply.has_error():
            m = reply.content["metrics"]
            m["test_subjects"], m["test_psnr"] = BIG_TEST, 45.0
            for key in [k for k in m if str(k).startswith("test_subject_")]:
                m[key] = [45.0 if key == "test_subject_psnr" else float(m[key][0])] * BIG_TEST
        return reply

    return app


def federate(app: ClientApp, rc: dict) -> tuple[dict, InProcessGrid]:
    grid = InProcessGrid(app, rc, NODES)
    return Coordinator(compose_run(rc), FlowerTransport(grid), quiet=True).run(), grid


def attested(rc: dict, split: str) -> dict[str, int]:
    """What a simulation's coordinator attests: the sizes of the synthetic data its config defines."""
    cfg = compose_run(rc)
    return {s: split_counts(cfg, s)[0][split] for s in SITES}


def bounded_mean(rows: list[dict], weights: dict[str, int]) -> float:
    return sum(r["psnr"] * weights[r["site"]] for r in rows) / sum(weights[r["site"]] for r in rows)


def uploads(grid: InProcessGrid) -> dict[int, dict[str, torch.Tensor]]:
    return {r.metadata.src_node_id: from_record(r.content.array_records[ARRAYS]) for r in grid.replies
            if r.metadata.message_type == "train" and not r.has_error() and ARRAYS in r.content.array_records}


def val_rows(summary: dict) -> list[dict]:
    log = json.loads((Path(summary["run_dir"]) / "log.json").read_text())["eval"]
    return [r for r in log if r["round"] == 0 and r["split"] == "val"]


@pytest.fixture(scope="module")
def cache(federation_cache) -> Path:
    return federation_cache


@pytest.fixture(scope="module")
def plain_liar(cache):
    """No SecAgg+: 10⁹ at the hello, in every train reply, in its validation and test counts."""
    rc = run_config(cache, **{"federation.run_name": "influence-plain"})
    return rc, *federate(liar({"hello", "train", "val", "test"}), rc)


# -- without SecAgg+ ------------------------------------------------------------------------------


def test_a_site_claiming_1e9_scans_weighs_its_attested_size_in_the_average(plain_liar):
    rc, summary, grid = plain_liar
    weights = attested(rc, "train")
    got = uploads(grid)
    expected = weighted_average([(got[n], weights[s]) for n, s in zip((1000, 1001, 1002), SITES, strict=True)])
    adapter = load_file(Path(summary["run_dir"]) / "global-adapter.safetensors")
    assert adapter.keys() == expected.keys()
    assert all(torch.allclose(adapter[k], expected[k], rtol=1e-6, atol=1e-9) for k in expected)
    w = summary["weights"][LIAR_SITE]
    assert (w["train_declared"], w["train_attested"], w["train_used"]) == (BIG, weights[LIAR_SITE],
                                                                           weights[LIAR_SITE])


def test_a_site_claiming_1e9_validation_subjects_weighs_its_attested_count_in_the_mean(plain_liar):
    rc, summary, _ = plain_liar
    rows = val_rows(summary)
    liar_row = next(r for r in rows if r["site"] == LIAR_SITE)
    assert liar_row["subjects"] == BIG and liar_row["psnr"] == 45.0  # the claim is kept, as claimed
    mean = RunLog.from_dict(json.loads((Path(summary["run_dir"]) / "log.json").read_text())).weighted_mean(0, "val")
    assert mean["psnr"] == pytest.approx(bounded_mean(rows, attested(rc, "val")), rel=1e-12)
    assert mean["psnr"] < 45.0 - 1.0


def test_a_site_claiming_1e5_test_subjects_weighs_its_attested_count_in_the_run_result(plain_liar):
    rc, summary, _ = plain_liar
    rows = [{"site": s, **summary["sites"][s]["test"]} for s in SITES]
    assert rows[2]["subjects"] == BIG_TEST and rows[2]["psnr"] == 45.0
    honest = [r["psnr"] for r in rows[:2]]
    assert summary["test_mean"]["psnr"] == pytest.approx(bounded_mean(rows, attested(rc, "test")), rel=1e-12)
    # one subject of three: the liar moves the mean by a third of its lie, not to it
    assert summary["test_mean"]["psnr"] < (2 * max(honest) + 45.0) / 3 + 1e-9


# -- under SecAgg+ --------------------------------------------------------------------------------


def test_under_secagg_a_hello_claim_of_1e9_does_not_set_max_weight(cache, plain_liar):
    """The hello's 10⁹ once became SecAgg+'s max_weight, which rounded every honest weight to zero. Now the
    sum is the bounded-weight average (plain_liar's global, up to SecAgg+'s quantization), and the
    liar's validation claim weighs its attested count there too."""
    rc = run_config(cache, "federation.secagg.enabled=true", **{"federation.run_name": "influence-secagg-hello"})
    summary, _ = federate(liar({"hello", "val"}), rc)
    a = load_file(Path(plain_liar[1]["run_dir"]) / "global-adapter.safetensors")
    b = load_file(Path(summary["run_dir"]) / "global-adapter.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-5  # Flower's quantization step: 3.8e-6
    assert summary["protection"] == "SecAgg+" and not summary["rejected"]
    rows = val_rows(summary)
    mean = RunLog.from_dict(json.loads((Path(summary["run_dir"]) / "log.json").read_text())).weighted_mean(0, "val")
    assert mean["psnr"] == pytest.approx(bounded_mean(rows, attested(rc, "val")), rel=1e-12)


def test_under_secagg_a_masked_upload_weighted_1e9_is_kept_out_of_the_sum(cache):
    """The train reply's 10⁹ is the weight Flower's mod multiplies the upload by before masking it. It travels
    beside the masked vector and is refused there, before the sum: with three sites the sum of two is
    discarded (SecAgg+'s own rule), naming the liar; nothing of the round is kept."""
    rc = run_config(cache, "federation.secagg.enabled=true", **{"federation.run_name": "influence-secagg-train"})
    with pytest.raises(PetiteError, match=r"only 2 site\(s\) \(1 left out: scanner5: its masked upload is weighted "
                                          r"1000000000, above its bound 1 \(kept out of the SecAgg\+ sum\)\)"):
        federate(liar({"train"}), rc)
    assert not (cache / "runs" / "federated" / "influence-secagg-train" / "checkpoint.pt").exists()


# -- attestation out of band ----------------------------------------------------------------------


def test_attestation_at_petite_server_register_reaches_the_coordinators_weighting(cache, tmp_path, monkeypatch):
    """`petite-server register … --max-train-weight 1 --max-eval-count 1` for the liar (its table entry
    as the command writes it once Flower gave the node its id); the ServerApp finds the table through its
    environment. With `federation.unattested_weight=declared` the liar would weigh its 10⁹; attested, 1."""
    from petite_fl.cli.server import admit, build_parser
    from petite_fl.deploy.registry import ENV, registry_path

    monkeypatch.setenv("PETITE_FL_HOME", str(tmp_path))
    for node, site in zip((1000, 1001, 1002), SITES, strict=True):
        figures = ["--max-train-weight", "1", "--max-eval-count", "1"] if site == LIAR_SITE else []
        admit(build_parser().parse_args(["register", "--site", site, "--key", "k.pub", *figures]), node, "0" * 64)
    monkeypatch.setenv(ENV, str(registry_path(tmp_path / "server")))
    rc = run_config(cache, "federation.unattested_weight=declared", **{"federation.run_name": "influence-registry"})
    summary, grid = federate(liar({"hello", "train", "test"}), rc)
    got = uploads(grid)
    expected = weighted_average([(got[n], 1) for n in (1000, 1001, 1002)])  # every site: 1 training scan
    adapter = load_file(Path(summary["run_dir"]) / "global-adapter.safetensors")
    assert all(torch.allclose(adapter[k], expected[k], rtol=1e-6, atol=1e-9) for k in expected)
    assert summary["weights"][LIAR_SITE] == {
        "train_declared": BIG, "train_attested": 1, "train_used": 1, "eval_attested": {"val": 1, "test": 1},
        "attested_by": "petite-server register", "unattested_weight": "declared"}
    rows = [{"site": s, **summary["sites"][s]["test"]} for s in SITES]
    assert summary["test_mean"]["psnr"] == pytest.approx(sum(r["psnr"] for r in rows) / 3, rel=1e-12)


# -- the bounds themselves ------------------------------------------------------------------------


def test_min_of_declared_and_attested_and_the_unattested_default():
    from petite_fl.federation.server.weights import Attested, Influence

    influence = Influence({"a": Attested(5, {"val": 2, "test": 3})}, "uniform")
    assert [influence.train("a", n) for n in (1, 5, BIG)] == [1, 5, 5]
    assert (influence.eval("a", "val", BIG), influence.eval("a", "test", 1)) == (2, 1)
    assert (influence.train("b", BIG), influence.eval("b", "test", BIG)) == (1, 1)
    assert Influence({}, "declared").train("b", 7) == 7
    assert Attested(5, {"val": 2}).merged(Attested(3, {"val": 4, "test": 1})) == Attested(3, {"val": 2, "test": 1})
    with pytest.raises(ConfigError, match=r"federation\.unattested_weight must be one of uniform, declared"):
        Influence({}, "largest")


@pytest.mark.parametrize("value, fragment", [
    ("{scanner9: {train: 3}}", "names site 'scanner9', which is not in federation.sites"),
    ("{scanner3: {train: 0}}", r"federation.attested.scanner3.train must be a positive whole number, got 0"),
    ("{scanner3: {weight: 3}}", "must hold train and/or eval"),
])
def test_a_bad_attestation_is_one_line_naming_the_field(value, fragment):
    from petite_fl.federation.server.weights import from_config

    cfg = compose("config", [f"federation.attested={value}", "federation.sites=[scanner3,scanner4]"])
    with pytest.raises(ConfigError, match=fragment):
        from_config(cfg, ["scanner3", "scanner4"], registry_kept=False)


def test_the_attestation_stays_with_the_coordinator():
    from petite_fl.federation.server.weights import Attested, from_config

    cfg = compose("config", ["federation.attested={scanner1: {train: 3, eval: 2}}"])
    assert from_config(cfg, ["scanner1"], registry_kept=False)["scanner1"] == Attested(
        3, {"val": 2, "test": 2}, "federation.attested")
    assert "attested" not in site_sections(cfg)["federation"]
