"""Every entry of every config group composes with the root config and names registered entries.

The config groups mirror the registries: `model=` names a backbone, `peft=` PEFT methods,
`strategy=` an algorithm, `scanner=` a scanner. A YAML file naming something no registry
holds would only fail when a run reaches it; here it fails at once. A new group folder
fails `test_every_group_folder_has_a_check` until it is given a check below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from petite_fl.config import EXTRA_DIRS_ENV, compose, configs_dir
from petite_fl.deploy.site import load_site_config
from petite_fl.errors import ConfigError
from petite_fl.federation.strategies.registry import algorithm_of, available_strategies, build_strategy, centralised
from petite_fl.models.registry import available_backbones, build_backbone, resolve_model_config
from petite_fl.peft.registry import available_methods
from petite_fl.peft.spec import PETITE_CHOICE, spec_from_config
from petite_fl.scanners import available_scanners, get_scanner
from petite_fl.tracking import available_trackers

#: `peft.name` values that are spec keywords (petite_fl.peft.spec.spec_from_config), not methods
SPEC_KEYWORDS = ("mix", "petite")


def entries(group: str, root: Path | None = None) -> list[str]:
    return sorted(p.stem for p in ((root or configs_dir()) / group).glob("*.yaml"))


def check_model(cfg: DictConfig, entry: str) -> None:
    name = str(cfg.model.name)
    assert name in available_backbones(), f"model={entry} names backbone '{name}', not registered"
    resolve_model_config(name, str(cfg.model.preset), **dict(cfg.model.overrides or {}))


def peft_methods(peft: DictConfig, backbone: str) -> list[str]:
    """Every PEFT method a `peft` entry names, on `backbone` (peft=petite depends on it)."""
    name = str(peft.name)
    if name == "mix":
        named = [str(peft.encoder), str(peft.decoder)]
    elif name == "petite":
        assert backbone in PETITE_CHOICE, f"peft=petite has no PETITE choice for backbone '{backbone}'"
        named = list(PETITE_CHOICE[backbone])
    else:
        named = [name]
    bitfit = ["bitfit"] if name in SPEC_KEYWORDS and peft.get("bitfit") else []
    return named + bitfit + [str(k) for k in (peft.get("args") or {})]


def check_peft(cfg: DictConfig, entry: str) -> None:
    # companion override: the methods of peft=petite, and what is feasible, depend on the backbone
    for model in entries("model"):
        with_model = compose("config", [f"peft={entry}", f"model={model}"])
        backbone = str(with_model.model.name)
        unknown = [m for m in peft_methods(with_model.peft, backbone) if m not in available_methods()]
        assert not unknown, f"peft={entry} (model={model}) names unregistered PEFT method(s) {unknown}"
        with torch.device("meta"):
            net = build_backbone(backbone, str(with_model.model.preset))
        spec_from_config(with_model.peft, net)


def check_strategy(cfg: DictConfig, entry: str) -> None:
    strategy = cfg.strategy
    if centralised(strategy):  # a centralised arm of `petite compare`: no algorithm, refused as one
        with pytest.raises(ConfigError, match=f"^strategy={entry} trains on every site's scans in one place"):
            build_strategy(strategy)
        return
    algorithm = algorithm_of(strategy)
    assert algorithm in available_strategies(), f"strategy={entry} names algorithm '{algorithm}', not registered"
    assert build_strategy(strategy).name == entry, f"strategy={entry} is labelled '{strategy.name}' (run names)"


def check_scanner(cfg: DictConfig, entry: str) -> None:
    name = str(cfg.scanner.name)
    assert name in available_scanners(), f"scanner={entry} names scanner '{name}', not registered"
    assert get_scanner(name).name == entry


def check_site(cfg: DictConfig, entry: str) -> None:
    load_site_config(entry)  # no registry: the deployment loader checks the fields


def check_data(cfg: DictConfig, entry: str) -> None:
    named = [*cfg.data.synth.scanners, *(cfg.data.synth.get("sizes") or {})]
    unknown = sorted(set(map(str, named)) - set(available_scanners()))
    assert not unknown, f"data={entry} names unregistered scanner(s) {unknown}"


def check_compare(cfg: DictConfig, entry: str) -> None:
    arms = cfg.compare.arms
    assert set(cfg.compare.default_arms) <= set(arms) and set(cfg.compare.baselines) <= set(arms)
    for arm, overrides in arms.items():  # each arm is a list of overrides: its strategy must be one
        strategy = compose("config", [f"compare={entry}", *map(str, overrides)]).strategy
        if not centralised(strategy):
            assert algorithm_of(strategy) in available_strategies(), f"compare={entry}: arm {arm}"


def check_tracking(cfg: DictConfig, entry: str) -> None:
    name = str(cfg.tracking.name)
    assert name in available_trackers(), f"tracking={entry} names tracker '{name}', not registered"
    assert name == entry, f"tracking={entry} is named '{name}'"


def check_train(cfg: DictConfig, entry: str) -> None:
    """No registry: composing is the check."""


def check_learning_curve(cfg: DictConfig, entry: str) -> None:
    """The experiment's own checks (sizes, gate, convergence check, source ≠ target), and a data set it can draw."""
    from petite_fl.experiments.learning_curve import compose_experiment

    composed, _ = compose_experiment([f"learning_curve={entry}"])
    check_data(composed, entry)
    assert composed.learning_curve.pool >= max(composed.learning_curve.sizes)


#: group → (override that selects an entry, check); `+` for groups outside config.yaml's defaults
GROUPS: dict[str, tuple[str, Callable[[DictConfig, str], None]]] = {
    "model": ("model", check_model),
    "peft": ("peft", check_peft),
    "strategy": ("strategy", check_strategy),
    "scanner": ("+scanner", check_scanner),
    "site": ("+site", check_site),
    "data": ("data", check_data),
    "compare": ("compare", check_compare),
    "train": ("train", check_train),
    "tracking": ("tracking", check_tracking),
    "learning_curve": ("+learning_curve", check_learning_curve),
}


def check(group: str, entry: str) -> None:
    key, checker = GROUPS[group]
    checker(compose("config", [f"{key}={entry}"]), entry)


def test_every_group_folder_has_a_check():
    folders = {p.name for p in configs_dir().iterdir() if p.is_dir()}
    assert folders == set(GROUPS)


@pytest.mark.parametrize("group, entry", [(g, e) for g in GROUPS for e in entries(g)])
def test_every_entry_composes_and_names_registered_entries(group, entry):
    check(group, entry)


@pytest.mark.parametrize("group, text, fragment", [
    ("model", "name: resnet3d\npreset: tiny\noverrides: {}\n", "backbone 'resnet3d'"),
    ("peft", "name: mix\nencoder: dora\ndecoder: ssf\nbitfit: true\nlr: 1e-3\nargs: {}\n", r"\['dora'\]"),
    ("strategy", "name: ghost\nalgorithm: fedsgd\nsharing: {share: ['*']}\n", "algorithm 'fedsgd'"),
    ("data", "defaults: [default, _self_]\nsynth: {scanners: [scanner1, scanner9]}\n", r"\['scanner9'\]"),
    ("tracking", "name: wandb\n", "tracker 'wandb'"),
], ids=["model", "peft", "strategy", "data", "tracking"])
def test_an_entry_naming_an_unregistered_one_fails(tmp_path, monkeypatch, group, text, fragment):
    (tmp_path / group).mkdir()
    (tmp_path / group / "ghost.yaml").write_text(text)
    monkeypatch.setenv(EXTRA_DIRS_ENV, str(tmp_path))
    with pytest.raises(AssertionError, match=fragment):
        check(group, "ghost")
