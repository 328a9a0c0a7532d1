"""The coordinator's run journal: what `petite-server --resume` resubmits after a crash."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict

from petite_fl.errors import PetiteError
from petite_fl.federation.flower import journal
from petite_fl.federation.flower import server as apps


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv(journal.ENV, str(tmp_path))
    return tmp_path


def context(run_id: int) -> Context:
    return Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={"seed": 0})


def test_only_runs_that_never_ended_are_interrupted(runs):
    journal.record_start(1, {"seed": 0})
    journal.record_start(2, {"seed": 1})
    journal.record_end(2, "finished")
    assert [e["run_id"] for e in journal.interrupted(runs)] == [1]
    (runs / "foreign.json").write_text("{not json")
    assert [e["run_id"] for e in journal.interrupted(runs)] == [1]


def test_serve_journals_a_verdict_as_failed_and_a_lost_server_as_interrupted(runs, monkeypatch):
    def refuse(*args):
        raise PetiteError("only 1 site(s) ready, 2 needed")

    def lose(*args):
        raise ConnectionError("SuperLink unreachable")

    monkeypatch.setattr(apps, "run_all", refuse)
    with pytest.raises(PetiteError):
        apps.serve(None, context(7))
    monkeypatch.setattr(apps, "run_all", lose)
    with pytest.raises(ConnectionError):
        apps.serve(None, context(8))
    entries = {json.loads(p.read_text())["run_id"]: json.loads(p.read_text()) for p in runs.glob("*.json")}
    assert entries[7]["status"] == "failed" and "2 needed" in entries[7]["detail"]
    assert entries[8]["status"] == "running" and "SuperLink unreachable" in entries[8]["detail"]
    assert [e["run_id"] for e in journal.interrupted(runs)] == [8]


def test_without_a_journal_folder_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(journal.ENV, raising=False)
    journal.record_start(3, {})
    journal.record_end(3, "finished")
    assert not list(tmp_path.iterdir())
