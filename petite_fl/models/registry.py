"""The backbone registry: one file per backbone in this package, each registering itself by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from petite_fl.errors import ConfigError
from petite_fl.models.base import Backbone
from petite_fl.registry import Registry


@dataclass(frozen=True)
class RegisteredBackbone:
    """A backbone class and its named presets (constructor arguments)."""

    cls: type[Backbone]
    presets: dict[str, dict[str, Any]]


BACKBONES: Registry[RegisteredBackbone] = Registry("backbone", "petite_fl.models")


def register_backbone(name: str, presets: dict[str, dict[str, Any]]) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: register a Backbone subclass under `name` with named presets."""

    def wrap(cls: type[Backbone]) -> type[Backbone]:
        if "paper" not in presets or "tiny" not in presets:
            raise ValueError(f"backbone '{name}' needs 'paper' and 'tiny' presets")
        BACKBONES.register(name, RegisteredBackbone(cls, presets))
        cls.name = name
        return cls

    return wrap


def available_backbones() -> list[str]:
    return BACKBONES.names()


def backbone_presets(name: str) -> dict[str, dict[str, Any]]:
    return BACKBONES.get(name).presets


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
    return BACKBONES.get(name).cls(**config)


def build_from_config(model_cfg: Any) -> Backbone:
    """Instantiate from the `model` config group: {name, preset, overrides}."""
    overrides = dict(model_cfg.get("overrides") or {})
    return build_backbone(str(model_cfg.name), str(model_cfg.get("preset", "tiny")), **overrides)
