"""`tracking=mlflow`: one MLflow run per job, through MLflow's own `MlflowClient`.

Optional (`pip install 'petite-fl[mlflow]'`). With `tracking.uri: null` the store is local and
needs no server: SQLite at `<store>/mlflow.db`, artifacts in `<store>/artifacts` (MLflow 3 refuses
its plain file store by default and recommends SQLite), where the store is one per machine for
jobs and coordinators (`<paths.cache>/mlflow`) and one per site in the site's own folder
(`<site root>/<site>/mlflow`); `mlflow ui --backend-store-uri sqlite:///<store>/mlflow.db` shows it.
`tracking.uri` may name a tracking server or any MLflow URI; runs go to the experiment `tracking.experiment`.

Per job: the flattened resolved config as params (values cut to MLflow's length limit), the
config YAML as the artifact `config.yaml`, metrics per step or round, final metrics, and the tags
`petite.job`, `petite.run`, `petite.site`. A resumed job (same tags) continues its run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from petite_fl.atomic import private_dir
from petite_fl.errors import ConfigError
from petite_fl.tracking.base import TAG_KEYS, Tracker, final_keys, flatten, keep_private, numbers, tracking_folder
from petite_fl.tracking.registry import register_tracker

FOLDER = "mlflow"
#: MLflow's limits: characters of a param value, entries per log_batch call
MAX_PARAM_VALUE, MAX_BATCH = 6000, 100


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("tracking=mlflow needs MLflow: pip install 'petite-fl[mlflow]'") from None
    for logger in ("mlflow", "alembic"):  # the store's migration and run notices are not the user's business
        logging.getLogger(logger).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@register_tracker
class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, settings: Mapping[str, Any], folder: Path, name: str, tags: Mapping[str, str],
                 store: Path | None = None) -> None:
        self.local = local = Path(store) if store is not None else Path(folder) / FOLDER
        if settings.get("uri"):
            self.uri, artifacts = str(settings["uri"]), None
        else:
            private_dir(local) if store is not None else tracking_folder(local)  # a shared store: the owner's only
            self.uri, artifacts = f"sqlite:///{local.resolve() / 'mlflow.db'}", (local.resolve() / "artifacts").as_uri()
        self.client = _client(self.uri)
        experiment = str(settings.get("experiment") or "petite-fl")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifacts)
        self.tags = {f"petite.{k}": str(tags[k]) for k in TAG_KEYS if k in tags}
        query = " and ".join(f"tags.`{k}` = {_quoted(v)}" for k, v in self.tags.items())
        runs = self.client.search_runs([experiment_id], filter_string=query, max_results=1,
                                       order_by=["attributes.start_time DESC"])
        if runs:  # a resumed job continues its run
            self.run_id = runs[0].info.run_id
            self.params = dict(runs[0].data.params)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags=self.tags).info.run_id
            self.params = {}
        self.last_step = 0

    def config(self, resolved: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = {k[:250]: v[:MAX_PARAM_VALUE] for k, v in flatten(resolved).items()}
        # a resumed job may differ in settings that do not change what it computes: the first start's stay
        new = [Param(k, v) for k, v in flat.items() if k not in self.params]
        for i in range(0, len(new), MAX_BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + MAX_BATCH])
        self.params.update({p.key: p.value for p in new})
        self.client.log_text(self.run_id, yaml.safe_dump(dict(resolved), sort_keys=False), "config.yaml")

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(step)) for k, v in numbers(values).items()]
        for i in range(0, len(metrics), MAX_BATCH * 10):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_BATCH * 10])
        self.last_step = max(self.last_step, int(step))

    def final(self, values: Mapping[str, Any]) -> None:
        self.scalars(final_keys(values), self.last_step)

    def close(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id)
            self.client = None
            if self.local.is_dir():
                keep_private(self.local)
