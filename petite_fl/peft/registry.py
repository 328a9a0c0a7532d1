"""The PEFT method registry: one file per method in this package, each registering itself."""

from __future__ import annotations

from petite_fl.peft.base import Method
from petite_fl.registry import Registry

#: The order listings, error messages and the Mix-PEFT enumeration (`feasible_mixes`, so
#: `petite peft list`) have always used; a method not named here follows alphabetically.
LISTING_ORDER = ("none", "full", "layernorm", "bitfit", "lora", "adapter", "ssf", "vpt")

METHODS: Registry[Method] = Registry("PEFT method", "petite_fl.peft", order=LISTING_ORDER)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register one instance of a Method subclass under its `name`."""
    METHODS.register(cls.name, cls())
    return cls


def available_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> Method:
    return METHODS.get(name)


def additive_methods() -> list[str]:
    """Methods that can be mixed, one on the encoder and another on the decoder."""
    return [n for n, m in METHODS.items() if m.additive]
