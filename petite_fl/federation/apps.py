"""The two Flower apps' logic, kept in the library so that `server/` and `client/` are wiring.

Both sides build their configuration the same way: the run's flat run-config through
`petite_fl.config` (the single bridge), plus the overrides the server attaches to a
message when it runs several arms in one run (`petite compare`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from petite_fl.atomic import write_json
from petite_fl.config import compose, hydra_override, overrides_from_run_config
from petite_fl.console import console
from petite_fl.deploy import journal
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.records import ARRAYS, CONFIG, METRICS, from_record, record_bytes, to_record
from petite_fl.federation.secagg import FITINS_CONFIG, fitres_content, is_fitins, read_fitins
from petite_fl.federation.server import Coordinator
from petite_fl.federation.site import SiteWorker, site_for_node
from petite_fl.federation.strategies import build_strategy
from petite_fl.training.jobs import backbone_for

#: Error code of a site that refused a message for a reason it states (bad data, config).
SITE_REFUSED = 1001


def config_for(run_config: dict[str, Any], extra: list[str] | tuple[str, ...] = ()) -> DictConfig:
    return compose("config", [*overrides_from_run_config(run_config), *extra])


def site_overrides(node_config: dict[str, Any]) -> list[str]:
    """A deployed site's own settings, from its node config (set by `petite-client`)."""
    out = []
    if node_config.get("site-root"):
        out.append(f"federation.site_root='{node_config['site-root']}'")
    if node_config.get("device"):
        out.append(f"train.device={node_config['device']}")
    return out


def _extra(message: Message) -> list[str]:
    c = message.content.config_records.get(CONFIG) or message.content.config_records.get(FITINS_CONFIG)
    return list(json.loads(str(c["overrides"]))) if c is not None and "overrides" in c else []


def _train(worker: SiteWorker, strategy, message: Message) -> Message:
    """One round at the site; the reply is a FitRes when the server asked in Flower's legacy
    layout (SecAgg+ or client-side DP clipping), petite-fl's own records otherwise."""
    legacy = is_fitins(message.content)
    if legacy:
        c, received = read_fitins(message.content)
    else:
        c = message.content.config_records[CONFIG]
        received = from_record(message.content.array_records.get(ARRAYS), str(c.get("transport", "float32")))
    upload, metrics = worker.train_round(strategy, str(c["run"]), int(c["round"]), int(c["rounds"]),
                                         int(c["steps"]), str(c["sha256"]), received, bool(c["validate"]))
    if not legacy:
        upload_record = to_record(upload, str(c.get("transport", "float32"))) if upload else ArrayRecord()
        return Message(RecordDict({ARRAYS: upload_record,
                                   METRICS: MetricRecord(metrics),
                                   CONFIG: ConfigRecord({"backbone_sha256": worker.backbone_sha256})}),
                       reply_to=message)
    weight = 1 if str(c.get("weight")) == "uniform" else int(metrics["num-examples"])
    clip = float(c["secagg_clipping_range"]) if "secagg_clipping_range" in c else None
    content = fitres_content(upload, json.loads(str(c["names"])), weight,
                             {**metrics, "backbone_sha256": worker.backbone_sha256}, clip)
    return Message(content, reply_to=message)


# -- site side -------------------------------------------------------------------------


def handle(message: Message, context: Context) -> Message:
    """Answer one message of the server; a site's own refusal travels as a clear error reply."""
    try:
        node = dict(context.node_config)
        cfg = config_for(dict(context.run_config), [*_extra(message), *site_overrides(node)])
        worker = SiteWorker(cfg, site_for_node(cfg, node), node.get("manifest") or None)
        kind = message.metadata.message_type
        c = message.content.config_records.get(CONFIG)
        if kind == "query.hello":
            return Message(RecordDict({CONFIG: ConfigRecord(worker.hello())}), reply_to=message)
        if kind == "query.backbone":
            meta = json.loads(str(c["meta"]))
            tensors = from_record(message.content.array_records[ARRAYS])
            worker.receive_backbone(tensors, meta)
            return Message(RecordDict({METRICS: MetricRecord({"bytes": record_bytes(message.content)})}),
                           reply_to=message)
        strategy = build_strategy(cfg.strategy)
        if kind == "train":
            return _train(worker, strategy, message)
        transport = str(c.get("transport", "float32")) if c is not None else "float32"
        received = from_record(message.content.array_records.get(ARRAYS), transport)
        if kind == "evaluate":
            metrics, path = worker.finish(strategy, str(c["run"]), int(c["round"]), str(c["sha256"]), received,
                                          tuple(str(c["splits"]).split(",")))
            return Message(RecordDict({METRICS: MetricRecord(metrics), CONFIG: ConfigRecord({"adapter": str(path)})}),
                           reply_to=message)
        raise PetiteError(f"unknown message type '{kind}'")
    except PetiteError as exc:
        site = dict(context.node_config).get("site") or f"partition {dict(context.node_config).get('partition-id')}"
        return message.create_error_reply(Error(SITE_REFUSED, f"site {site}: {exc}"))


