"""Reading a message's fields: each wrong field is one line naming the message and the field.

Shared by the typed messages (`messages.py`); hand-written because a reply must be refused
field by field, with the field's name, before any of it is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from petite_fl.errors import ConfigError, PetiteError

#: federation.transport: the precision of floating tensors on the wire
TRANSPORT_NAMES = ("float32", "float16", "bfloat16")


def check_transport(name: str) -> str:
    if str(name) not in TRANSPORT_NAMES:
        raise ConfigError(f"federation.transport: '{name}' is not one of {', '.join(TRANSPORT_NAMES)}")
    return str(name)


class Unreadable(PetiteError):
    """A record that is not the message it claims to be."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def bad_name(value: Any) -> str | None:
    """Why `value` cannot name a run or a site (it becomes a folder at the server and the sites)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        return (f"{value!r} is not a name: use letters, digits, '_', '-' and '.' (not '..'), starting with a "
                "letter or digit, at most 128 characters")
    return None


def name(values: Mapping[str, Any], key: str, what: str) -> str:
    value = get(values, key, what)
    why = bad_name(value)
    if why:
        raise Unreadable(f"{what}: '{key}' {why}")
    return value


def get(values: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in values:
        raise Unreadable(f"{what}: missing '{key}'")
    return values[key]


def text(values: Mapping[str, Any], key: str, what: str) -> str:
    value = get(values, key, what)
    if not isinstance(value, str) or not value:
        raise Unreadable(f"{what}: '{key}' must be a non-empty string, got {value!r}")
    return value


def whole(values: Mapping[str, Any], key: str, what: str, minimum: int = 0) -> int:
    value = get(values, key, what)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Unreadable(f"{what}: '{key}' must be a whole number ≥ {minimum}, got {value!r}")
    return value


def flag(values: Mapping[str, Any], key: str, what: str) -> bool:
    value = get(values, key, what)
    if not isinstance(value, bool):
        raise Unreadable(f"{what}: '{key}' must be true or false, got {value!r}")
    return value


def number_metrics(values: Mapping[str, Any], what: str, skip: tuple[str, ...] = (),
                   lists: bool = False) -> dict[str, Any]:
    """Numbers only (and lists of numbers where `lists`); a count of subjects is a whole number ≥ 1.

    A NaN mean is kept: the coordinator judges values (`evaluation.read_final_metrics`).
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in skip:
            continue
        items = value if isinstance(value, list) and lists else [value]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
            raise Unreadable(f"{what}: metric '{key}' is not a number")
        if key.endswith("_subjects") and (not isinstance(value, int) or value < 1):
            raise Unreadable(f"{what}: metric '{key}' must be a whole number ≥ 1, got {value!r}")
        out[key] = value
    return out


def json_field(values: Mapping[str, Any], key: str, what: str) -> Any:
    try:
        return json.loads(text(values, key, what))
    except ValueError:
        raise Unreadable(f"{what}: '{key}' is not valid JSON") from None


def config_of(content: Any, what: str) -> dict[str, Any]:
    if "config" not in content.config_records:
        raise Unreadable(f"{what}: no config record")
    return dict(content.config_records["config"])
