"""A site's answers to the coordinator's typed instructions, whatever carries them.

The run's settings arrive once, in `Hello`: the site adds its own settings from its node
config, keeps the result in its run folder (`config.yaml`) and remembers where in its
node state, so later messages carry only the run's name and nothing is composed again.
A refusal is a `PetiteError`; the carrier turns it into one line for the coordinator, built from a
whitelist (`outgoing_errors`), never from the error's text.

Every message is checked against the site's own policy (`policy.SitePolicy`, from the node
config, never from the server) before any work: the hello's settings also against the
run-config whitelist (`runkeys`), before OmegaConf reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl.atomic import atomic_path
from petite_fl.config import expand_path
from petite_fl.console import printable
from petite_fl.errors import ConfigError, PetiteError
from petite_fl.federation.messages import (
    BackboneOffer,
    BackboneRes,
    EvaluateIns,
    EvaluateRes,
    Hello,
    HelloRes,
    TrainIns,
    TrainRes,
)
from petite_fl.federation.site.paths import run_folder
from petite_fl.federation.site.policy import SitePolicy, policy_for_node
from petite_fl.federation.site.runkeys import check_sections
from petite_fl.federation.site.worker import SiteWorker, site_for_node
from petite_fl.federation.strategies import build_strategy
from petite_fl.runconfig import site_config

_STATE_PREFIX = "run:"


def _refusal(text: str) -> PetiteError:
    """A refusal made only of what the coordinator sent and fixed text: it may read all of it."""
    return PetiteError(text, public=text)


class SiteEndpoint:
    """One node: its node config (its own settings) and the state its carrier keeps across messages."""

    def __init__(self, node_config: Mapping[str, Any], state: MutableMapping[str, Any]) -> None:
        self.node = dict(node_config)
        self.state = state

    @property
    def policy(self) -> SitePolicy:
        """This node's own policy (read per message: a bad one is a refusal, not a crash)."""
        return policy_for_node(self.node)

    def name(self) -> str:
        return str(self.node.get("site") or f"partition {self.node.get('partition-id')}")

    def answer(self, ins: Any, carried: tuple[bool, bool] | None = None) -> Any:
        """The reply to one instruction. `carried`: whether Flower ran SecAgg+ and client-side
        clipping on this train message (None when no Flower protocol carries it)."""
        if isinstance(ins, Hello):
            return self._hello(ins)
        policy, cfg = self.policy, self._config(ins.run)
        strategy = self._admit(ins, cfg, policy, carried)  # every check before any work
        worker = SiteWorker(cfg, site_for_node(cfg, self.node), self.node.get("manifest") or None, policy)
        if isinstance(ins, BackboneOffer):
            worker.receive_backbone(ins.tensors, ins.meta)
            return BackboneRes(str(ins.meta["sha256"]))
        if isinstance(ins, TrainIns):
            upload, n_train, metrics = worker.train_round(strategy, ins.run, ins.round, ins.rounds, ins.steps,
                                                          ins.sha256, ins.tensors, ins.validate,
                                                          "float32" if ins.legacy else ins.transport)
            if ins.legacy and upload and set(upload) != set(ins.names):
                raise _refusal(f"the round's message lists {len(ins.names)} shared tensors, this site shares "
                               f"{len(upload)} of them; Flower's legacy layout (SecAgg+, DP clipping) is "
                               "positional, so nothing is sent")
            # The weight the coordinator allows (it would count no more), which SecAgg+ masks with the upload.
            weight = 1 if ins.uniform_weight else min(n_train, ins.max_weight or n_train)
            return TrainRes(upload, weight, worker.backbone_sha256, policy.reported(metrics))
        if isinstance(ins, EvaluateIns):
            metrics, path = worker.finish(strategy, ins.run, ins.round, ins.sha256, ins.tensors, ins.splits)
            return EvaluateRes(metrics, worker.shared_name(path))
        raise _refusal(f"unknown instruction {printable(type(ins).__name__, 60)}")

    @staticmethod
    def _admit(ins: Any, cfg: DictConfig, policy: SitePolicy, carried: tuple[bool, bool] | None) -> Any:
        """The site's policy on the run as it is now (a site may tighten it mid-run) and on this
        message; returns the run's strategy."""
        policy.check_run(cfg)
        if isinstance(ins, BackboneOffer):
            policy.check_backbone(ins.tensors)
        strategy = build_strategy(cfg.strategy)
        if isinstance(ins, TrainIns):
            policy.check_train(ins, cfg, strategy, carried)
        if isinstance(ins, EvaluateIns):
            policy.check_splits(ins.splits)
        return strategy

    def _hello(self, ins: Hello) -> HelloRes:
        try:
            check_sections(ins.config)  # known keys, no `${…}`: before OmegaConf sees any of it
        except ConfigError as exc:  # it names only keys and values of the hello: the coordinator's own
            raise ConfigError(str(exc), public=str(exc)) from None
        policy, cfg = self.policy, site_config(ins.config, self.node)
        policy.check_run(cfg)
        worker = SiteWorker(cfg, site_for_node(cfg, self.node), self.node.get("manifest") or None, policy)
        path = worker.run_dir(ins.run) / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg))
        with worker.tracker(ins.run) as tracker:  # the site's own tracking of the run starts with its settings
            tracker.config(OmegaConf.to_container(cfg, resolve=True))
        self.state[_STATE_PREFIX + ins.run] = str(path)
        return worker.hello()

    def _config(self, run: str) -> DictConfig:
        """The run's settings as this site kept them at the hello."""
        kept = self.state.get(_STATE_PREFIX + run)
        if kept is None and self.node.get("site-root") and self.node.get("site"):  # a restarted site process
            root = expand_path(str(self.node["site-root"]))
            kept = str(run_folder(root, str(self.node["site"]), run) / "config.yaml")
        if kept is None or not Path(str(kept)).is_file():
            raise _refusal(f"no settings of run '{printable(run)}' at this site: it missed the run's hello"
                           + ("" if self.node.get("site-root") else " (and its node config names no site-root "
                              "to find them in)"))
        # The node's own settings as they are now (a site restarted with another device keeps it).
        return site_config(OmegaConf.to_container(OmegaConf.load(str(kept))), self.node)
