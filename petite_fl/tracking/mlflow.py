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
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from petite_fl.atomic import private_dir
from petite_fl.console import console, one_line
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.tracking.base import (
    TAG_KEYS,
    Tracker,
    final_keys,
    flatten,
    keep_private,
    numbers,
    recorded_config,
    tracking_folder,
    without_credentials,
)
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
        self.client = None
        try:
            self.client = _client(self.uri)
            self._open(settings, name, tags, artifacts)
        except ConfigError:
            raise
        except Exception as exc:  # a server that does not answer, a locked or foreign store: one line, no run
            raise PetiteError(f"tracking=mlflow: cannot open the MLflow store {without_credentials(self.uri)} "
                              f"({_said(exc)}); fix tracking.uri or use tracking=tensorboard") from None
        self.last_step = 0

    def _open(self, settings: Mapping[str, Any], name: str, tags: Mapping[str, str], artifacts: str | None) -> None:
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

    def config(self, resolved: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        resolved = recorded_config(resolved)
        flat = {_key(k)[:250]: v[:MAX_PARAM_VALUE] for k, v in flatten(resolved).items()}
        # a resumed job may differ in settings that do not change what it computes: the first start's stay
        new = [Param(k, v) for k, v in flat.items() if k not in self.params]

        def write() -> None:
            for i in range(0, len(new), MAX_BATCH):
                self.client.log_batch(self.run_id, params=new[i:i + MAX_BATCH])
            self.params.update({p.key: p.value for p in new})
            self.client.log_text(self.run_id, yaml.safe_dump(resolved, sort_keys=False), "config.yaml")

        self._guarded(write)

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, int(step)) for k, v in numbers(values).items()]

        def write() -> None:
            for i in range(0, len(metrics), MAX_BATCH * 10):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_BATCH * 10])

        self._guarded(write)
        self.last_step = max(self.last_step, int(step))

    def final(self, values: Mapping[str, Any]) -> None:
        self.scalars(final_keys(values), self.last_step)

    def _guarded(self, write: Callable[[], None]) -> None:
        """A tracking store that fails mid-job (a server gone, a full disk) costs the curves, never the
        job: one line, and this job's tracking stops."""
        if self.client is None:
            return
        try:
            write()
        except Exception as exc:
            console.print(f"tracking=mlflow: writing to {without_credentials(self.uri)} failed ({_said(exc)}); "
                          "this job's MLflow curves stop here, the job goes on",
                          markup=False, highlight=False, soft_wrap=True)
            self.client = None

    def close(self, failed: bool = False) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            except Exception as exc:
                console.print(f"tracking=mlflow: could not close run {self.run_id} at {without_credentials(self.uri)} "
                              f"({_said(exc)})", markup=False, highlight=False, soft_wrap=True)
        if self.local.is_dir():
            keep_private(self.local)


def _key(name: str) -> str:
    """A metric or param name MLflow takes: letters, digits and `_-. :/` only, no empty, `.` or `..`
    segment (a site named by its manifest path makes `val_psnr//data/site.json`)."""
    parts = [re.sub(r"[^\w\-. :]", "_", part) for part in str(name).split("/")]
    return "/".join("_" if part in (".", "..") else part for part in parts if part) or "_"


def _said(exc: BaseException) -> str:
    """An exception of the tracking library as one printable line."""
    return one_line(str(exc) or type(exc).__name__, limit=200)
