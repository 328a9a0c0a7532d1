"""A site's own policy: what it agrees to run and to send, whatever the coordinator asks.

The coordinator is trusted to orchestrate, not to choose what a site reveals (DESIGN.md,
trust model). The policy is the `policy:` section of the site's YAML; `petite-client`
puts it in the SuperNode's node config (key `policy`, JSON), which the coordinator cannot
change, and `SiteEndpoint` checks it against every message. A refusal is a `PolicyError`
naming the policy line, e.g. `refused by policy.min_samples_per_update (8): the run asks
2 steps × batch 1 = 2`; the carrier sends it back as the site's error reply.

A node whose config names no `site` is a simulated partition (`petite simulate`, `petite
compare`, in-process tests): it gets `SIMULATION`, which bounds nothing the experiments
vary, but still evaluates only on val/test. Unknown keys and `${…}` in the run's settings
are refused for every node (`runkeys`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from petite_fl.config import config_dirs
from petite_fl.console import human_bytes
from petite_fl.errors import ConfigError, PolicyError
from petite_fl.federation.site.limits import BOUNDS, check_learning, check_resources, check_round

if TYPE_CHECKING:
    import torch

#: node-config key holding the policy (JSON), written by `petite-client`
NODE_KEY = "policy"
#: every federated strategy shipped (each one's sharing rule is read from the site's own file)
DEFAULT_STRATEGIES = ("local", "fedavg", "shared-encoder", "fedbn", "split-lora", "personalized", "fedavg-ft")
#: every PEFT method but `full`: full fine-tuning sends the whole model, what inversion attacks need
DEFAULT_PEFT = ("none", "layernorm", "bitfit", "lora", "adapter", "ssf", "vpt")
DP_REQUIREMENTS = ("none", "central", "client")
EVAL_SPLITS = ("val", "test")  # never `train`: metrics on the training scans are an oracle on them
FLOAT_BOUNDS = ("max_patch_scale", "max_eval_overlap")
INT_BOUNDS = tuple(k for k in BOUNDS if k not in FLOAT_BOUNDS)


@dataclass(frozen=True)
class SitePolicy:
    """The site's limits; `None` in a list or a maximum means "any" (documented in client/README.md)."""

    strategies: tuple[str, ...] | None = DEFAULT_STRATEGIES
    peft_methods: tuple[str, ...] | None = DEFAULT_PEFT
    max_upload_bytes: int | None = 16 * 2**20      # 3.5× the largest paper-size PEFT upload (4.6 MiB)
    min_samples_per_update: int = 8                # local steps × batch behind one upload
    require_secagg: bool = False                   # SecAgg+ needs ≥ 3 sites; the two-site walkthrough has 2
    require_dp: str = "none"                       # none | central | client
    eval_splits: tuple[str, ...] = EVAL_SPLITS
    max_backbone_parameters: int | None = 150_000_000  # the paper UNETR has 101.7 M
    # What a run may spend here (`limits.BOUNDS` names the settings): room above every shipped preset,
    # compare=paper (the paper-size run) included, and no more (10¹² steps or 10⁴ workers ask no science).
    max_rounds: int | None = 100                   # compare=paper runs 10 rounds, the default 5
    max_local_steps: int | None = 1000             # compare=paper 50 per round; the learning curve's longest 400
    max_batch_size: int | None = 16                # volumes per step: the paper's 2, ×8
    max_num_workers: int | None = 8                # loader processes: every preset uses 0 (in the trainer's process)
    max_patch_scale: float | None = 2.0            # × the scanner's training patch: presets 0.75-1.0; 2 = 8× voxels
    max_patches_per_volume: int | None = 32        # patches per volume and step: the paper's 4, ×8
    max_eval_batch_size: int | None = 32           # train.eval.sw_batch_size, windows per forward pass: 8, ×4
    max_eval_overlap: float | None = 0.75          # sliding-window overlap: the paper's 0.5 (8× windows); 0.75 is 64×
    max_val_patches: int | None = 64               # federation.val.patches per val subject: the default 16, ×4
    # The loss on training patches at weights the coordinator chose is an oracle on the training scans
    # (what eval_splits keeps from it); the coordinator's run log, curves and the comparison's report
    # read train_loss where a site sends it and do without where it does not. Simulations keep it.
    report_train_loss: bool = False

    # -- reading and writing ---------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "policy") -> SitePolicy:
        """A policy from the site YAML's `policy:` section (missing keys keep their defaults)."""
        data = dict(data or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(map(str, data)) - set(allowed))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
        out = cls()
        if "strategies" in data:
            out = replace(out, strategies=_names(data["strategies"], f"{where}.strategies", known_strategies()))
        if "peft_methods" in data:
            from petite_fl.peft.registry import available_methods

            out = replace(out, peft_methods=_names(data["peft_methods"], f"{where}.peft_methods",
                                                   available_methods()))
        for key in ("max_upload_bytes", "max_backbone_parameters", *INT_BOUNDS):
            if key in data:
                out = replace(out, **{key: _count(data[key], f"{where}.{key}", nullable=True)})
        for key in FLOAT_BOUNDS:
            if key in data:
                out = replace(out, **{key: _fraction(data[key], f"{where}.{key}")})
        if "min_samples_per_update" in data:
            out = replace(out, min_samples_per_update=_count(data["min_samples_per_update"],
                                                             f"{where}.min_samples_per_update"))
        for key in ("require_secagg", "report_train_loss"):
            if key in data:
                if not isinstance(data[key], bool):
                    raise ConfigError(f"{where}.{key} must be true or false, got {data[key]!r}")
                out = replace(out, **{key: data[key]})
        if "require_dp" in data:
            if data["require_dp"] not in DP_REQUIREMENTS:
                raise ConfigError(f"{where}.require_dp must be one of {', '.join(DP_REQUIREMENTS)}, "
                                  f"got {data['require_dp']!r}")
            out = replace(out, require_dp=data["require_dp"])
        if "eval_splits" in data:
            if isinstance(data["eval_splits"], (list, tuple)) and "train" in data["eval_splits"]:
                raise ConfigError(f"{where}.eval_splits: 'train' is never allowed (metrics on the training "
                                  "scans are an oracle on them)")
            splits = _names(data["eval_splits"], f"{where}.eval_splits", EVAL_SPLITS)
            if splits is None:
                raise ConfigError(f"{where}.eval_splits must list splits (val, test), not null")
            out = replace(out, eval_splits=splits)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def describe(self) -> str:
        return "; ".join(f"{f.name}={_show(getattr(self, f.name))}" for f in fields(self))

    # -- the checks --------------------------------------------------------------------------
    def refusal(self, key: str, why: str) -> PolicyError:
        return PolicyError(f"refused by policy.{key} ({_show(getattr(self, key))}): {why}")

    def check_run(self, cfg: Any) -> None:
        """The run's settings (at the hello, and again at every message: the policy may have changed)."""
        from petite_fl.federation.strategies import build_strategy

        check_resources(self, cfg)
        check_learning(cfg)
        self._check_strategy(cfg.strategy)
        methods = configured_methods(cfg.peft)
        if methods is not None:
            self.check_methods(methods)
        strategy = build_strategy(cfg.strategy)
        rounds, steps = int(cfg.federation.rounds), int(cfg.federation.local_steps)
        behind = steps_behind_upload(strategy, 1, steps, rounds) if rounds > 0 else 0
        if not behind:
            return  # nothing leaves the site: no sample floor or protection to require
        self._check_samples(behind, steps, int(cfg.train.batch_size))
        if self.require_secagg and not bool(cfg.federation.secagg.enabled):
            raise self.refusal("require_secagg", "the run does not use SecAgg+ (federation.secagg.enabled=false)")
        mode = cfg.federation.dp.mode
        mode = "off" if mode in (None, False) else str(mode)
        if self.require_dp == "central" and mode not in ("server", "client"):
            raise self.refusal("require_dp", f"the run has no differential privacy (federation.dp.mode={mode})")
        if self.require_dp == "client" and mode != "client":
            raise self.refusal("require_dp", f"the run does not clip updates at the sites (federation.dp.mode={mode})")

    def _check_strategy(self, section: Any) -> None:
        from petite_fl.federation.strategies.registry import algorithm_of

        label = str(section.get("name"))
        if self.strategies is None:
            return  # any strategy, with the run's sharing rule as sent
        if label not in self.strategies:
            raise self.refusal("strategies", f"the run asks strategy '{label}'")
        own = strategy_definition(label)
        asked, mine = _sharing(section), _sharing(own)
        if algorithm_of(section) != algorithm_of(own) or asked != mine:
            raise self.refusal("strategies", f"strategy '{label}' is {algorithm_of(own)} {mine} at this site; "
                                             f"the run asks {algorithm_of(section)} {asked}")

    def check_methods(self, methods: Sequence[str]) -> None:
        """The PEFT methods a run trains (`full` and `none` count as methods)."""
        if self.peft_methods is None:
            return
        refused = [m for m in methods if m not in self.peft_methods]
        if refused:
            raise self.refusal("peft_methods", f"the run trains {'+'.join(methods)}, and "
                                               f"{', '.join(repr(m) for m in refused)} is not allowed here")

    def _check_samples(self, behind: int, steps: int, batch: int) -> None:
        n = behind * batch
        if n < self.min_samples_per_update:
            share = f" (the upload's share of {steps})" if behind != steps else ""
            raise self.refusal("min_samples_per_update", f"the run asks {behind} steps{share} × batch {batch} = {n}")

    def check_train(self, ins: Any, cfg: Any, strategy: Any, carried: tuple[bool, bool] | None = None) -> None:
        """One round's instruction: the samples behind the upload, its protections (as declared, and as
        Flower carries them when `carried` says), the validation split."""
        if ins.validate and "val" not in self.eval_splits:
            raise self.refusal("eval_splits", "the round asks a validation on 'val'")
        check_round(self, ins)
        behind = steps_behind_upload(strategy, ins.round, ins.steps, ins.rounds)
        if not ins.tensors or not behind:
            return  # nothing leaves the site this round
        self._check_samples(behind, ins.steps, int(cfg.train.batch_size))
        if self.require_secagg and ins.secagg_range is None:
            raise self.refusal("require_secagg", "this round's update would leave without SecAgg+")
        if self.require_dp == "client" and ins.clipping_norm is None:
            raise self.refusal("require_dp", "this round's update would leave without clipping at the site")
        if carried is not None:
            self.check_carrier(*carried)

    def check_carrier(self, via_secagg: bool, via_clipping: bool) -> None:
        """What Flower really does with a train message (the typed fields only say what the server declares)."""
        if self.require_secagg and not via_secagg:
            raise self.refusal("require_secagg", "this train message does not run Flower's SecAgg+ protocol")
        if self.require_dp == "client" and not via_clipping:
            raise self.refusal("require_dp", "this train message does not pass Flower's clipping mod")

    def check_upload(self, tensors: Mapping[str, torch.Tensor], transport: str) -> None:
        """The shared tensors of one round, in the wire precision, before anything is trained."""
        if self.max_upload_bytes is None:
            return
        import torch

        size = torch.empty((), dtype=getattr(torch, transport)).element_size()
        total = sum(t.numel() for t in tensors.values()) * size
        if total > self.max_upload_bytes:
            raise self.refusal("max_upload_bytes", f"the round would upload {total} bytes ({human_bytes(total)}) "
                                                   f"of {len(tensors)} shared tensors")

    def reported(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """A train reply's metrics as this site sends them: its training losses only where allowed."""
        if self.report_train_loss:
            return dict(metrics)
        return {k: v for k, v in metrics.items() if not k.endswith("train_loss")}

    def check_splits(self, splits: Sequence[str]) -> None:
        refused = [s for s in splits if s not in self.eval_splits]
        if refused:
            raise self.refusal("eval_splits", f"the run asks an evaluation on {', '.join(map(repr, refused))}")

    def check_backbone(self, tensors: Mapping[str, torch.Tensor], what: str = "the offered backbone has") -> None:
        """An offered backbone's tensors (and, before it is built, the model its config describes)."""
        if self.max_backbone_parameters is None:
            return
        total = sum(t.numel() for t in tensors.values())
        if total > self.max_backbone_parameters:
            raise self.refusal("max_backbone_parameters", f"{what} {total} parameters")


#: simulated partitions: one machine, one party; the experiments vary everything but the splits
SIMULATION = SitePolicy(strategies=None, peft_methods=None, max_upload_bytes=None, min_samples_per_update=1,
                        max_backbone_parameters=None, **dict.fromkeys(BOUNDS), report_train_loss=True)


def policy_for_node(node_config: Mapping[str, Any]) -> SitePolicy:
    """The node's policy: its `policy` key; the defaults for a site without one; SIMULATION for a partition."""
    if NODE_KEY in node_config:
        try:
            data = json.loads(str(node_config[NODE_KEY]))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"node config '{NODE_KEY}' is not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"node config '{NODE_KEY}' is not a mapping")
        return SitePolicy.from_mapping(data, f"node config {NODE_KEY}")
    return SitePolicy() if node_config.get("site") else SIMULATION


def steps_behind_upload(strategy: Any, rnd: int, steps: int, total_rounds: int) -> int:
    """Local steps a site's upload in round `rnd` is trained on (Ditto: its global adapter's share);
    0 when nothing leaves the site (a strategy that shares nothing, fedavg-ft's local rounds)."""
    if not strategy.rule.share or rnd > strategy.federated_rounds(total_rounds):
        return 0
    return sum(n for _, n, _ in strategy.upload_steps(rnd, steps, total_rounds))


def configured_methods(peft: Any) -> list[str] | None:
    """The methods a `peft` section trains, where they follow without the backbone (None: `petite`,
    which depends on it; checked on the built spec)."""
    name = str(peft.get("name"))
    if name == "petite":
        return None
    if name == "mix":
        return [str(peft.get("encoder")), str(peft.get("decoder"))] + (["bitfit"] if peft.get("bitfit", True) else [])
    return [name]


def spec_methods(spec: Any) -> list[str]:
    """The methods a built PeftSpec trains."""
    return [spec.kind] if spec.kind in ("none", "full") else spec.methods()


def _strategy_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in config_dirs():  # the built-in configs first, as Hydra finds them
        for path in sorted((folder / "strategy").glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def known_strategies() -> list[str]:
    """The strategy labels this site's own configs define (not the centralised arms: no federation)."""
    from petite_fl.federation.strategies.registry import CENTRALISED

    return [s for s in _strategy_files() if s not in CENTRALISED]


def strategy_definition(label: str) -> dict[str, Any]:
    """The site's own `strategy/<label>.yaml`: its algorithm and sharing rule are what the site runs."""
    path = _strategy_files().get(label)
    if path is None:
        raise ConfigError(f"policy.strategies: no strategy '{label}' in this site's configs")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _sharing(section: Any) -> str:
    """A sharing rule as text, for comparing and for the refusal line."""
    sharing = dict(section.get("sharing") or {})
    share, keep = ([str(s) for s in (sharing.get(k) or [])] for k in ("share", "keep_local"))
    return f"sharing [{', '.join(share)}]" + (f" except [{', '.join(keep)}]" if keep else "")


def _names(value: Any, where: str, allowed: Sequence[str]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of names (or null for any), got {value!r}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown {', '.join(map(repr, unknown))} (known: {', '.join(allowed)})")
    return tuple(value)


def _count(value: Any, where: str, nullable: bool = False) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if nullable else 1):
        raise ConfigError(f"{where} must be a whole number ≥ {0 if nullable else 1}"
                          + (" (or null for no limit)" if nullable else "") + f", got {value!r}")
    return value


def _fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where} must be a number > 0 (or null for no limit), got {value!r}")
    return float(value)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return str(value)
