"""The backbone registry: one file per backbone, each registering itself by name."""

from __future__ import annotations

import importlib
from typing import Any

from petite_fl.errors import ConfigError
from petite_fl.models.base import Backbone

_BACKBONES: dict[str, type[Backbone]] = {}
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {}
#: Modules that register backbones when imported (one per backbone).
_MODULES = ("petite_fl.models.unetr", "petite_fl.models.cvtgan")


def register_backbone(name: str, presets: dict[str, dict[str, Any]]):
    """Class decorator: register a Backbone subclass under `name` with named presets."""

    def wrap(cls: type[Backbone]) -> type[Backbone]:
        if name in _BACKBONES:
            raise ValueError(f"backbone '{name}' registered twice")
        if "paper" not in presets or "tiny" not in presets:
            raise ValueError(f"backbone '{name}' needs 'paper' and 'tiny' presets")
        cls.name = name
        _BACKBONES[name] = cls
        _PRESETS[name] = presets
        return cls

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def available_backbones() -> list[str]:
    _load_all()
    return sorted(_BACKBONES)


def backbone_presets(name: str) -> dict[str, dict[str, Any]]:
    _load_all()
    if name not in _PRESETS:
        raise ConfigError(f"unknown backbone '{name}' (known: {', '.join(sorted(_BACKBONES))})")
    return _PRESETS[name]


def resolve_model_config(name: str, preset: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """The full constructor arguments of a backbone: preset values, then overrides."""
    presets = backbone_presets(name)
    if preset not in presets:
        raise ConfigError(f"backbone '{name}' has no preset '{preset}' (known: {', '.join(sorted(presets))})")
    config = dict(presets[preset])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ConfigError(
            f"backbone '{name}': unknown argument(s) {unknown} (allowed: {', '.join(sorted(config))})"
        )
    config.update(overrides)
    return config


def build_backbone(name: str, preset: str = "tiny", **overrides: Any) -> Backbone:
    """Instantiate a registered backbone from a preset plus overrides."""
    config = resolve_model_config(name, preset, **overrides)
    return _BACKBONES[name](**config)


def build_from_config(model_cfg: Any) -> Backbone:
    """Instantiate from the `model` config group: {name, preset, overrides}."""
    overrides = dict(model_cfg.get("overrides") or {})
    return build_backbone(str(model_cfg.name), str(model_cfg.get("preset", "tiny")), **overrides)
