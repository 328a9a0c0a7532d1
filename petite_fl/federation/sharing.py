"""One rule for which PEFT tensors leave a site and which stay personal.

A rule is a list of `share` selectors and a list of `keep_local` selectors, each a
(part, method) pair with `*` as a wildcard. A tensor is shared when it matches a `share`
selector and no `keep_local` one. So `fedavg` is share [*/*]; the brief's aggregated
shared encoder is share [encoder/*]; `local` shares nothing; and a FedBN-style variant
(Li et al., ICLR 2021: normalisation statistics stay local) is share [*/*] with
keep_local [*/ssf, */layernorm] — a config, not new code. A third field picks a role
within a method: FedSA-LoRA (Guo et al., ICLR 2025) is share [*/lora/A].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from petite_fl.errors import ConfigError
from petite_fl.models.base import PART_NAMES
from petite_fl.peft.naming import ROLES, method_of, role_of
from petite_fl.peft.registry import available_methods


@dataclass(frozen=True)
class Selector:
    part: str = "*"
    method: str = "*"
    role: str = "*"

    def matches(self, part: str, method: str, role: str = "") -> bool:
        return self.part in ("*", part) and self.method in ("*", method) and self.role in ("*", role)

    @classmethod
    def parse(cls, text: str, where: str) -> Selector:
        """'encoder/lora', 'decoder/*', '*/ssf', '*/lora/A' or '*'."""
        part, _, rest = str(text).partition("/")
        method, _, role = rest.partition("/")
        method, role = method or "*", role or "*"
        if part not in ("*", *PART_NAMES):
            raise ConfigError(f"{where}: unknown part '{part}' in '{text}' (allowed: *, {', '.join(PART_NAMES)})")
        if method not in ("*", *available_methods()):
            raise ConfigError(f"{where}: unknown PEFT method '{method}' in '{text}' "
                              f"(allowed: *, {', '.join(available_methods())})")
        roles = [r for _, r in ROLES.get(method, ())]
        if role != "*" and role not in roles:
            raise ConfigError(f"{where}: method '{method}' has no tensor role '{role}' in '{text}' "
                              f"(roles: {', '.join(roles) or 'none'})")
        return cls(part, method, role)

    def __str__(self) -> str:
        return f"{self.part}/{self.method}" + (f"/{self.role}" if self.role != "*" else "")


@dataclass(frozen=True)
class SharingRule:
    share: tuple[Selector, ...] = ()
    keep_local: tuple[Selector, ...] = ()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SharingRule:
        def parse(key: str) -> tuple[Selector, ...]:
            return tuple(Selector.parse(t, f"strategy.sharing.{key}") for t in (cfg.get(key) or []))

        return cls(parse("share"), parse("keep_local"))

    def is_shared(self, part: str, method: str, role: str = "") -> bool:
        return any(s.matches(part, method, role) for s in self.share) and not any(
            s.matches(part, method, role) for s in self.keep_local)

    def split(self, trainable: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(shared, personal) tensor names, from {tensor name: part}."""
        shared, personal = [], []
        for name, part in sorted(trainable.items()):
            (shared if self.is_shared(part, method_of(name), role_of(name)) else personal).append(name)
        return shared, personal


def select(tensors: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    keep = set(names)
    return {k: v for k, v in tensors.items() if k in keep}
