"""No credential in a run config: Flower hands a run's run-config to every site it runs on.

`flwr run … --run-config` is stored by the SuperLink, returned by its `get-run` to any site of
the federation and given to every ClientApp (`context.run_config`). So a tracking server's
user name, password or token never belongs there: the coordinator takes them from its own
environment, where MLflow's client reads them itself (`MLFLOW_TRACKING_USERNAME` and
`MLFLOW_TRACKING_PASSWORD`, or `MLFLOW_TRACKING_TOKEN`; `MLFLOW_TRACKING_URI` for the address).
`check_run_config` refuses, in one line naming the key and never the value, a URL with a user
part, a query parameter named like a secret, and a setting or variable named like one.

Hand-written because no library says whether a text holds a credential; the patterns are the
forms a tracking URI or an environment variable takes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from petite_fl.errors import ConfigError

#: `scheme://user[:password]@host`: any user part (a token is often the user name alone)
_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s@]+@", re.IGNORECASE)
#: words that name a secret, in a query parameter, a setting's last part or a variable
_SECRET = r"(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|auth|credentials?|signature|sig)"
_QUERY = re.compile(rf"[?&;](?:[a-z0-9_.-]*[_.-])?{_SECRET}=", re.IGNORECASE)
_NAME = re.compile(rf"(?:^|[._-]){_SECRET}$", re.IGNORECASE)
#: the run-config key whose value is further `key=value` overrides (`runconfig.EXTRA_OVERRIDES`)
OVERRIDES = "overrides"
HOW = ("a run config travels to every site: give a tracking server's credentials in the coordinator's "
       "environment (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)")


def credential_in(text: str) -> str | None:
    """What kind of credential `text` holds (for the refusal line), or None."""
    if _USERINFO.search(text):
        return "a URL with a user name or password"
    if _QUERY.search(text):
        return "a URL whose query names a secret"
    return None


def _setting(key: str, value: Any, place: str) -> None:
    name = key.lstrip("+~").strip()
    if _NAME.search(name):
        raise ConfigError(f"refused: {place} sets '{name}', named like a secret; {HOW}")
    found = credential_in(value) if isinstance(value, str) else None
    if found:
        raise ConfigError(f"refused: {name} in {place} holds {found}; {HOW}")


def _overrides(text: str) -> list[tuple[str, str]]:
    """`key=value` items of an overrides string (the whole text as one value where it does not split)."""
    try:
        items = shlex.split(text)
    except ValueError:  # unbalanced quotes: Hydra refuses it later; still no credential may pass
        return [("overrides", text)]
    return [tuple(item.split("=", 1)) if "=" in item else (item, "") for item in items]


def check_run_config(run_config: Mapping[str, Any], place: str = "the run config") -> None:
    """Refuse a run config (Flower's flat mapping, its `overrides` string included) holding a credential."""
    for key, value in run_config.items():
        if str(key) == OVERRIDES and isinstance(value, str):
            for name, item in _overrides(value):
                _setting(name, item, f"{place}'s overrides")
        else:
            _setting(str(key), value, place)
