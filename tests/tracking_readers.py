"""Reading a job's tracking back as a user would: TensorBoard's event reader, MLflow's client."""

from __future__ import annotations

import csv
from pathlib import Path

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def events(folder: Path) -> EventAccumulator:
    """Every event file of one TensorBoard run folder, as TensorBoard reads them."""
    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def curve(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def config_text(acc: EventAccumulator) -> str:
    return acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def mlflow_runs(store: Path, **tags: str) -> tuple[MlflowClient, list]:
    """The runs of a local MLflow store (the folder holding mlflow.db) with these `petite.<tag>` values."""
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("petite-fl")
    query = " and ".join(f"tags.`petite.{k}` = '{v}'" for k, v in tags.items())
    return client, client.search_runs([experiment.experiment_id], filter_string=query)


def history(client: MlflowClient, run, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def tracked_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "tfevents" in p.name or p.name == "mlflow.db"]
