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

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from petite_fl.config import compose, overrides_from_run_config
from petite_fl.errors import ConfigError

#: the parts of a run's configuration a site trains and evaluates with
SITE_SECTIONS = ("seed", "data", "train", "peft", "strategy", "federation")
#: node-config key → the setting it gives the site (set by `petite-client`, never by the server)
NODE_SETTINGS = {"site-root": "federation.site_root", "device": "train.device"}


def compose_run(run_config: Mapping[str, Any], extra: Sequence[str] = ()) -> DictConfig:
    """The run's configuration from its run-config (then `extra` Hydra overrides), resolved."""
    return compose("config", [*overrides_from_run_config(run_config), *extra])


def run_config_for(defaults: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The run-config a command submits: the app's defaults plus its Hydra overrides."""
    return {**defaults, "overrides": shlex.join(overrides)}


def site_sections(cfg: DictConfig) -> dict[str, Any]:
    """What a site needs of the run's configuration, as plain resolved values."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
            for k in SITE_SECTIONS}


def site_config(sections: Mapping[str, Any], node_config: Mapping[str, Any]) -> DictConfig:
    """The sections the server sent, with this site's own settings from its node config on top."""
    unknown = sorted(set(sections) - set(SITE_SECTIONS))
    if unknown:
        raise ConfigError(f"the run's site settings hold sections a site does not take: {unknown}")
    cfg = OmegaConf.create(dict(sections))
    for key, setting in NODE_SETTINGS.items():
        if node_config.get(key):
            OmegaConf.update(cfg, setting, str(node_config[key]))
    OmegaConf.set_readonly(cfg, True)
    return cfg
