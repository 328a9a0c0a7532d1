"""SecAgg+ for the shared tensors, through Flower's own protocol (no cryptography of ours).

In flwr 1.42 SecAgg+ exists only on the legacy path: the server's `SecAggPlusWorkflow`
runs inside a `LegacyContext` and asks a legacy `Strategy` for `FitIns`, and the site's
`secaggplus_mod` masks what the train handler returns as a `FitRes`. This module is the
bridge: the server half runs one round's aggregation through the workflow (the
`SecAggPlus` protection and its round driver); the site half applies Flower's mods only
to messages that ask for them (the FitIns/FitRes layout itself is `messages.TrainIns` /
`TrainRes`'s). Flower's `fixedclipping_mod` (client-side DP clipping) reads the same layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import FitIns, FitRes, Parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from petite_fl.errors import PetiteError
from petite_fl.federation.fields import Unreadable, number_metrics
from petite_fl.federation.flower import codec
from petite_fl.federation.flower.records import content_bytes, from_parameters
from petite_fl.federation.messages import TrainIns
from petite_fl.federation.server.checks import check_update
from petite_fl.federation.server.protections import MIN_SECAGG_SITES, Protected, Protection
from petite_fl.federation.server.rounds import RoundContext, RoundResult

_FITINS_CONFIG = "fitins.config"


# -- site half: Flower's mods, applied only to the messages that ask for them ------------------


class _Refused(Exception):
    pass


def secagg_when_asked(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's `secaggplus_mod` for SecAgg+ rounds; other train messages pass untouched.

    A site that refuses its round (bad data, an out-of-range value) answers with its own
    error reply instead of a traceback from inside the protocol.
    """
    if msg.metadata.message_type != "train" or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    refused: list[Message] = []

    def inner(m: Message, c: Context) -> Message:
        out = call_next(m, c)
        if out.has_error():
            refused.append(out)
            raise _Refused
        return out

    try:
        return secaggplus_mod(msg, ctxt, inner)
    except _Refused:
        return refused[0]


def clip_when_asked(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's `fixedclipping_mod` when the server asks for client-side DP clipping."""
    config = msg.content.config_records.get(_FITINS_CONFIG)
    if msg.metadata.message_type != "train" or config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    return fixedclipping_mod(msg, ctxt, call_next)


#: Outermost first: SecAgg+ masks what clipping has already bounded.
TRAIN_MODS = [secagg_when_asked, clip_when_asked]


# -- server half ---------------------------------------------------------------------------------


class CountingGrid(Grid):
    """A Grid that counts the bytes each node receives and sends (the protocol's real cost), and
    keeps out of the sum every masked upload whose declared weight is above its site's bound.

    Flower's mod multiplies a site's upload by the weight its FitRes declares before masking it; the
    FitRes travels beside the masked vector, so the bound is checked there, before the workflow adds
    the vector to the sum. Left out, the site counts as dropped out: its masks are removed with its
    neighbours' shares, and the sum holds only the others.
    """

    def __init__(self, grid: Grid, bounds: Mapping[int, int] | None = None) -> None:
        self.grid = grid
        self.bounds = dict(bounds or {})
        self.down: dict[int, int] = {}
        self.up: dict[int, int] = {}
        self.refused: dict[int, str] = {}  # node → why its masked upload was kept out of the sum

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        for m in messages:
            n = m.metadata.dst_node_id
            self.down[n] = self.down.get(n, 0) + content_bytes(m.content)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            if not r.has_error():
                n = r.metadata.src_node_id
                self.up[n] = self.up.get(n, 0) + content_bytes(r.content)
        return [r for r in replies if not self._over_bound(r)]

    def _over_bound(self, reply: Message) -> bool:
        """Whether `reply` is a masked upload weighted above its site's bound (then it is recorded)."""
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS) if not reply.has_error() else None
        node = reply.metadata.src_node_id
        if configs is None or Key.MASKED_PARAMETERS not in configs or node not in self.bounds:
            return False
        try:
            weight = compat.recorddict_to_fitres(reply.content, keep_input=True).num_examples
        except Exception as exc:  # a reply that is no FitRes declares no weight we could bound
            self.refused[node] = f"its masked upload declares no readable weight ({type(exc).__name__})"
            return True
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= self.bounds[node]:
            self.refused[node] = (f"its masked upload is weighted {weight!r}, above its bound "
                                  f"{self.bounds[node]} (kept out of the SecAgg+ sum)")
            return True
        return False

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):
        return self.grid.run


