"""No credential travels in a run config (issue 26, B2).

Flower hands a run's run-config to every site (the SuperLink's `get-run`, every ClientApp's
`context.run_config`), so a tracking server's password in `tracking.uri=https://user:password@host`
reached every site. Now a run config holding one is refused at submission (`petite simulate`,
`petite compare`, `deploy.submission.submit`) and by the real ServerApp before it journals or sends
anything; the coordinator's tracking server comes from its own environment (MLflow's variables),
and a real run in process shows that neither it nor its password reaches a site.
"""

from __future__ import annotations

import pytest
from flower_grid import InProcessGrid
from flwr.app import Context, RecordDict
from test_federation_run import NODES, SITES, federate, run_config
from tracking_readers import mlflow_runs

from petite_fl.artifacts import save_backbone
from petite_fl.deploy.submission import submit
from petite_fl.errors import ConfigError
from petite_fl.federation.flower import journal
from petite_fl.federation.flower.app import client_app
from petite_fl.federation.flower.codec import decode
from petite_fl.federation.flower.server import serve
from petite_fl.federation.messages import Hello
from petite_fl.models.registry import build_backbone
from petite_fl.runconfig import app_defaults, command_config, compose_run

SECRET = "s3cr3t-pw"
HOW = ("a run config travels to every site: give a tracking server's credentials in the coordinator's environment "
       "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)")


@pytest.mark.parametrize(("overrides", "line"), [
    (["tracking=mlflow", f"tracking.uri=https://user:{SECRET}@mlflow.example/"],
     "refused: tracking.uri in the run config's overrides holds a URL with a user name or password"),
    ([f"tracking.uri=https://{SECRET}@mlflow.example/"],
     "refused: tracking.uri in the run config's overrides holds a URL with a user name or password"),
    ([f"tracking.uri=https://mlflow.example/?token={SECRET}"],
     "refused: tracking.uri in the run config's overrides holds a URL whose query names a secret"),
    ([f"tracking.uri=https://mlflow.example/x?a=1&password={SECRET}"],
     "refused: tracking.uri in the run config's overrides holds a URL whose query names a secret"),
    ([f"+MLFLOW_TRACKING_PASSWORD={SECRET}"],
     "refused: the run config's overrides sets 'MLFLOW_TRACKING_PASSWORD', named like a secret"),
    ([f"+tracking.token={SECRET}"],
     "refused: the run config's overrides sets 'tracking.token', named like a secret"),
])
def test_a_run_config_holding_a_credential_is_refused_at_submission_in_one_line(overrides, line):
    """What `petite simulate` and `petite compare` check before Flower starts; the value is never repeated."""
    with pytest.raises(ConfigError) as refused:
        command_config(overrides)
    assert str(refused.value) == f"{line}; {HOW}"
    assert SECRET not in str(refused.value)


def test_a_flat_run_config_key_holding_a_credential_is_refused_and_a_plain_uri_is_not():
    with pytest.raises(ConfigError) as refused:
        compose_run({**app_defaults(), "tracking.uri": f"https://user:{SECRET}@mlflow.example/"})
    assert str(refused.value) == ("refused: tracking.uri in the run config holds a URL with a user name or "
                                  f"password; {HOW}")
    plain = {**app_defaults(), "tracking": "mlflow", "tracking.uri": "https://mlflow.example/"}
    assert compose_run(plain).tracking.uri == "https://mlflow.example/"


def test_deploys_submission_refuses_a_credential_before_anything_is_written_or_run(tmp_path):
    with pytest.raises(ConfigError, match=r"^refused: tracking.uri in the run config's overrides holds a URL"):
        submit(tmp_path / "no-app", "petite", {"overrides": f"tracking.uri=https://user:{SECRET}@mlflow.example/"},
               timeout=30)


def test_the_serverapp_refuses_a_credential_before_it_journals_or_sends_anything(tmp_path, monkeypatch):
    """`flwr run` straight to the SuperLink skips petite's submission check: the real ServerApp refuses
    first, so no site gets a message of the run (a ClientApp gets the run-config only with one)."""
    monkeypatch.setenv(journal.ENV, str(tmp_path / "journal"))
    backbone = tmp_path / "unetr-tiny.safetensors"
    save_backbone(build_backbone("unetr", "tiny"), backbone, {"preset": "tiny"})
    rc = {**app_defaults(), "paths.cache": str(tmp_path / "cache"), "data": "tiny", "train": "tiny",
          "backbone": str(backbone), "federation.sites": "[scanner4,scanner5]", "federation.wait_for_sites": 1,
          "overrides": f"tracking.uri=https://user:{SECRET}@127.0.0.1:9/"}
    grid = InProcessGrid(client_app, rc, NODES, fail={1000: lambda m: True, 1001: lambda m: True})
    with pytest.raises(ConfigError, match=r"^refused: tracking.uri in the run config's overrides holds a URL"):
        serve(grid, Context(run_id=5, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    assert not grid.sent  # no site was sent anything of the run
    assert not any(SECRET in p.read_text() for p in (tmp_path / "journal").rglob("*") if p.is_file())


@pytest.mark.slow  # a real two-site run in process: 1-3 min on 2 shared cores
def test_the_coordinators_tracking_server_comes_from_its_environment_and_reaches_no_site(federation_cache,
                                                                                         tmp_path, monkeypatch):
    """A real two-site run in process: the coordinator's MLflow server and password are in its environment
    only (`MLFLOW_TRACKING_URI`, `MLFLOW_TRACKING_PASSWORD`); the coordinator's run is there, and no hello,
    no ClientApp's run-config and no file of a site holds either."""
    server = tmp_path / "coordinator-mlflow"
    server.mkdir()
    uri = f"sqlite:///{server / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    monkeypatch.chdir(tmp_path)  # an SQLite server's default artifact folder is ./mlruns
    rc = run_config(federation_cache, strategy="fedavg", **{"federation.rounds": 1, "overrides": (
        "federation.val.patches=4 tracking=mlflow federation.run_name=track-environment")})
    _, grid = federate(rc)
    _, found = mlflow_runs(server, run="track-environment")
    assert len(found) == 1 and found[0].data.tags["petite.job"] == "federated"
    hellos = [m for m in grid.sent if m.metadata.message_type == "query.hello"]
    assert len(hellos) == len(SITES)
    for message in hellos:
        text = repr(message.content)
        assert str(server) not in text and SECRET not in text
        assert "uri" not in decode(Hello, message.content).config["tracking"]
    assert all(str(server) not in repr(c.run_config) for c in grid.contexts.values())
    for path in (federation_cache / "sites").rglob("*"):
        if path.is_file() and path.stat().st_size < 2**22:
            data = path.read_bytes()
            assert str(server).encode() not in data and SECRET.encode() not in data, path
