"""The PEFT method registry: one file per method, each registering itself."""

from __future__ import annotations

import importlib

from petite_fl.errors import ConfigError
from petite_fl.peft.base import Method

_METHODS: dict[str, Method] = {}
_MODULES = ("none", "full", "layernorm", "bitfit", "lora", "adapter", "ssf", "vpt")


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in _METHODS:
        raise ValueError(f"PEFT method '{cls.name}' registered twice")
    _METHODS[cls.name] = cls()
    return cls


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"petite_fl.peft.{module}")


def available_methods() -> list[str]:
    _load_all()
    return list(_METHODS)


def get_method(name: str) -> Method:
    _load_all()
    if name not in _METHODS:
        raise ConfigError(f"unknown PEFT method '{name}' (known: {', '.join(_METHODS)})")
    return _METHODS[name]


def additive_methods() -> list[str]:
    _load_all()
    return [n for n, m in _METHODS.items() if m.additive]