# -- server side -----------------------------------------------------------------------


def serve(grid: Grid, context: Context) -> dict[str, Any]:
    """The ServerApp's main, journaled so that `petite-server --resume` can resubmit a killed run."""
    journal.record_start(context.run_id, dict(context.run_config))
    try:
        result = _serve(grid, context)
    except PetiteError as exc:  # the run's own verdict (config, too few sites): resubmitting would not help
        journal.record_end(context.run_id, "failed", str(exc)[:500])
        raise
    except BaseException as exc:  # lost its SuperLink, killed, a bug: interrupted, --resume tries again
        journal.record_end(context.run_id, "running", f"interrupted: {exc!r}"[:500])
        raise
    journal.record_end(context.run_id, "finished")
    return result


def _serve(grid: Grid, context: Context) -> dict[str, Any]:
    """One federated run, or the arms × seeds of a comparison one after the other."""
    run_config = dict(context.run_config)
    cfg = config_for(run_config)
    arms = [str(a) for a in (cfg.compare.run or [])]
    if not arms:
        return Coordinator(cfg, grid).run()
    if not cfg.compare.dir:
        raise ConfigError("compare.run is set but compare.dir is not")
    unknown = [a for a in arms if a not in cfg.compare.arms]
    if unknown:
        raise ConfigError(f"compare.run: unknown arm(s) {unknown}; defined: {', '.join(cfg.compare.arms)}")
    runs = [(arm, seed) for seed in compare_seeds(cfg) for arm in arms]
    backbone = backbone_for(cfg)  # one backbone for every arm and seed: seeds vary the fine-tuning only
    results, failed = {}, {}
    for i, (arm, seed) in enumerate(runs, 1):
        out = arm_dir(Path(str(cfg.compare.dir)), arm, seed)
        overrides = [*[str(o) for o in cfg.compare.arms[arm]], f"seed={seed}", hydra_override("backbone", backbone),
                     hydra_override("out", out), "compare.run=null"]
        label = f"{arm}/seed-{seed}"
        try:
            arm_cfg = config_for(run_config, overrides)
            if not int(arm_cfg.federation.rounds) and seed != runs[0][1]:
                continue  # nothing is trained: the first seed's run stands for every seed
            console.print(f"server · run {i}/{len(runs)}: {label} ({' '.join(overrides[:-3])})", markup=False)
            results[label] = Coordinator(arm_cfg, grid, overrides=overrides, label=label).run()
        except PetiteError as exc:  # one arm failing does not lose the others
            failed[label] = str(exc)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "error.json", {"arm": arm, "seed": seed, "error": str(exc)})
            console.print(f"server · {label} failed: {exc}", markup=False)
    if failed:
        raise PetiteError("arms failed: " + "; ".join(f"{a}: {e}" for a, e in failed.items()))
    return results


def compare_seeds(cfg: DictConfig) -> list[int]:
    """The training seeds of a comparison: `seed`, `seed + 1`, … (`compare.seeds` of them)."""
    n = cfg.compare.seeds
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"compare.seeds must be a whole number ≥ 1 (how many training seeds per arm), got {n!r}")
    return [int(cfg.seed) + i for i in range(n)]


def arm_dir(folder: Path, arm: str, seed: int) -> Path:
    """Where one arm's run with one seed writes: <compare dir>/arms/<arm>/seed-<seed>."""
    return folder / "arms" / arm / f"seed-{seed}"
