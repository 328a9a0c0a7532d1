"""The server half of a federated run, over any Flower `Grid` (simulation or deployment).

The rounds are driven here rather than by `flwr.serverapp.strategy.FedAvg.start`
because petite-fl sends per-node content (the backbone only to sites that lack it),
averages only the shared subset of the PEFT tensors, and must reject a bad reply itself
before Flower's reply checks would end the ServerApp (../shared/FLOWER.md).

Message flow: `query.hello` (site name, backbone hashes held, sample count) →
`query.backbone` to sites without it → rounds of `train` (global shared tensors down,
the site's shared tensors up; the site validates the model it starts from) → `evaluate`
(final model on val and test). After every round the server checkpoints atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import FitIns
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from omegaconf import DictConfig, OmegaConf

from petite_fl import __version__
from petite_fl.artifacts import load_backbone, save_adapter
from petite_fl.atomic import atomic_path, write_csv, write_json
from petite_fl.config import expand_path
from petite_fl.console import console, human_bytes
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.evaluation import read_final_metrics
from petite_fl.federation.privacy import PrivacyLedger, private_mean
from petite_fl.federation.protection import check_combination, protection_from_config
from petite_fl.federation.records import (
    ARRAYS,
    CONFIG,
    METRICS,
    check_transport,
    from_record,
    record_bytes,
    to_record,
)
from petite_fl.federation.secagg import is_fitres, read_fitres, secure_round, to_parameters
from petite_fl.federation.site import round_seed, site_list
from petite_fl.federation.strategies import Strategy, build_strategy
from petite_fl.models.base import Backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.profiling import peak_rss_bytes
from petite_fl.training.inference import METRICS as METRIC_NAMES
from petite_fl.training.jobs import backbone_for, config_hash

HELLO, BACKBONE, TRAIN, EVALUATE = "query.hello", "query.backbone", "train", "evaluate"
# Settings that do not change what a run computes, so they do not change its name.
_RUN_NEUTRAL = ("resume", "timeout", "wait_for_sites", "run_name", "site_root", "min_sites")


def run_name_for(cfg: DictConfig, backbone_sha: str) -> str:
    if cfg.federation.run_name:
        return str(cfg.federation.run_name)
    fed = {k: v for k, v in OmegaConf.to_container(cfg.federation, resolve=True).items() if k not in _RUN_NEUTRAL}
    key = config_hash(__version__, cfg.strategy, cfg.peft, cfg.train, cfg.data, fed, cfg.seed, backbone_sha)
    return f"{cfg.strategy.name}-{cfg.peft.name}-{key}"


def default_run_dir(cfg: DictConfig, run_name: str) -> Path:
    return expand_path(cfg.out) if cfg.out else expand_path(cfg.paths.cache) / "runs" / "federated" / run_name


@dataclass
class SiteInfo:
    node_id: int
    site: str
    num_examples: int
    held: list[str]
    device: str


@dataclass
class RunLog:
    """What the run measured; written as CSV/JSON after every round."""

    train_rows: list[dict[str, Any]] = field(default_factory=list)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    transfer_rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    subject_rows: list[dict[str, Any]] = field(default_factory=list)  # final test, per subject position

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train_rows, "eval": self.eval_rows, "transfer": self.transfer_rows,
                "rejected": self.rejected, "subjects": self.subject_rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunLog:
        return cls(list(data["train"]), list(data["eval"]), list(data["transfer"]), list(data.get("rejected", [])),
                   list(data.get("subjects", [])))


class Coordinator:
    """Runs one federated job of `cfg.strategy` over the nodes of `grid`."""

    def __init__(self, cfg: DictConfig, grid: Grid, quiet: bool = False, overrides: list[str] | None = None,
                 label: str | None = None) -> None:
        self.cfg = cfg
        # Hydra overrides on top of the run-config that the sites must apply too (compare arms).
        self.overrides = json.dumps(list(overrides or []))
        self.label = label
        self.grid = grid
        self.quiet = quiet
        self.strategy: Strategy = build_strategy(cfg.strategy)
        self.sites = site_list(cfg)
        self.rounds = int(cfg.federation.rounds)
        self.steps = int(cfg.federation.local_steps)
        if self.rounds < 0 or self.steps < 1:
            raise PetiteError(f"federation.rounds must be ≥ 0 and federation.local_steps ≥ 1, "
                              f"got {self.rounds} and {self.steps}")
        self.min_sites = int(cfg.federation.min_sites or len(self.sites))
        self.protection = protection_from_config(cfg)
        check_combination(self.protection, self.strategy.name, bool(self.strategy.rule.share), len(self.sites))
        self.ledger = PrivacyLedger(self.protection, len(self.sites)) if self.protection.dp != "off" else None
        self.transport = check_transport(cfg.federation.transport)
        if self.transport != "float32" and self.protection.legacy_messages:
            raise ConfigError(f"federation.transport={self.transport} applies to plain rounds; SecAgg+ and "
                              "client-side DP clipping send Flower's own FitIns/FitRes (SecAgg+ quantizes itself): "
                              "use federation.transport=float32 with them")
        self.federated = self.strategy.federated_rounds(self.rounds)  # later rounds: local fine-tuning only
        if self.federated < self.rounds and (self.protection.secagg or self.protection.dp != "off"):
            raise ConfigError(f"strategy {self.strategy.name} ends with local rounds that send nothing; SecAgg+ and "
                              "DP protect FedAvg rounds: use strategy=fedavg with them")
        self.timeout = float(cfg.federation.timeout)
        self.log = RunLog()
        self.round_rows: list[dict[str, Any]] = []
        self.phases: dict[str, float] = {}  # seconds of this start of the run, per phase

    def say(self, text: str) -> None:
        if not self.quiet:
            prefix = f"server · {self.label} · " if self.label else "server · "
            console.print(prefix + text, markup=False, highlight=False)

    # -- messaging ------------------------------------------------------------------
    def exchange(self, contents: Mapping[int, RecordDict], message_type: str, group: str
                 ) -> tuple[dict[int, RecordDict], dict[int, str]]:
        """Send one message per node, collect replies: ({node: content}, {node: error})."""
        messages = []
        for n, c in contents.items():
            c = RecordDict(dict(c.items()))  # a shallow copy per node, with the run's overrides
            key = "fitins.config" if "fitins.config" in c.config_records else CONFIG
            config = ConfigRecord(dict(c.config_records[key])) if key in c.config_records else ConfigRecord()
            config["overrides"] = self.overrides
            c[key] = config
            messages.append(Message(content=c, dst_node_id=n, message_type=message_type,
                                    group_id=f"{self.label}/{group}" if self.label else group))
        replies, errors = {}, {}
        received = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        # The SuperLink answers for a node it has lost (Flower's NODE_UNAVAILABLE) in its own
        # name (src_node_id 1): such a reply is matched to its node by the message it answers.
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        for reply in received:
            node = reply.metadata.src_node_id
            if node not in contents:
                node = asked.get(reply.metadata.reply_to_message_id, node)
            if node not in contents:
                self.say(f"a reply from node {node}, which was not asked, is ignored")
                continue
            if reply.has_error():
                errors[node] = reply.error.reason or f"error code {reply.error.code}"
            else:
                replies[node] = reply.content
        for node in contents:
            if node not in replies and node not in errors:
                errors[node] = f"no reply within federation.timeout={self.timeout:g} s"
        return replies, errors

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + float(self.cfg.federation.wait_for_sites)
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= len(self.sites) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if len(nodes) < self.min_sites:
            raise PetiteError(f"only {len(nodes)} site(s) connected within federation.wait_for_sites="
                              f"{self.cfg.federation.wait_for_sites} s; {self.min_sites} needed (federation.min_sites)")
        return nodes

    def hello(self) -> dict[int, SiteInfo]:
        nodes = self._wait_for_nodes()
        replies, errors = self.exchange({n: RecordDict() for n in nodes}, HELLO, "hello")
        infos: dict[int, SiteInfo] = {}
        for node, content in replies.items():
            c = content.config_records[CONFIG]
            site = str(c["site"])
            if site in {i.site for i in infos.values()}:
                errors[node] = f"a second node claims site '{site}'"
                continue
            if site not in self.sites:
                errors[node] = f"site '{site}' is not in federation.sites {self.sites}"
                continue
            held = [h for h in str(c["held"]).split(",") if h]
            infos[node] = SiteInfo(node, site, int(c["num_examples"]), held, str(c["device"]))
        for node, why in errors.items():
            self.say(f"node {node} left out: {why}")
        if len(infos) < self.min_sites:
            raise PetiteError(f"{len(infos)} site(s) ready, {self.min_sites} needed: "
                              + "; ".join(f"node {n}: {w}" for n, w in errors.items()))
        self.say("sites: " + ", ".join(f"{i.site} ({i.num_examples} training scans, {i.device})"
                                       for i in sorted(infos.values(), key=lambda i: i.site)))
        return infos

    def distribute(self, infos: dict[int, SiteInfo], backbone_path: Path) -> tuple[Backbone, dict[str, Any]]:
        """Send the frozen backbone to every site that does not hold its hash; (backbone, metadata)."""
        model, meta = load_backbone(backbone_path)
        need = [n for n, i in infos.items() if meta["sha256"] not in i.held]
        sent: dict[int, int] = {}
        begin = time.perf_counter()
        content = RecordDict({ARRAYS: ArrayRecord(model.state_dict()),
                              CONFIG: ConfigRecord({"meta": json.dumps(meta)})})
        size = self.backbone_payload = record_bytes(content)
        if need:
            self.say(f"sending backbone {meta['sha256'][:12]}… ({size / 2**20:.1f} MiB) to "
                     + ", ".join(infos[n].site for n in need))
            replies, errors = self.exchange({n: content for n in need}, BACKBONE, "backbone")
            for node, why in errors.items():
                self.say(f"site {infos[node].site} did not take the backbone: {why}")
                infos.pop(node)
            sent = {n: size for n in replies}
            self.say(f"backbone delivered in {time.perf_counter() - begin:.1f} s")
        seconds = time.perf_counter() - begin
        # Kept aside: a resumed run restores its log from the checkpoint, then adds these.
        self.backbone_rows = [{"round": 0, "site": info.site, "what": "backbone", "bytes_down": sent.get(node, 0),
                               "bytes_up": 0, "seconds": round(seconds, 2) if node in sent else 0.0}
                              for node, info in infos.items()]
        if len(infos) < self.min_sites:
            raise PetiteError(f"only {len(infos)} site(s) hold the backbone, {self.min_sites} needed")
        return model, meta

    # -- checkpoint -----------------------------------------------------------------------
    def _save_checkpoint(self, path: Path, rnd: int, global_tensors: dict[str, torch.Tensor], sha: str) -> None:
        payload = {"round": rnd, "global": global_tensors, "rng": torch.get_rng_state(), "backbone_sha256": sha,
                   "strategy": OmegaConf.to_container(self.cfg.strategy, resolve=True), "log": self.log.to_dict(),
                   "privacy": self.ledger.events if self.ledger else [], "version": __version__}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def _load_checkpoint(self, path: Path, sha: str, names: list[str]) -> tuple[int, dict[str, torch.Tensor]]:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if payload["backbone_sha256"] != sha or sorted(payload["global"]) != sorted(names):
            raise PetiteError(f"{path}: checkpoint of another backbone or PEFT spec; use another run folder "
                              "or federation.resume=false")
        torch.set_rng_state(payload["rng"])
        self.log = RunLog.from_dict(payload["log"])
        if self.ledger is not None:
            self.ledger = PrivacyLedger(self.protection, len(self.sites), payload.get("privacy", []))
        return int(payload["round"]), payload["global"]

    # -- the run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        backbone_path = backbone_for(cfg, quiet=self.quiet)
        clock = time.perf_counter()
        infos = self.hello()
        self.phases["hello"] = time.perf_counter() - clock
        model, meta = self.distribute(infos, backbone_path)  # loaded (and hash-checked) once
        self.phases["backbone"] = time.perf_counter() - clock - self.phases["hello"]
        sha = meta["sha256"]
        run_name = run_name_for(cfg, sha)
        run_dir = default_run_dir(cfg, run_name)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg))

        torch.manual_seed(int(cfg.seed))  # the sites initialise the same way
        state = apply_peft(model, spec_from_config(cfg.peft, model))
        init = adapter_state_dict(model, state)
        if not state.names and self.rounds:
            raise PetiteError(f"peft={cfg.peft.name} trains nothing; evaluate the backbone with federation.rounds=0")
        shared, personal = self.strategy.split(state.trainable)
        if self.strategy.rule.share and not shared and self.rounds:
            raise ConfigError(f"strategy {self.strategy.name} shares {', '.join(map(str, self.strategy.rule.share))}, "
                              f"which peft {state.spec.label} does not train: nothing would be averaged")
        global_tensors = {n: init[n] for n in shared}
        self.say(f"run {run_name}: {self.strategy.describe()}; {len(shared)} shared / {len(personal)} personal "
                 f"tensors; {self.rounds} rounds × {self.steps} local steps; protection: "
                 f"{self.protection.describe()} → {run_dir}")

        checkpoint = run_dir / "checkpoint.pt"
        start = 0
        if checkpoint.is_file() and bool(cfg.federation.resume):
            start, global_tensors = self._load_checkpoint(checkpoint, sha, shared)
            self.say(f"resuming after round {start}")
        session = 1 + max((int(r.get("session", 1)) for r in self.log.transfer_rows), default=0)
        self.backbone_rows = [{**r, "session": session} for r in self.backbone_rows]
        self.log.transfer_rows.extend(self.backbone_rows)  # what this start of the run received
        by_site = {i.site: i for i in infos.values()}
        every = max(1, int(cfg.federation.eval_every))
        for rnd in range(start + 1, self.rounds + 1):
            begin = time.perf_counter()
            validate = (rnd - 1) % every == 0
            config = {"run": run_name, "round": rnd, "rounds": self.rounds, "steps": self.steps, "sha256": sha,
                      "validate": validate, "weight": "uniform" if self.protection.uniform_weights else "examples"}
            # After the federated rounds: the first local round still receives the last global.
            collects = rnd <= self.federated
            sent = global_tensors if rnd <= self.federated + 1 else {}
            if self.protection.secagg:
                accepted, errors, average = self._secure_round(rnd, infos, global_tensors, config, sha)
            else:
                accepted, errors = self._plain_round(rnd, infos, sent, config, sha,
                                                     global_tensors if collects else {})
            for node, why in errors.items():
                self.say(f"round {rnd}: site {infos[node].site} left out: {why}")
            for node, (_, _, m) in accepted.items():
                site = infos[node].site
                self.log.train_rows.append({"round": rnd, "site": site, "train_loss": m.get("train_loss"),
                                            "seconds": m.get("seconds"), "update_norm": m.get("update_norm")})
                if validate:
                    self._eval_row(rnd - 1, site, "val", m)
            if len(accepted) < self.min_sites:
                raise PetiteError(f"round {rnd}: {len(accepted)} valid update(s), {self.min_sites} needed "
                                  f"(federation.min_sites); the last completed round ({rnd - 1}) is checkpointed")
            aggregate_begin = time.perf_counter()
            if not collects:
                average = global_tensors
            elif not self.protection.secagg:
                average = self._aggregate(rnd, global_tensors, [(u, w) for u, w, _ in accepted.values()])
            global_tensors = average
            # Timing per round for simulation/benchmark.py (under SecAgg+ the sum is inside the round)
            self.round_rows.append({"round": rnd, "sites": len(accepted), "seconds": time.perf_counter() - begin,
                                    "aggregate_seconds": None if self.protection.secagg
                                    else time.perf_counter() - aggregate_begin})
            self._save_checkpoint(checkpoint, rnd, global_tensors, sha)
            self._write(run_dir)
            spent = self.ledger.spent() if self.ledger else None
            self.say(f"round {rnd}/{self.rounds} done in {time.perf_counter() - begin:.0f} s"
                     + (f"; privacy spent ε={spent['epsilon']:.3g} at δ={spent['delta']:g}" if spent else "")
                     + (self._val_line(rnd - 1) if validate else ""))

        self.phases["rounds"] = sum(r["seconds"] for r in self.round_rows)
        clock = time.perf_counter()
        # Final model of every site: validation (round R) and test.
        content = RecordDict({ARRAYS: to_record(global_tensors, self.transport), CONFIG: ConfigRecord({
            "run": run_name, "round": self.rounds, "rounds": self.rounds, "sha256": sha, "splits": "val,test",
            "transport": self.transport})})
        replies, errors = self.exchange({n: content for n in infos}, EVALUATE, "final")
        adapters = {}
        for node, reply in replies.items():
            site = infos[node].site
            read = read_final_metrics(dict(reply.metric_records.get(METRICS) or {}), ("val", "test"))
            if isinstance(read, str):
                errors[node] = f"final evaluation refused: {read}"
                self.log.rejected.append({"round": self.rounds, "site": site, "reason": errors[node]})
                continue
            means, subjects = read
            self.log.eval_rows = [r for r in self.log.eval_rows
                                  if not (r["site"] == site and r["round"] == self.rounds)]
            self.log.eval_rows += [{"round": self.rounds, "site": site, "split": split, **row}
                                   for split, row in means.items()]
            self.log.subject_rows = [r for r in self.log.subject_rows if r["site"] != site]
            self.log.subject_rows += [{"site": site, "split": "test", "position": i, **row}
                                      for i, row in enumerate(subjects)]
            config = reply.config_records.get(CONFIG)
            adapters[site] = str(config["adapter"]) if config is not None and "adapter" in config else None
        for node, why in errors.items():
            self.say(f"final evaluation: site {infos[node].site} left out: {why}")
        if global_tensors:
            save_adapter(run_dir / "global-adapter.safetensors", global_tensors, state.spec.to_dict(), meta,
                         extra={"run": run_name, "strategy": self.strategy.name, "rounds": self.rounds,
                                "shared_only": bool(personal),
                                "note": "the shared tensors only; each site holds its personal ones" if personal
                                else "the whole global adapter"})
        self.phases["final_evaluation"] = time.perf_counter() - clock
        summary = self._summary(run_name, run_dir, meta, state, shared, by_site, adapters)
        self._write(run_dir, summary)
        self._print_summary(summary)
        return summary

    # -- one round ------------------------------------------------------------------------
    def _plain_round(self, rnd: int, infos: Mapping[int, SiteInfo], current: dict[str, torch.Tensor],
                     config: dict[str, Any], sha: str, expected: dict[str, torch.Tensor]
                     ) -> tuple[dict[int, tuple], dict[int, str]]:
        """Send `current`, check every upload against `expected` (the global shared tensors, or
        nothing in a local round): ({node: (upload, weight, metrics)}, errors)."""
        p, names = self.protection, sorted(current)
        if p.legacy_messages:  # client-side DP clipping: Flower's fixedclipping_mod reads FitIns/FitRes
            ins = FitIns(to_parameters(current, names), {**config, "names": json.dumps(names),
                                                          KEY_CLIPPING_NORM: p.clipping_norm})
            content = compat.fitins_to_recorddict(ins, keep_input=True)
        else:
            content = RecordDict({ARRAYS: to_record(current, self.transport),
                                  CONFIG: ConfigRecord({**config, "transport": self.transport})})
        down = record_bytes(content)
        replies, errors = self.exchange({n: content for n in infos}, TRAIN, f"round-{rnd}")
        accepted = {}
        for node, reply in replies.items():
            try:
                if is_fitres(reply):
                    upload, weight, m = read_fitres(reply, names)
                    made_on = str(m.get("backbone_sha256"))
                else:
                    upload = from_record(reply.array_records.get(ARRAYS), self.transport)
                    m = dict(reply.metric_records[METRICS]) if METRICS in reply.metric_records else {}
                    weight = m.get("num-examples")
                    c = reply.config_records.get(CONFIG)
                    made_on = str(c.get("backbone_sha256")) if c is not None else "none"
            except (PetiteError, KeyError, ValueError) as exc:
                problem = f"unreadable reply ({exc})"
            else:
                problem = self._check(upload, weight, made_on, expected, sha)
            # client mode: the site's fixedclipping_mod must have bounded the norm _check just measured
            if not problem and p.dp == "client" and self.last_norm > p.clipping_norm * (1 + 1e-3):
                problem = (f"update norm {self.last_norm:.4g} is not clipped to "
                           f"federation.dp.clipping_norm={p.clipping_norm:g}")
            if problem:
                errors[node] = problem
                self.log.rejected.append({"round": rnd, "site": infos[node].site, "reason": problem})
                continue
            accepted[node] = (upload, int(weight), {**m, "update_norm": self.last_norm})
            self.log.transfer_rows.append({"round": rnd, "site": infos[node].site, "what": "peft",
                                           "bytes_down": down, "bytes_up": record_bytes(reply)})
        return accepted, errors

    def _secure_round(self, rnd: int, infos: Mapping[int, SiteInfo], current: dict[str, torch.Tensor],
                      config: dict[str, Any], sha: str) -> tuple[dict[int, tuple], dict[int, str], dict]:
        """A round whose shared tensors only the SecAgg+ sum reveals; the sum is checked instead."""
        p, names = self.protection, sorted(current)
        config = {**config, "overrides": self.overrides, "secagg_clipping_range": p.clipping_range}
        if p.dp == "client":
            config[KEY_CLIPPING_NORM] = p.clipping_norm
        weights = [1 if p.uniform_weights else i.num_examples for i in infos.values()]
        result = secure_round(self.grid, list(infos), names, current, config, p, float(max(weights)), rnd,
                              self.timeout)
        errors: dict[int, str] = {}
        accepted = {}
        for node in infos:
            if node not in result.sites:
                errors[node] = "dropped out of SecAgg+ (its masked upload is not in the sum)"
                continue
            weight, m = result.sites[node]
            if str(m.get("backbone_sha256")) != sha:
                errors[node] = f"update made on backbone {str(m.get('backbone_sha256'))[:12]}…, not on {sha[:12]}…"
            accepted[node] = (None, weight, m)
            self.log.transfer_rows.append({"round": rnd, "site": infos[node].site, "what": "peft-secagg",
                                           "bytes_down": result.bytes_down.get(node, 0),
                                           "bytes_up": result.bytes_up.get(node, 0)})
        if result.failures:
            self.say(f"round {rnd}: SecAgg+ reported {len(result.failures)} failure(s): {result.failures[:2]}")
        if result.average is None or any(node in errors for node in accepted):
            # One masked upload made on another backbone poisons the sum: nothing of this round is used.
            why = "SecAgg+ could not unmask the sum" if result.average is None else "an update in the sum is invalid"
            self.log.rejected.append({"round": rnd, "site": "(sum)", "reason": why})
            raise PetiteError(f"round {rnd}: {why}; the last completed round ({rnd - 1}) is checkpointed")
        problem = self._check(result.average, 1, sha, current, sha)
        if problem:
            self.log.rejected.append({"round": rnd, "site": "(sum)", "reason": problem})
            raise PetiteError(f"round {rnd}: the SecAgg+ average is refused ({problem}); the last completed "
                              f"round ({rnd - 1}) is checkpointed")
        average = result.average
        if p.dp == "client":
            # The sum hides the uploads; the average stands for each of the n sites (a plain mean of n
            # copies is itself), so Flower's wrapper calibrates the noise for n.
            average = private_mean(p, current, [average] * len(accepted), self._noise_seed(rnd))
            self.ledger.add(len(accepted))
        return accepted, errors, average

    def _aggregate(self, rnd: int, current: dict[str, torch.Tensor],
                   updates: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
        if self.protection.dp == "off":
            return self.strategy.aggregate(current, updates)
        out = private_mean(self.protection, current, [u for u, _ in updates], self._noise_seed(rnd))
        self.ledger.add(len(updates))
        return out

    def _noise_seed(self, rnd: int) -> int:
        return round_seed(int(self.cfg.seed), "(server)", rnd, "dp-noise")

    # -- helpers -------------------------------------------------------------------------
    def max_update_norm(self, n: int) -> float:
        """The L2 norm beyond which an update is implausible for an honest site.

        `auto`: an Adam-family step moves each parameter by at most about the learning rate,
        so `local_steps` steps move n parameters by at most lr·steps·√n; ten times that.
        """
        bound = self.cfg.federation.robust.max_update_norm
        if bound is None or str(bound) == "auto":
            return 10.0 * float(self.cfg.peft.lr) * self.steps * max(1, n) ** 0.5
        return float(bound)

    def _check(self, upload: Mapping[str, torch.Tensor], weight: Any, made_on: str,
               expected: Mapping[str, torch.Tensor], sha: str) -> str | None:
        """Why an upload cannot be averaged, or None (checked before any averaging)."""
        if not isinstance(weight, int) or isinstance(weight, bool) or weight <= 0:
            return f"reply with an invalid num-examples ({weight!r})"
        if made_on != sha:
            return f"update made on backbone {made_on[:12]}…, not on {sha[:12]}…"
        if set(upload) != set(expected):
            diff = sorted(set(upload) ^ set(expected))[:3]
            return f"tensor names differ from the shared set ({diff})"
        sq = 0.0
        for name, t in upload.items():
            ref = expected[name]
            if tuple(t.shape) != tuple(ref.shape):
                return f"tensor '{name}' has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            if t.dtype != ref.dtype:
                return f"tensor '{name}' has dtype {t.dtype}, expected {ref.dtype}"
            if not torch.isfinite(t).all():
                return f"tensor '{name}' has NaN or Inf values"
            sq += float(((t.double() - ref.double()) ** 2).sum())
        numel = sum(t.numel() for t in expected.values())
        bound = self.max_update_norm(numel)
        self.last_norm = sq**0.5  # logged with the round (what a DP clipping norm must be set against)
        if sq**0.5 > bound:
            return f"update norm {sq**0.5:.4g} exceeds federation.robust.max_update_norm ({bound:.4g})"
        return None

    def _eval_row(self, rnd: int, site: str, split: str, m: Mapping[str, Any]) -> None:
        if f"{split}_psnr" not in m:
            return
        self.log.eval_rows.append({"round": rnd, "site": site, "split": split,
                                   "subjects": int(m.get(f"{split}_subjects", 1)),
                                   **{k: float(m[f"{split}_{k}"]) for k in METRIC_NAMES if f"{split}_{k}" in m}})

    def weighted_mean(self, rnd: int, split: str) -> dict[str, float]:
        rows = [r for r in self.log.eval_rows if r["round"] == rnd and r["split"] == split]
        total = sum(r["subjects"] for r in rows)
        if not total:
            return {}
        return {k: sum(r[k] * r["subjects"] for r in rows) / total for k in METRIC_NAMES if all(k in r for r in rows)}

    def _val_line(self, rnd: int) -> str:
        mean = self.weighted_mean(rnd, "val")
        if not mean:
            return ""
        sites = ", ".join(f"{r['site']} {r['psnr']:.2f}" for r in self.log.eval_rows
                          if r["round"] == rnd and r["split"] == "val")
        return (f"; val after round {rnd}: PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.4f}, "
                f"NRMSE {mean['nrmse']:.4f} (weighted mean; PSNR {sites})")

    def _summary(self, run_name, run_dir, meta, state, shared, by_site, adapters) -> dict[str, Any]:
        backbone_bytes = {r["site"]: r["bytes_down"] for r in self.backbone_rows}  # this start of the run
        peft_rows = [r for r in self.log.transfer_rows if r["what"] in ("peft", "peft-secagg")]
        backbone_size = self.backbone_payload  # the record the backbone travels in, as a PEFT update does
        sites = {}
        for site in sorted(by_site):
            test = next((r for r in self.log.eval_rows if r["site"] == site and r["split"] == "test"), None)
            ups = [r["bytes_up"] for r in peft_rows if r["site"] == site]
            downs = [r["bytes_down"] for r in peft_rows if r["site"] == site]
            sites[site] = {"test": test, "test_subjects": [{k: v for k, v in r.items() if k not in ("site", "split")}
                                                           for r in self.log.subject_rows if r["site"] == site],
                           "adapter": adapters.get(site), "backbone_bytes": backbone_bytes.get(site, 0),
                           "upload_bytes_per_round": max(ups) if ups else 0,
                           "download_bytes_per_round": max(downs) if downs else 0}
        up = max((s["upload_bytes_per_round"] for s in sites.values()), default=0)
        return {"run": run_name, "run_dir": str(run_dir), "strategy": self.strategy.name,
                "describe": self.strategy.describe(), "peft": state.spec.label, "rounds": self.rounds,
                "local_steps": self.steps,
                "budget": {"rounds": self.rounds, "local_steps": self.steps, "federated_rounds": self.federated,
                           "batch_size": int(self.cfg.train.batch_size),
                           "patches_per_volume": int(self.cfg.data.loader.patches_per_volume),
                           "lr": float(self.cfg.peft.lr), "seed": int(self.cfg.seed)},
                "backbone_sha256": meta["sha256"], "backbone_payload_bytes": backbone_size,
                "shared_tensors": len(shared), "trainable_tensors": len(state.names),
                "upload_bytes_per_round": up, "upload_percent_of_backbone": 100.0 * up / backbone_size,
                "test_mean": self.weighted_mean(self.rounds, "test"), "sites": sites,
                "protection": self.protection.describe(),
                "privacy": self.ledger.spent() if self.ledger else None, "rejected": self.log.rejected,
                "rounds_timing": self.round_rows, "phase_seconds": self.phases,
                "server_peak_rss_bytes": peak_rss_bytes()}

    def _write(self, run_dir: Path, summary: dict[str, Any] | None = None) -> None:
        write_csv(run_dir / "train.csv", self.log.train_rows)
        write_csv(run_dir / "metrics.csv", self.log.eval_rows)
        if self.log.subject_rows:
            write_csv(run_dir / "subjects.csv", self.log.subject_rows)
        write_csv(run_dir / "transfer.csv", self.log.transfer_rows)
        write_json(run_dir / "log.json", self.log.to_dict())
        if summary is not None:
            write_json(run_dir / "summary.json", summary)

    def _print_summary(self, summary: dict[str, Any]) -> None:
        if self.quiet:
            return
        from rich.table import Table

        table = Table(title=f"{summary['strategy']} · {summary['peft']} · {summary['rounds']} rounds "
                            f"× {summary['local_steps']} steps (test split)")
        for col in ("site", "PSNR dB", "SSIM", "NRMSE", "upload/round", "backbone received"):
            table.add_column(col, justify="right" if col != "site" else "left")
        for site, s in summary["sites"].items():
            t = s["test"] or {}
            table.add_row(site, f"{t.get('psnr', float('nan')):.2f}", f"{t.get('ssim', float('nan')):.4f}",
                          f"{t.get('nrmse', float('nan')):.4f}", human_bytes(s["upload_bytes_per_round"]),
                          human_bytes(s["backbone_bytes"]))
        mean = summary["test_mean"]
        if mean:
            table.add_row("mean", f"{mean['psnr']:.2f}", f"{mean['ssim']:.4f}", f"{mean['nrmse']:.4f}", "", "")
        console.print(table)
        console.print(f"upload per site per round: {summary['upload_percent_of_backbone']:.3f} % of the backbone; "
                      f"results in {summary['run_dir']}")