@dataclass
class SecureRound:
    """What one SecAgg+ round gave the server: the average, and per site only its metrics."""

    average: dict[str, torch.Tensor] | None
    sites: dict[int, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # node → (weight, metrics)
    failures: list[str] = field(default_factory=list)
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # node → why its upload was kept out of the sum


class _Collect(LegacyStrategy):
    """The legacy Strategy the workflow calls: hands out our FitIns, keeps the unmasked average.

    Hand-written because petite-fl aggregates (and checks) the average itself; Flower's
    legacy FedAvg would re-average the identical parameters it is given.
    """

    def __init__(self, fitins: Mapping[int, FitIns], grid: Grid) -> None:
        self.fitins, self.grid = dict(fitins), grid
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list[Any] = []
        self.average: Parameters | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager
                      ) -> list[tuple[ClientProxy, FitIns]]:
        return [(GridClientProxy(n, self.grid, 0), ins) for n, ins in self.fitins.items()]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
                      ) -> tuple[Parameters | None, dict[str, Any]]:
        self.results, self.failures = list(results), list(failures)
        self.average = results[0][1].parameters if results else None  # the workflow set each to the average
        return self.average, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def secure_round(grid: Grid, instructions: Mapping[int, TrainIns], protection: Protection,
                 bounds: Mapping[int, int], timeout: float | None) -> SecureRound:
    """One training round whose shared tensors are summed under SecAgg+; returns the weighted mean.

    `bounds`: the most each node weighs; the largest is Flower's `max_weight`, and a masked upload
    weighted above its node's bound never enters the sum."""
    ins = next(iter(instructions.values()))
    fitins = {n: codec.fitins(i) for n, i in instructions.items()}
    counting = CountingGrid(grid, bounds)
    collect = _Collect(fitins, counting)
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=collect)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: ins.round})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        next(iter(fitins.values())).parameters, True)
    workflow = SecAggPlusWorkflow(protection.num_shares, protection.reconstruction_threshold,
                                  max_weight=float(max(bounds.values())), clipping_range=protection.clipping_range,
                                  quantization_range=protection.quantization_range, timeout=timeout)
    workflow(counting, context)
    average = from_parameters(collect.average, ins.names, ins.tensors) if collect.average is not None else None
    sites = {proxy.node_id: (int(res.num_examples), dict(res.metrics)) for proxy, res in collect.results}
    failures = [getattr(f.args[0], "reason", None) or str(f) if f.args else str(f) for f in collect.failures]
    return SecureRound(average, sites, failures, counting.down, counting.up, counting.refused)


class SecAggPlus(Protected):
    """SecAgg+ around a strategy: its own round driver, and the sum's average stands for every site."""

    def __init__(self, inner: Any, protection: Protection, grid: Grid) -> None:
        super().__init__(inner)
        self.protection, self.grid = protection, grid

    def ins_fields(self) -> dict[str, Any]:
        return {**super().ins_fields(), "secagg_range": self.protection.clipping_range}

    def aggregate(self, current, updates):
        return dict(updates[0][0]) if updates else {}  # every update is the same unmasked average

    def drive(self, ctx: RoundContext, rnd: int, ins: TrainIns, expected: dict[str, torch.Tensor]) -> RoundResult:
        """A round whose shared tensors only the SecAgg+ sum reveals; the sum is checked instead."""
        if len(ctx.infos) < MIN_SECAGG_SITES:
            raise PetiteError(f"round {rnd}: SecAgg+ with only {len(ctx.infos)} site(s) taking part; at least "
                              f"{MIN_SECAGG_SITES} are needed, or each could read another's upload from the sum")
        # Each site's bound (DP's plain mean: 1) is told to it and checked before its upload enters the sum.
        bounds = {n: 1 if ins.uniform_weight else ctx.cap(n) for n in ctx.infos}
        sec = secure_round(self.grid, ctx.instructions(ins), self.protection, bounds, ctx.timeout)
        result = RoundResult(aggregated=True)
        for node, info in ctx.infos.items():
            if node not in sec.sites:
                result.errors[node] = sec.refused.get(node, "dropped out of SecAgg+ (its masked upload is not in "
                                                            "the sum)")
                if node in sec.refused:
                    result.rejected.append({"round": rnd, "site": info.site, "reason": sec.refused[node]})
                continue
            _, m = sec.sites[node]
            made_on = str(m.pop("backbone_sha256", None))
            try:
                m = number_metrics(m, f"site {info.site}'s SecAgg+ reply")
            except Unreadable as exc:
                result.errors[node] = str(exc)
            if made_on != ctx.sha:
                result.errors[node] = f"update made on backbone {made_on[:12]}…, not on {ctx.sha[:12]}…"
            result.accepted[node] = m
            result.transfer.append({"round": rnd, "site": info.site, "what": "peft-secagg",
                                    "bytes_down": sec.bytes_down.get(node, 0), "bytes_up": sec.bytes_up.get(node, 0)})
        if sec.average is not None and len(sec.sites) < MIN_SECAGG_SITES:
            # Flower's workflow unmasks whatever sum it has; a sum of two is one site's upload to the other.
            left = "; ".join(f"{ctx.infos[n].site}: {why}" for n, why in sec.refused.items())
            raise PetiteError(f"round {rnd}: the SecAgg+ sum holds the uploads of only {len(sec.sites)} site(s) "
                              f"({len(ctx.infos) - len(sec.sites)} left out{': ' + left if left else ''}); at least "
                              f"{MIN_SECAGG_SITES} are needed, so it is discarded; the last completed round "
                              f"({rnd - 1}) is checkpointed")
        if sec.failures:
            result.notes.append(f"SecAgg+ reported {len(sec.failures)} failure(s): {sec.failures[:2]}")
        if sec.average is None or any(node in result.errors for node in result.accepted):
            # One masked upload made on another backbone poisons the sum: nothing of this round is used.
            why = "SecAgg+ could not unmask the sum" if sec.average is None else "an update in the sum is invalid"
            raise PetiteError(f"round {rnd}: {why}; the last completed round ({rnd - 1}) is checkpointed")
        verdict = check_update(sec.average, 1, ctx.sha, expected, ctx.sha, ctx.bound)
        if not verdict.ok:
            raise PetiteError(f"round {rnd}: the SecAgg+ average is refused ({verdict.reason}); the last completed "
                              f"round ({rnd - 1}) is checkpointed")
        result.updates = [(sec.average, 1)] * len(result.accepted)
        return result
