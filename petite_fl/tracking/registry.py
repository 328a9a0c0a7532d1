"""Trackers by name (one file each in this package) and the one way a job opens its tracker."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl.config import expand_path
from petite_fl.registry import Registry
from petite_fl.tracking.base import Tracker

TRACKERS: Registry[type[Tracker]] = Registry("tracker", "petite_fl.tracking", order=("tensorboard", "mlflow", "none"))
#: the tracker of a config without a `tracking` section (the group's default)
DEFAULT = "tensorboard"
#: MLflow's own variable for its tracking server (the coordinator's, never a run-config's)
ENV_URI = "MLFLOW_TRACKING_URI"


def register_tracker(cls: type[Tracker]) -> type[Tracker]:
    """Class decorator: register a Tracker subclass under its `name`."""
    return TRACKERS.register(cls.name, cls)


def available_trackers() -> list[str]:
    return TRACKERS.names()


def _settings(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {"name": DEFAULT}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg) if isinstance(cfg, Mapping) else {"name": str(cfg)}


def tracker_name(cfg: Any) -> str:
    """The tracker a `tracking` section names (a missing section: the default), checked."""
    name = str(_settings(cfg).get("name") or DEFAULT)
    TRACKERS.get(name)  # an unknown name is one line naming the known ones
    return name


def open_tracker(cfg: Any, folder: Path, name: str, tags: Mapping[str, str], store: Path | None = None) -> Tracker:
    """The tracker `cfg` (a `tracking` section) names, writing for the job `name` under `folder`.

    `tags`: `job` (pretrain, finetune, federated, site, compare), `run` (the job's name, by which
    a resumed job finds its MLflow run) and `site`. `store`: the folder of a local store shared by
    many jobs (MLflow's SQLite file: one per machine, one per site, so that its UI compares runs);
    None = in `folder`. Use it as a context manager: it closes its writer.
    """
    settings = _settings(cfg)
    return TRACKERS.get(tracker_name(settings))(settings, Path(folder), name, dict(tags),
                                                Path(store) if store is not None else None)


def environment_uri(cfg: Any) -> dict[str, Any]:
    """A `tracking` section whose null MLflow `uri` is `MLFLOW_TRACKING_URI` where the environment sets it
    (MLflow's client reads the user name, password or token from the environment itself)."""
    settings = _settings(cfg)
    if settings.get("name") == "mlflow" and not settings.get("uri") and os.environ.get(ENV_URI):
        settings["uri"] = os.environ[ENV_URI]
    return settings


def job_tracker(cfg: DictConfig, folder: Path, job: str, run: str, site: str) -> Tracker:
    """A job's tracker (`cfg.tracking`) in `folder`, its resolved config recorded (close it: `with`).

    MLflow's local store is one per machine (`<cache>/mlflow`), so that `mlflow ui` compares runs.
    Without a `tracking.uri`, MLflow's own `MLFLOW_TRACKING_URI` from this machine's environment names
    the server: how a coordinator sets it without a run-config, which Flower hands to every site.
    """
    tracker = open_tracker(environment_uri(cfg.get("tracking")), folder, run, {"job": job, "run": run, "site": site},
                           store=expand_path(cfg.paths.cache) / "mlflow")
    try:
        tracker.config(OmegaConf.to_container(cfg, resolve=True))
    except BaseException:
        tracker.close()
        raise
    return tracker
