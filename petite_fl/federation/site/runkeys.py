"""What a site accepts of the run settings the server sends: known keys and plain values.

The hello carries the run's resolved sections (`runconfig.SITE_SECTIONS`) as JSON. A site
takes only the keys its *own* petite-fl configs define — every option of the `data`,
`train`, `peft`, `strategy` and `tracking` groups and the root config's `seed` and `federation` —
and no string OmegaConf would read as an interpolation: `${oc.env:SECRET}` would be resolved
at the site, and a failing value puts the secret in the error text that goes back to the
server. The check walks the plain mapping, so OmegaConf never sees a refused value.

Hand-written because the rule is petite-fl's own (its config tree and the two subtrees whose
keys are names); no library knows it. The key list is read from the YAML files, without
Hydra, so that it costs milliseconds in every fresh ClientApp process.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from petite_fl.config import config_dirs
from petite_fl.data.dataset_name import check_dataset_name
from petite_fl.errors import ConfigError

#: the config groups that fill a site section, one folder each
GROUPS = ("data", "train", "peft", "strategy", "tracking")
#: sections that come from the root config.yaml
ROOT_SECTIONS = ("seed", "federation")
#: subtrees whose keys are names, not settings: PEFT method arguments (each method's
#: `parse_args` refuses an unknown argument) and per-scanner data-set sizes
OPEN = ("peft.args", "data.synth.sizes")
WHERE = "refused by the run-config whitelist"


def _paths(prefix: str, value: Any, out: set[str]) -> None:
    out.add(prefix)
    if isinstance(value, dict):
        for key, child in value.items():
            if key != "defaults":  # Hydra's composition list, not a setting
                _paths(f"{prefix}.{key}", child, out)


@lru_cache(maxsize=4)
def _known(dirs: tuple[str, ...]) -> frozenset[str]:
    known: set[str] = set()
    for folder in map(Path, dirs):
        for group in GROUPS:
            for path in sorted((folder / group).glob("*.yaml")):
                _paths(group, OmegaConf.to_container(OmegaConf.load(path), resolve=False), known)
        root = folder / "config.yaml"
        if root.is_file():
            data = OmegaConf.to_container(OmegaConf.load(root), resolve=False)
            for section in ROOT_SECTIONS:
                if section in data:
                    _paths(section, data[section], known)
    return frozenset(known)


def known_keys() -> frozenset[str]:
    """Every dotted key the site's own configs define (sections and settings)."""
    return _known(tuple(str(d) for d in config_dirs()))


def _open(path: str) -> bool:
    return any(path == o or path.startswith(o + ".") for o in OPEN)


def _interpolation(text: str, path: str) -> None:
    if "${" in text:  # the value itself is not repeated: it may name what it would reveal
        raise ConfigError(f"{WHERE}: {path} holds an interpolation ('${{…}}'); a site never resolves "
                          "what the server sends")


def _walk(value: Any, path: str, known: frozenset[str]) -> None:
    if isinstance(value, str):
        _interpolation(value, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", known)
    elif isinstance(value, dict):
        for key, child in value.items():
            key = str(key)
            _interpolation(key, f"a key under {path}")
            child_path = f"{path}.{key}"
            if not _open(child_path) and child_path not in known:
                raise ConfigError(f"{WHERE}: unknown key {child_path} (a site takes only keys its own "
                                  "petite-fl configs define)")
            _walk(child, child_path, known)


def check_sections(sections: Mapping[str, Any]) -> None:
    """Refuse unknown keys and `${…}` anywhere in the sections a hello carries, before OmegaConf; and a
    data set name that is not one plain folder name (the site replaces `<its data root>/<data.name>` whole)."""
    known = known_keys()
    for section, value in sections.items():
        section = str(section)
        _interpolation(section, "a section name")
        if section not in known:
            raise ConfigError(f"{WHERE}: unknown section {section} (a site takes only keys its own "
                              "petite-fl configs define)")
        _walk(value, section, known)
    data = sections.get("data")
    if isinstance(data, Mapping) and "name" in data:
        try:
            check_dataset_name(data["name"])
        except ConfigError as exc:
            raise ConfigError(f"{WHERE}: {exc}") from None
