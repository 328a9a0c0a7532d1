"""One way to build a configuration: Hydra's compose API over the built-in `petite_fl/configs/`.

Every CLI and both Flower apps call `compose`, so an override means the same thing
whether it comes from a command line, a Flower run-config or a test.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from petite_fl.errors import ConfigError

#: Extra config folders (os.pathsep-separated) searched after the built-in ones, e.g.
#: a hospital's own `scanner/` or `site/` entries kept outside the installation.
EXTRA_DIRS_ENV = "PETITE_FL_CONFIG_PATH"
#: The built-in groups: a package, so Hydra finds them as `pkg://` in a wheel and in a checkout.
CONFIG_MODULE = "petite_fl.configs"
_PLAIN = re.compile(r"[A-Za-z0-9_\-./\[\],]+")


def configs_dir() -> Path:
    """The folder of the built-in config groups (`petite_fl/configs/`, package data).

    Hydra reads them as the package `petite_fl.configs`; the folder itself is needed for
    listings (scanners, sites) and for the compose memo's modification times.
    """
    path = Path(str(resources.files(CONFIG_MODULE)))
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"petite-fl's built-in configs (package {CONFIG_MODULE}) are missing at {path}: "
                          "the installation is incomplete; reinstall petite-fl")
    return path


def config_dirs() -> list[Path]:
    """Built-in config folder first, then the user's extra folders."""
    extra = [Path(p).expanduser() for p in os.environ.get(EXTRA_DIRS_ENV, "").split(os.pathsep)]
    return [configs_dir(), *(p for p in extra if str(p) not in ("", "."))]


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `<config_name>.yaml` of the built-in configs with Hydra overrides, resolved and read-only.

    Memoised per process: commands and tests compose the same config many times (0.06–0.18 s
    of Hydra each time, per README → Performance). The key holds everything the result depends on: the
    overrides, the config folders and the newest modification time of their YAML files,
    and the environment variable the configs read. Callers get their own copy.
    """
    dirs = config_dirs()
    stamp = max((f.stat().st_mtime_ns for d in dirs if d.is_dir() for f in d.rglob("*.yaml")), default=0)
    key = (config_name, tuple(str(o) for o in overrides), tuple(str(d) for d in dirs), stamp,
           os.environ.get("PETITE_FL_HOME"))
    cfg = _COMPOSED.get(key)
    if cfg is None:
        cfg = _compose(config_name, overrides, dirs)
        if len(_COMPOSED) >= 64:
            _COMPOSED.pop(next(iter(_COMPOSED)))
        _COMPOSED[key] = cfg
    return copy.deepcopy(cfg)


_COMPOSED: dict[tuple, DictConfig] = {}


def _compose(config_name: str, overrides: Sequence[str], dirs: list[Path]) -> DictConfig:
    search = [f"file://{p.resolve()}" for p in dirs[1:]]
    all_overrides = list(overrides)
    if search:
        all_overrides.append(f"hydra.searchpath=[{','.join(search)}]")
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=all_overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(
            f"configuration '{config_name}' with overrides {list(overrides)}: {_first_line(exc)}"
        ) from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


def hydra_override(key: str, value: bool | int | float | str | os.PathLike[str]) -> str:
    """`key=value` for Hydra: strings quoted unless they are plain words, so paths survive."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        value = str(value)
        text = value if _PLAIN.fullmatch(value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"{key}={text}"


def hydra_list(key: str, items: Sequence[str]) -> str:
    """`key=['a','b']` for Hydra: a list of strings, each quoted (an item may hold quotes, `=` or spaces)."""
    quoted = ("'" + str(i).replace("'", "\\'") + "'" for i in items)  # Hydra unescapes only \' inside quotes
    return f"{key}=[{','.join(quoted)}]"


def expand_path(value: str | os.PathLike[str]) -> Path:
    """A config path with `~` expanded and made absolute (Flower runs apps from a copy)."""
    return Path(value).expanduser().resolve()


def _first_line(exc: BaseException) -> str:
    """The informative line of a Hydra/OmegaConf error (Hydra often wraps an empty one)."""
    while exc is not None and not str(exc).strip() and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def config_hash(*parts: Any) -> str:
    """A short, stable key of config sections and values: the name of a folder that a changed
    setting must not reuse (a cached backbone, a fine-tuning, a comparison)."""
    blob = json.dumps([OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p
                       for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
