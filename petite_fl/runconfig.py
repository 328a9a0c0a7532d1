"""The one bridge between a Flower run-config and petite-fl's configuration.

A Flower run-config is flat (`model = "unetr"`, `"federation.rounds" = 5`, and an
`overrides` string for everything else). The ServerApp resolves it once with
`compose_run`; `petite simulate` and `petite compare` validate their overrides with the
same function before Flower starts, so what they check is what the server runs. A site
never composes the run-config: the server sends it the resolved sections it trains with
(`site_sections`) once per run, and the site adds only its own settings from its node
config (`site_config`).
"""

from __future__ import annotations

import json
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl.config import compose, hydra_override
from petite_fl.credentials import check_run_config
from petite_fl.errors import ConfigError, PetiteError

#: Run-config key holding further Hydra overrides (Flower only overrides keys it lists).
EXTRA_OVERRIDES = "overrides"
#: The Flower app shipped in the package: a pyproject.toml whose components are the installed
#: package's apps (petite_fl.federation.flower.app), so `flwr run` needs no checkout. Flower
#: only reads the folder (it builds the FAB in memory), so it may live in a read-only site-packages.
APP_DIR = Path(__file__).resolve().parent / "experiments" / "flower-app"

#: the parts of a run's configuration a site trains and evaluates with
SITE_SECTIONS = ("seed", "data", "train", "peft", "strategy", "federation", "tracking")
#: node-config key → the setting it gives the site (set by `petite-client`; over the server's value)
NODE_SETTINGS = {"site-root": "federation.site_root", "device": "train.device", "data-root": "data.root"}
#: node-config key of a deployed site's own `tracking` section (JSON, from its site YAML)
NODE_TRACKING = "tracking"
#: a deployed site's tracking when its node config names none: TensorBoard files at the site
SITE_TRACKING = {"name": "tensorboard"}


def app_dir() -> Path:
    """The packaged Flower app folder, for `flwr run <folder>`."""
    if not (APP_DIR / "pyproject.toml").is_file():
        raise PetiteError(f"petite-fl's Flower app is missing at {APP_DIR}: the installation is incomplete; "
                          "reinstall petite-fl")
    return APP_DIR


def app_defaults(app: Path | None = None) -> dict[str, Any]:
    """The run-config defaults of an app's [tool.flwr.app.config] (default: the packaged app),
    flattened as Flower does."""
    config = tomllib.loads(((app or app_dir()) / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", config)
    return flat


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """Flower's flat run-config (dotted keys, scalar values) → Hydra overrides.

    `{"model": "cvtgan", "train.finetune.steps": 50, "peft.bitfit": False}` →
    `["model=cvtgan", "train.finetune.steps=50", "peft.bitfit=false"]`; an empty string
    keeps the default of the built-in configs (TOML has no null). Strings are quoted
    for Hydra unless they are plain words, so paths and values with spaces survive.
    A credential is refused first (`credentials`): Flower hands the run-config to every site.
    """
    check_run_config(run_config)
    overrides, extra = [], []
    for key, value in run_config.items():
        if value == "":  # pyproject's way of saying "the configs' default" (TOML has no null)
            continue
        if key == EXTRA_OVERRIDES:  # any other Hydra overrides, space-separated, applied last
            extra = shlex.split(str(value))
            continue
        if not isinstance(value, (bool, int, float, str)):
            raise ConfigError(f"run-config '{key}': unsupported value {value!r} (use str, int, float or bool)")
        overrides.append(hydra_override(key, value))
    return overrides + extra



def compose_run(run_config: Mapping[str, Any], extra: Sequence[str] = ()) -> DictConfig:
    """The run's configuration from its run-config (then `extra` Hydra overrides), resolved."""
    return compose("config", [*overrides_from_run_config(run_config), *extra])


def submitted(overrides: Sequence[str]) -> dict[str, Any]:
    """The run-config `petite simulate` / `petite compare` submit: their Hydra overrides."""
    return {EXTRA_OVERRIDES: shlex.join(overrides)}


def command_config(overrides: Sequence[str]) -> DictConfig:
    """What the ServerApp will compose for a submission of `overrides` (checked before Flower starts)."""
    return compose_run({**app_defaults(), **submitted(overrides)})


def site_sections(cfg: DictConfig) -> dict[str, Any]:
    """What a site needs of the run's configuration, as plain resolved values.

    The tracking section travels without its `uri`: a tracking server's address may hold
    credentials, which never leave the coordinator (simulated sites write their own local stores); nor
    does `federation.attested`, the operator's bounds on every site's weight."""
    sections = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                for k in SITE_SECTIONS}
    if isinstance(sections.get("tracking"), dict):
        sections["tracking"] = {k: v for k, v in sections["tracking"].items() if k != "uri"}
    if isinstance(sections.get("federation"), dict):  # the coordinator's bounds on each site's weight: its own
        sections["federation"] = {k: v for k, v in sections["federation"].items() if k != "attested"}
    return sections


def node_tracking(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """A deployed site's own `tracking` section from its node config (default: TensorBoard at the site)."""
    if not node_config.get(NODE_TRACKING):
        return dict(SITE_TRACKING)
    try:
        data = json.loads(str(node_config[NODE_TRACKING]))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"node config '{NODE_TRACKING}' is not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not data.get("name"):
        raise ConfigError(f"node config '{NODE_TRACKING}' must be a mapping with a 'name' (tensorboard, mlflow, none)")
    return data


def own_folders(node_config: Mapping[str, Any]) -> dict[str, str]:
    """A deployed site's folders, from its node config only: the run's `data.root` and
    `federation.site_root` are the coordinator's choice, and a site that took them would let the
    coordinator name the folders it writes and replaces (its generated data set is swapped in whole)."""
    site = str(node_config["site"])
    root = node_config.get("site-root")
    if not root:
        raise ConfigError(f"site {site}: its node config names no 'site-root'; a deployed site's folders come "
                          "from its own configuration, never from the run's")
    return {"site-root": str(root), "data-root": str(node_config.get("data-root") or Path(str(root)) / "data")}


def site_config(sections: Mapping[str, Any], node_config: Mapping[str, Any]) -> DictConfig:
    """The sections the server sent, with this site's own settings from its node config on top.

    A deployed site's node config (written by `petite-client`) names its folders (`own_folders`: never
    the run's) and device; a simulated site (a partition of one machine) has none and uses the run's.
    Where a deployed site's curves go is its own decision: its `tracking` section replaces whatever the server sent
    (a coordinator-chosen MLflow server would receive the site's curves)."""
    unknown = sorted(set(sections) - set(SITE_SECTIONS))
    if unknown:
        raise ConfigError(f"the run's site settings hold sections a site does not take: {unknown}")
    cfg = OmegaConf.create(dict(sections))
    own = own_folders(node_config) if node_config.get("site") else {}
    if node_config.get("site"):
        cfg["tracking"] = node_tracking(node_config)
    for key, setting in NODE_SETTINGS.items():
        value = own.get(key) or node_config.get(key)
        if value:
            OmegaConf.update(cfg, setting, str(value))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def site_list(cfg: DictConfig) -> list[str]:
    """federation.sites as a list (a YAML list or a comma-separated string from a run-config)."""
    sites = cfg.federation.sites
    items = [s.strip() for s in sites.split(",")] if isinstance(sites, str) else [str(s) for s in sites]
    items = [s for s in items if s]
    if not items:
        raise ConfigError("federation.sites is empty")
    if len(set(items)) != len(items):
        raise ConfigError(f"federation.sites lists a site twice: {items}")
    return items
