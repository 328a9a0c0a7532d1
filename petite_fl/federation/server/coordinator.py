"""The server half of a federated run, over any `Transport` (Flower, or in process).

The rounds are driven here rather than by a Flower strategy's `start`, because
petite-fl sends per-node content (the backbone only to sites that lack it), averages only
the shared subset of the PEFT tensors, and checks every reply itself first.

Flow: `Hello` with the run's site settings (once per run) → `BackboneOffer` to sites
without the backbone → rounds of `TrainIns` (the round driver checks every update; the
strategy, wrapped in the run's protections, averages) → `EvaluateIns` (final model on val
and test). After every round the server checkpoints atomically and rewrites its log.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from petite_fl import __version__
from petite_fl.artifacts import load_backbone, save_adapter
from petite_fl.atomic import atomic_path, private_dir
from petite_fl.config import config_hash, expand_path
from petite_fl.console import console, human_bytes, printable
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.fields import bad_name, check_transport
from petite_fl.federation.messages import BackboneOffer, EvaluateIns, Hello, HelloRes, TrainIns
from petite_fl.federation.server.checkpoint import load_checkpoint, save_checkpoint
from petite_fl.federation.server.checks import honest_update_bound, max_update_norm
from petite_fl.federation.server.drift import drift_rows, lora_a_names, tracked
from petite_fl.federation.server.evaluation import adapter_file, read_final_metrics
from petite_fl.federation.server.given import file_sha256, given_adapter
from petite_fl.federation.server.protections import MIN_SECAGG_SITES, check_combination, protection_from_config
from petite_fl.federation.server.rounds import RoundContext, group_id
from petite_fl.federation.server.runlog import RunLog, print_summary
from petite_fl.federation.server.weights import influence_for
from petite_fl.federation.strategies import build_strategy
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config
from petite_fl.profiling import peak_rss_bytes
from petite_fl.runconfig import site_list, site_sections
from petite_fl.tracking import Tracker, job_tracker
from petite_fl.training.inference import ALL_METRICS, METRICS
from petite_fl.training.jobs import backbone_for
from petite_fl.training.schedule import Schedule
from petite_fl.training.settings import check_settings
from petite_fl.training.trainer import ADAMW_BETAS

#: relative rounding of a value sent at each transport precision (unit roundoff)
ROUNDOFF = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
# Settings that do not change what a run computes, so they do not change its name.
_RUN_NEUTRAL = ("resume", "timeout", "wait_for_sites", "run_name", "site_root", "min_sites")


def run_name_for(cfg: DictConfig, backbone_sha: str) -> str:
    if cfg.federation.run_name:
        why = bad_name(str(cfg.federation.run_name))
        if why:
            raise ConfigError(f"federation.run_name: {why}")
        return str(cfg.federation.run_name)
    fed = {k: v for k, v in OmegaConf.to_container(cfg.federation, resolve=True).items() if k not in _RUN_NEUTRAL}
    given = [file_sha256(expand_path(cfg.adapter))] if cfg.get("adapter") and backbone_sha else []
    key = config_hash(__version__, cfg.strategy, cfg.peft, cfg.train, cfg.data, fed, cfg.seed, backbone_sha, *given)
    return f"{cfg.strategy.name}-{cfg.peft.name}-{key}"


def default_run_dir(cfg: DictConfig, run_name: str) -> Path:
    return expand_path(cfg.out) if cfg.out else expand_path(cfg.paths.cache) / "runs" / "federated" / run_name


def min_sites(setting: Any, n_sites: int, secagg: bool) -> int:
    """federation.min_sites: by default a majority of the sites (one site down does not stop a run),
    and never fewer than SecAgg+ needs to hide each upload in the sum."""
    floor = MIN_SECAGG_SITES if secagg else 1
    if setting is None:
        return min(n_sites, max(floor, math.ceil(n_sites / 2)))
    if isinstance(setting, bool) or not isinstance(setting, int) or not floor <= setting <= n_sites:
        raise ConfigError(f"federation.min_sites must be a whole number from {floor} to the {n_sites} sites"
                          + (" (SecAgg+ needs 3)" if secagg else "") + f", got {setting!r}")
    return setting


class Coordinator:
    """Runs one federated job of `cfg.strategy` over the sites `transport` reaches."""

    def __init__(self, cfg: DictConfig, transport: Any, quiet: bool = False, label: str | None = None) -> None:
        self.cfg, self.transport, self.quiet, self.label = cfg, transport, quiet, label
        check_settings(cfg)  # the scaling and the schedule, before any site is asked
        self.base = build_strategy(cfg.strategy)
        self.sites = site_list(cfg)  # names checked: each becomes a folder
        if cfg.federation.run_name:
            run_name_for(cfg, "")  # a bad run name is refused before any work
        self.rounds, self.steps = int(cfg.federation.rounds), int(cfg.federation.local_steps)
        if self.rounds < 0 or self.steps < 1:
            raise PetiteError(f"federation.rounds must be ≥ 0 and federation.local_steps ≥ 1, "
                              f"got {self.rounds} and {self.steps}")
        self.protection = p = protection_from_config(cfg)
        check_combination(p, self.base.name, bool(self.base.rule.share), len(self.sites))
        self.min_sites = min_sites(cfg.federation.min_sites, len(self.sites), p.secagg)
        # What each site may weigh: its claims bounded by what the operator attests (server/weights.py).
        self.influence = influence_for(cfg, self.sites, getattr(transport, "attested_sites", lambda: None)())
        self.caps: dict[int, int] = {}  # node → the most it weighs in training, from the hello on
        self.declared: dict[str, int] = {}  # site → the training scans it declared at the hello
        self.precision = check_transport(cfg.federation.transport)
        if self.precision != "float32" and p.legacy_messages:
            raise ConfigError(f"federation.transport={self.precision} applies to plain rounds; SecAgg+ and "
                              "client-side DP clipping send Flower's own FitIns/FitRes (SecAgg+ quantizes itself): "
                              "use federation.transport=float32 with them")
        self.federated = self.base.federated_rounds(self.rounds)  # later rounds: local fine-tuning only
        if self.federated < self.rounds and (p.secagg or p.dp != "off"):
            raise ConfigError(f"strategy {self.base.name} ends with local rounds that send nothing; SecAgg+ and "
                              "DP protect FedAvg rounds: use strategy=fedavg with them")
        self.timeout = float(cfg.federation.timeout)
        # The protections around the strategy and their round driver (a carrier that has none refuses now).
        self.strategy, self.driver = (transport.protect(self.base, p, len(self.sites))
                                      if transport is not None else (self.base, None))
        self.log = RunLog()
        self.round_rows: list[dict[str, Any]] = []
        self.phases: dict[str, float] = {}  # seconds of this start of the run, per phase
        self.tracker = Tracker()  # the run's, once its folder is known (`cfg.tracking`)

    def say(self, text: str) -> None:
        if not self.quiet:
            prefix = f"server · {self.label} · " if self.label else "server · "
            console.print(prefix + text, markup=False, highlight=False)

    def group(self, name: str) -> str:
        return group_id(self.label, name)

    # -- handshake and backbone --------------------------------------------------------
    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + float(self.cfg.federation.wait_for_sites)
        while True:
            nodes = sorted(self.transport.node_ids())
            if len(nodes) >= len(self.sites) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if len(nodes) < self.min_sites:
            raise PetiteError(f"only {len(nodes)} site(s) connected within federation.wait_for_sites="
                              f"{self.cfg.federation.wait_for_sites} s; {self.min_sites} needed (federation.min_sites)")
        return nodes

    def hello(self, run_name: str) -> dict[int, HelloRes]:
        """Every node gets the run's site settings; the sites that answer well take part."""
        hello = Hello(run_name, site_sections(self.cfg))
        exchange = self.transport.exchange({n: hello for n in self._wait_for_nodes()}, self.group("hello"),
                                           self.timeout)
        errors, infos = dict(exchange.errors), {}
        registered = getattr(self.transport, "registered_sites", lambda: None)()
        for node, info in exchange.replies.items():
            said = printable(info.site)  # a peer's text: escaped before it reaches a terminal or a log
            if registered is not None and registered.get(node) != info.site:
                errors[node] = (f"registered as site '{registered[node]}' but says it is '{said}'"
                                if node in registered else
                                f"says it is '{said}' but no site was registered as this node "
                                "(petite-server register --site NAME --key KEY.pub)")
            elif info.site in {i.site for i in infos.values()}:
                errors[node] = f"a second node claims site '{said}'"
            elif info.site not in self.sites:
                errors[node] = f"site '{said}' is not in federation.sites {self.sites}"
            else:
                infos[node] = info
        for node, why in errors.items():
            self.say(f"node {node} left out: {why}")
        if len(infos) < self.min_sites:
            raise PetiteError(f"{len(infos)} site(s) ready, {self.min_sites} needed: "
                              + "; ".join(f"node {n}: {w}" for n, w in errors.items()))
        ordered = sorted(infos.values(), key=lambda i: i.site)
        self.say("sites: " + ", ".join(f"{i.site} ({i.num_examples} training scans, {printable(i.device, 40)})"
                                       for i in ordered))
        self.caps = {n: self.influence.train(i.site, i.num_examples) for n, i in infos.items()}
        self.declared = {i.site: i.num_examples for i in ordered}
        self.say("training weights: " + "; ".join(self.influence.train_line(i.site, i.num_examples) for i in ordered))
        return infos

    def distribute(self, infos: dict[int, HelloRes], run_name: str, model: torch.nn.Module,
                   meta: dict[str, Any]) -> int:
        """Send the frozen backbone to every site that does not hold its hash; the record's bytes."""
        offer = BackboneOffer(run_name, model.state_dict(), meta)
        need = [n for n, i in infos.items() if meta["sha256"] not in i.held]
        begin, sent = time.perf_counter(), {}
        size = None
        if need:
            exchange = self.transport.exchange({n: offer for n in need}, self.group("backbone"), self.timeout)
            size = max(exchange.bytes_down.values(), default=0)
            self.say(f"sent backbone {meta['sha256'][:12]}… ({human_bytes(size)}) to "
                     + ", ".join(infos[n].site for n in need) + f" in {time.perf_counter() - begin:.1f} s")
            for node, why in exchange.errors.items():
                self.say(f"site {infos[node].site} did not take the backbone: {why}")
                infos.pop(node)
            sent = {n: exchange.bytes_down.get(n, 0) for n in exchange.replies}
        seconds = time.perf_counter() - begin
        # Kept aside: a resumed run restores its log from the checkpoint, then adds these.
        self.backbone_rows = [{"round": 0, "site": info.site, "what": "backbone", "bytes_down": sent.get(node, 0),
                               "bytes_up": 0, "seconds": round(seconds, 2) if node in sent else 0.0}
                              for node, info in infos.items()]
        if len(infos) < self.min_sites:
            raise PetiteError(f"only {len(infos)} site(s) hold the backbone, {self.min_sites} needed")
        return size if size is not None else self.transport.record_bytes(offer)

    # -- the run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole run; its tracker (what the coordinator received) is closed whatever happens."""
        with ExitStack() as self._stack:
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        path = backbone_for(cfg, quiet=self.quiet)
        clock = time.perf_counter()
        model, meta = load_backbone(path)  # loaded (and hash-checked) once
        loading = time.perf_counter() - clock
        sha = meta["sha256"]
        run_name = run_name_for(cfg, sha)
        run_dir = default_run_dir(cfg, run_name)
        private_dir(run_dir)  # the server's state of the run (checkpoint, adapters): 0700, files 0600
        with atomic_path(run_dir / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg))
        self.tracker = self._stack.enter_context(job_tracker(cfg, run_dir, "federated", run_name, "coordinator"))
        clock = time.perf_counter()
        infos = self.hello(run_name)
        self.phases["hello"] = time.perf_counter() - clock
        self.backbone_payload = self.distribute(infos, run_name, model, meta)
        self.phases["backbone"] = time.perf_counter() - clock - self.phases["hello"] + loading
        self.tracker.scalars({f"backbone_bytes/{r['site']}": r["bytes_down"] for r in self.backbone_rows
                              if r["bytes_down"]}, 0)

        torch.manual_seed(int(cfg.seed))  # the sites initialise the same way
        state = apply_peft(model, spec_from_config(cfg.peft, model))
        init = adapter_state_dict(model, state)
        self.init_a = {n: init[n] for n in lora_a_names(init)}  # A₀: how far shared A moves (drift.py)
        if not state.names and self.rounds:
            raise PetiteError(f"peft={cfg.peft.name} trains nothing; evaluate the backbone with federation.rounds=0")
        shared, personal = self.strategy.split(state.trainable)
        if self.strategy.rule.share and not shared and self.rounds:
            raise ConfigError(f"strategy {self.strategy.name} shares {', '.join(map(str, self.strategy.rule.share))}, "
                              f"which peft {state.spec.label} does not train: nothing would be averaged")
        global_tensors = {n: init[n] for n in shared}
        if cfg.get("adapter"):  # a given adapter, evaluated at every site without training
            global_tensors = given_adapter(expand_path(cfg.adapter), meta, state.spec, shared, self.rounds)
        self.say(f"run {run_name}: {self.strategy.describe()}; {len(shared)} shared / {len(personal)} personal "
                 f"tensors; {self.rounds} rounds × {self.steps} local steps; protection: "
                 f"{self.protection.describe()} → {run_dir}")

        checkpoint, start = run_dir / "checkpoint.pt", 0
        if checkpoint.is_file() and bool(cfg.federation.resume):
            saved = load_checkpoint(checkpoint, sha, shared)
            start, global_tensors, self.log = saved.round, saved.global_tensors, saved.log
            self.strategy.restore_privacy(saved.privacy)
            self.say(f"resuming after round {start}")
        session = 1 + max((int(r.get("session", 1)) for r in self.log.transfer_rows), default=0)
        self.backbone_rows = [{**r, "session": session} for r in self.backbone_rows]
        self.log.transfer_rows.extend(self.backbone_rows)  # what this start of the run received
        ctx = RoundContext(self.transport, infos, self.strategy, sha, 0.0, self.timeout, self.label, self.caps)
        every = max(1, int(cfg.federation.eval_every))
        for rnd in range(start + 1, self.rounds + 1):
            global_tensors = self._round(ctx, rnd, run_name, sha, global_tensors, (rnd - 1) % every == 0)
            save_checkpoint(checkpoint, rnd, global_tensors, sha, OmegaConf.to_container(cfg.strategy, resolve=True),
                            self.log, self.strategy.privacy_events())
            self.log.write(run_dir)

        self.phases["rounds"] = sum(r["seconds"] for r in self.round_rows)
        clock = time.perf_counter()
        adapters = self._final(infos, run_name, sha, global_tensors)
        if global_tensors:
            save_adapter(run_dir / "global-adapter.safetensors", global_tensors, state.spec.to_dict(), meta,
                         extra={"run": run_name, "strategy": self.strategy.name, "rounds": self.rounds,
                                "shared_only": bool(personal),
                                "note": "the shared tensors only; each site holds its personal ones" if personal
                                else "the whole global adapter"})
        self.phases["final_evaluation"] = time.perf_counter() - clock
        summary = self._summary(run_name, run_dir, sha, state, shared, {i.site for i in infos.values()}, adapters)
        self._track_final()
        self.log.write(run_dir, summary)
        if not self.quiet:
            print_summary(summary)
        return summary

    def _round(self, ctx: RoundContext, rnd: int, run_name: str, sha: str,
               global_tensors: dict[str, torch.Tensor], validate: bool) -> dict[str, torch.Tensor]:
        begin = time.perf_counter()
        # After the federated rounds: the first local round still receives the last global.
        collects = rnd <= self.federated
        sent = global_tensors if rnd <= self.federated + 1 else {}
        ctx.bound = self.update_bound(rnd, global_tensors)
        fields = {"uniform_weight": False, **self.strategy.ins_fields()}
        ins = TrainIns(run=run_name, round=rnd, rounds=self.rounds, steps=self.steps, sha256=sha, validate=validate,
                       tensors=sent, transport=self.precision, **fields)
        result = self.driver(ctx, rnd, ins, global_tensors if collects else {})
        self.log.rejected += result.rejected
        self.log.transfer_rows += result.transfer
        for note in result.notes:
            self.say(f"round {rnd}: {note}")
        for node, why in result.errors.items():
            self.say(f"round {rnd}: site {ctx.infos[node].site} left out: {why}")
        for node, m in result.accepted.items():
            site = ctx.infos[node].site
            self.log.train_rows.append({"round": rnd, "site": site, "train_loss": m.get("train_loss"),
                                        "seconds": m.get("seconds"), "update_norm": m.get("update_norm")})
            if validate:
                self.log.eval_row(rnd - 1, site, "val", m, self.influence.eval)
        if len(result.accepted) < self.min_sites:
            raise PetiteError(f"round {rnd}: {len(result.accepted)} valid update(s), {self.min_sites} needed "
                              f"(federation.min_sites); the last completed round ({rnd - 1}) is checkpointed")
        aggregate_begin = time.perf_counter()
        start = global_tensors
        if collects:
            global_tensors = self.strategy.aggregate(global_tensors, result.updates)
        # Timing per round for the overhead benchmark (under SecAgg+ the sum is inside the round)
        self.round_rows.append({"round": rnd, "sites": len(result.accepted), "seconds": time.perf_counter() - begin,
                                "aggregate_seconds": None if result.aggregated
                                else time.perf_counter() - aggregate_begin})
        if collects:  # how far the shared LoRA A moved (drift.py), outside the round's timing
            self.log.lora_a_rows += drift_rows(rnd, self.init_a, start, {ctx.infos[n].site: t for n, t
                                                                          in result.uploads.items()}, global_tensors)
            self.tracker.scalars(tracked([r for r in self.log.lora_a_rows if r["round"] == rnd]), rnd)
        self._track_round(ctx, rnd, result, validate)
        spent = self.strategy.privacy_spent()
        self.say(f"round {rnd}/{self.rounds} done in {time.perf_counter() - begin:.0f} s"
                 + (f"; privacy spent ε={spent['epsilon']:.3g} at δ={spent['delta']:g}" if spent else "")
                 + (self.log.val_line(rnd - 1) if validate else ""))
        return global_tensors

    def _track_round(self, ctx: RoundContext, rnd: int, result: Any, validate: bool) -> None:
        """What the round's replies brought, per site (see petite_fl.tracking.base for the names)."""
        per_round: dict[str, Any] = {"round/seconds": self.round_rows[-1]["seconds"],
                                     "round/rejected": len(result.rejected)}
        for node, m in result.accepted.items():
            site = ctx.infos[node].site
            per_round.update({f"train_loss/{site}": m.get("train_loss"), f"site_seconds/{site}": m.get("seconds")})
        for row in result.transfer:
            per_round.update({f"bytes_up/{row['site']}": row["bytes_up"],
                              f"bytes_down/{row['site']}": row["bytes_down"]})
        self.tracker.scalars(per_round, rnd)
        if validate:  # the model the round started from: the round before's, as metrics.csv has it
            self._track_eval(rnd - 1, "val")

    def _track_eval(self, rnd: int, split: str, prefix: str = "") -> None:
        rows = [r for r in self.log.eval_rows if r["round"] == rnd and r["split"] == split]
        values = {f"{prefix}{split}_{k}/{r['site']}": r.get(k) for r in rows for k in ALL_METRICS
                  if k in METRICS or k in r}
        values.update({f"{prefix}{split}_{k}/mean": v for k, v in self.log.weighted_mean(rnd, split).items()})
        self.tracker.scalars(values, rnd)

    def _track_final(self) -> None:
        self._track_eval(self.rounds, "val")  # the final model's validation ends the curves
        self._track_eval(self.rounds, "test", prefix="final/")

    def update_bound(self, rnd: int, global_tensors: dict[str, torch.Tensor]) -> float:
        """federation.robust.max_update_norm for round `rnd`: by default, the farthest an honest
        site's AdamW steps (this round's learning rates) can move the global it was sent."""
        cfg = self.cfg
        runs = [Schedule.from_config(cfg.train, total).factors(offset, n)
                for offset, n, total in self.strategy.upload_steps(rnd, self.steps, self.rounds)]
        p = self.protection
        honest = honest_update_bound(
            lr=float(cfg.peft.lr), runs=runs, n=sum(t.numel() for t in global_tensors.values()),
            weight_decay=float(cfg.train.weight_decay),
            global_norm=float(sum(float((t.double() ** 2).sum()) for t in global_tensors.values()) ** 0.5),
            roundoff=ROUNDOFF[self.precision], betas=ADAMW_BETAS,
            quantum=2 * 2 * p.clipping_range / p.quantization_range if p.secagg else 0.0)
        return max_update_norm(cfg.federation.robust.max_update_norm, honest)

    def _final(self, infos: dict[int, HelloRes], run_name: str, sha: str,
               global_tensors: dict[str, torch.Tensor]) -> dict[str, str | None]:
        """Final model of every site: validation (round R) and test, per test subject by position."""
        ins = EvaluateIns(run_name, self.rounds, sha, ("val", "test"), global_tensors, self.precision)
        exchange = self.transport.exchange({n: ins for n in infos}, self.group("final"), self.timeout)
        errors, adapters = dict(exchange.errors), {}
        for node, reply in exchange.replies.items():
            site = infos[node].site
            read = read_final_metrics(reply.metrics, ("val", "test"))
            if isinstance(read, str):
                errors[node] = f"final evaluation refused: {read}"
                self.log.rejected.append({"round": self.rounds, "site": site, "reason": errors[node]})
                continue
            self.log.final(self.rounds, site, *read, weigh=self.influence.eval)
            adapters[site] = adapter_file(reply.adapter, expand_path(self.cfg.federation.site_root))
        self.say("final evaluation weights in the means (declared → used): " + "; ".join(
            f"{r['site']} {r['split']} {r['subjects']} → {r['weight']}" for r in self.log.eval_rows
            if r["round"] == self.rounds and r["split"] in ("val", "test") and "weight" in r))
        for node, why in errors.items():
            self.say(f"final evaluation: site {infos[node].site} left out: {why}")
        return adapters

    def _summary(self, run_name, run_dir, sha, state, shared, sites, adapters) -> dict[str, Any]:
        backbone_bytes = {r["site"]: r["bytes_down"] for r in self.backbone_rows}  # this start of the run
        per_site = {s: self.log.site_summary(s, adapters.get(s), backbone_bytes.get(s, 0)) for s in sorted(sites)}
        up = max((s["upload_bytes_per_round"] for s in per_site.values()), default=0)
        given = expand_path(self.cfg.adapter) if self.cfg.get("adapter") else None
        return {"run": run_name, "run_dir": str(run_dir), "strategy": self.strategy.name,
                "describe": f"the given adapter {given.name}, evaluated at every site without training" if given
                else self.strategy.describe(), "peft": state.spec.label, "rounds": self.rounds,
                **({"given_adapter": {"path": str(given), "sha256": file_sha256(given)}} if given else {}),
                "local_steps": self.steps,
                "budget": {"rounds": self.rounds, "local_steps": self.steps, "federated_rounds": self.federated,
                           "batch_size": int(self.cfg.train.batch_size),
                           "patches_per_volume": int(self.cfg.data.loader.patches_per_volume),
                           "lr": float(self.cfg.peft.lr), "seed": int(self.cfg.seed),
                           "schedule": Schedule.from_config(self.cfg.train, self.rounds * self.steps).describe()},
                "backbone_sha256": sha, "backbone_payload_bytes": self.backbone_payload,
                "shared_tensors": len(shared), "trainable_tensors": len(state.names),
                "upload_bytes_per_round": up, "upload_percent_of_backbone": 100.0 * up / self.backbone_payload,
                "backbone": f"{self.cfg.model.name} {self.cfg.model.preset}",
                "test_mean": self.log.weighted_mean(self.rounds, "test"), "sites": per_site,
                "weights": self.influence.summary(self.declared),
                "protection": self.protection.describe(), "privacy": self.strategy.privacy_spent(),
                "rejected": self.log.rejected, "rounds_timing": self.round_rows, "phase_seconds": self.phases,
                "server_peak_rss_bytes": peak_rss_bytes()}
