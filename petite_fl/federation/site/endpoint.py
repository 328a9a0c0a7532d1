"""A site's answers to the coordinator's typed instructions, whatever carries them.

The run's settings arrive once, in `Hello`: the site adds its own settings from its node
config, keeps the result in its run folder (`config.yaml`) and remembers where in its
node state, so later messages carry only the run's name and nothing is composed again.
A refusal is a `PetiteError`; the carrier turns it into one line for the coordinator.

Every message is checked against the site's own policy (`policy.SitePolicy`, from the node
config, never from the server) before any work: the hello's settings also against the
run-config whitelist (`runkeys`), before OmegaConf reads them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl.atomic import atomic_path
from petite_fl.config import expand_path
from petite_fl.errors import PetiteError
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
_SUBJECT = re.compile(r" ?\(subject '[^']*'\)|subject '[^']*'")
_PATH = re.compile(r"(?<![\w<.-])(?:~|\.{0,2})/[^\s:'\",()]*")


def for_coordinator(text: str) -> str:
    """A site's refusal as the coordinator may read it: the manifest row and the problem, without the
    site's file paths or subject names (the site's own log keeps the whole line)."""
    text = _SUBJECT.sub(lambda m: "" if m.group(0).startswith((" (", "(")) else "subject <id>", text)
    return _PATH.sub(lambda m: "manifest" if m.group(0).endswith(".json") else "<file>", text)


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
                raise PetiteError(f"the round's message lists {len(ins.names)} shared tensors, this site shares "
                                  f"{len(upload)} of them; Flower's legacy layout (SecAgg+, DP clipping) is "
                                  "positional, so nothing is sent")
            # The weight the coordinator allows (it would count no more), which SecAgg+ masks with the upload.
            weight = 1 if ins.uniform_weight else min(n_train, ins.max_weight or n_train)
            return TrainRes(upload, weight, worker.backbone_sha256, metrics)
        if isinstance(ins, EvaluateIns):
            metrics, path = worker.finish(strategy, ins.run, ins.round, ins.sha256, ins.tensors, ins.splits)
            return EvaluateRes(metrics, str(path))
        raise PetiteError(f"unknown instruction {type(ins).__name__}")

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
        check_sections(ins.config)  # known keys, no `${…}`: before OmegaConf sees any of it
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
            raise PetiteError(f"no settings of run '{run}' at this site: it missed the run's hello"
                              + ("" if self.node.get("site-root") else " (and its node config names no site-root "
                                 "to find them in)"))
        # The node's own settings as they are now (a site restarted with another device keeps it).
        return site_config(OmegaConf.to_container(OmegaConf.load(str(kept))), self.node)
