"""SecAgg+ for the shared tensors, through Flower's own protocol (no cryptography of ours).

In flwr 1.42 SecAgg+ exists only on the legacy path: the server's `SecAggPlusWorkflow`
runs inside a `LegacyContext` and asks a legacy `Strategy` for `FitIns`, and the site's
`secaggplus_mod` masks what the train handler returns as a `FitRes`
(../shared/FLOWER.md). This module is the bridge: the server half runs one round's
aggregation through the workflow; the site half converts between petite-fl's tensors
and the FitIns/FitRes records, and applies Flower's mods only to messages that ask for
them. Flower's `fixedclipping_mod` (client-side DP clipping) reads the same layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
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
from petite_fl.federation.protection import Protection
from petite_fl.federation.records import content_bytes

FITINS, FITINS_CONFIG, FITRES = "fitins.parameters", "fitins.config", "fitres.parameters"


# -- the layout both sides agree on ---------------------------------------------------------


def to_parameters(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> Parameters:
    """Legacy Parameters are an unnamed list: the order is the sorted shared names, sent alongside."""
    return ndarrays_to_parameters([tensors[n].detach().cpu().numpy() for n in names])


def from_parameters(parameters: Parameters, names: Sequence[str], like: Mapping[str, torch.Tensor] | None = None,
                    ) -> dict[str, torch.Tensor]:
    arrays = parameters_to_ndarrays(parameters)
    if len(arrays) != len(names):
        raise PetiteError(f"{len(arrays)} arrays for {len(names)} shared tensor names")
    out = {}
    for n, a in zip(names, arrays, strict=True):
        t = torch.from_numpy(np.array(a, copy=True))
        out[n] = t.to(like[n].dtype) if like is not None else t
    return out


def is_fitins(content: RecordDict) -> bool:
    return FITINS in content.array_records


def is_fitres(content: RecordDict) -> bool:
    return FITRES in content.array_records


def read_fitins(content: RecordDict) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(train config, global shared tensors) of a legacy-layout train message."""
    ins = compat.recorddict_to_fitins(content, keep_input=True)
    config = dict(ins.config)
    return config, from_parameters(ins.parameters, json.loads(str(config["names"])))


def fitres_content(upload: Mapping[str, torch.Tensor], names: Sequence[str], weight: int,
                   metrics: Mapping[str, Any], clipping_range: float | None) -> RecordDict:
    """The site's reply as a FitRes: what SecAgg+ masks and fixedclipping_mod clips."""
    if clipping_range is not None:
        for n in names:
            peak = float(upload[n].abs().max()) if upload[n].numel() else 0.0
            if peak > clipping_range:
                raise PetiteError(f"shared tensor '{n}' has a value of magnitude {peak:.3g}, beyond "
                                  f"federation.secagg.clipping_range={clipping_range:g}: SecAgg+ would clip it "
                                  "silently; raise the range")
    res = FitRes(Status(Code.OK, "ok"), to_parameters(upload, names), int(weight), dict(metrics))
    return compat.fitres_to_recorddict(res, keep_input=True)


def read_fitres(content: RecordDict, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """(upload, weight, metrics) of a legacy-layout reply that was not masked (DP without SecAgg+);
    the upload keeps the dtype it came in, for the server's checks to judge."""
    res = compat.recorddict_to_fitres(content, keep_input=True)
    return from_parameters(res.parameters, names), int(res.num_examples), dict(res.metrics)


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
    config = msg.content.config_records.get(FITINS_CONFIG)
    if msg.metadata.message_type != "train" or config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, ctxt)
    return fixedclipping_mod(msg, ctxt, call_next)


#: Outermost first: SecAgg+ masks what clipping has already bounded.
TRAIN_MODS = [secagg_when_asked, clip_when_asked]


# -- server half ---------------------------------------------------------------------------------


class CountingGrid(Grid):
    """A Grid that counts the bytes each node receives and sends (the protocol's real cost)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.down: dict[int, int] = {}
        self.up: dict[int, int] = {}

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
        return replies

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


def secure_round(grid: Grid, nodes: Sequence[int], names: Sequence[str], current: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any], protection: Protection, max_weight: float, rnd: int,
                 timeout: float | None) -> SecureRound:
    """One training round whose shared tensors are summed under SecAgg+; returns the weighted mean."""
    parameters = to_parameters(current, names)
    fitins = FitIns(parameters, {**config, "names": json.dumps(list(names))})
    counting = CountingGrid(grid)
    collect = _Collect({n: fitins for n in nodes}, counting)
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=collect)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, True)
    workflow = SecAggPlusWorkflow(protection.num_shares, protection.reconstruction_threshold,
                                  max_weight=max_weight, clipping_range=protection.clipping_range,
                                  quantization_range=protection.quantization_range, timeout=timeout)
    workflow(counting, context)
    average = from_parameters(collect.average, names, current) if collect.average is not None else None
    sites = {proxy.node_id: (int(res.num_examples), dict(res.metrics)) for proxy, res in collect.results}
    failures = [getattr(f.args[0], "reason", None) or str(f) if f.args else str(f) for f in collect.failures]
    return SecureRound(average, sites, failures, counting.down, counting.up)
