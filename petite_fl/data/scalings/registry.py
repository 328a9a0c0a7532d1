"""Scalings by name (one file each in this package): `data.loader.scaling` and an adapter card's
`inference.scaling` name one of them."""

from __future__ import annotations

from petite_fl.data.scalings.base import Scaling
from petite_fl.errors import ConfigError
from petite_fl.registry import Registry, unknown_entry

#: the default first, then the paper's
SCALINGS: Registry[Scaling] = Registry("scaling", "petite_fl.data.scalings", order=("grey-matter", "minmax", "none"))


def register_scaling(cls: type[Scaling]) -> type[Scaling]:
    """Class decorator: register one instance of a Scaling subclass under its `name`."""
    SCALINGS.register(cls.name, cls())
    return cls


def available_scalings() -> list[str]:
    return SCALINGS.names()


def get_scaling(name: object, key: str = "data.loader.scaling") -> Scaling:
    """The scaling called `name`, or one line naming `key` and the registered scalings."""
    if str(name) not in SCALINGS:
        raise ConfigError(f"{key}: {unknown_entry('scaling', str(name), SCALINGS.names())}")
    return SCALINGS.get(str(name))
