"""One registry style for every kind of named entry: backbones, PEFT methods, strategies.

Each entry lives in its own module of one package and registers itself when imported;
the registry imports every module of that package the first time it is asked, so adding
an entry means adding a file, never editing a list. Unknown names are a user error (one
line naming the known ones), a name registered twice a programming error.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar, overload

from petite_fl.errors import ConfigError

T = TypeVar("T")
_MISSING = object()


def unknown_entry(kind: str, name: str, known: Iterable[str]) -> ConfigError:
    """The one-line error for a name no entry of `kind` has (shared with the scanner files)."""
    return ConfigError(f"unknown {kind} '{name}' (known: {', '.join(known) or 'none'})")


class Registry(Generic[T]):
    """Entries of one kind by name, filled by the modules of `package` as they are imported.

    `order` lists names that come first in `names()` (listings whose order users know);
    every other name follows alphabetically, so a new entry needs no edit here.
    """

    def __init__(self, kind: str, package: str, order: Sequence[str] = ()) -> None:
        self.kind = kind
        self.package = package
        self.order = tuple(order)
        self._entries: dict[str, T] = {}
        self._loaded = False

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name, entry=_MISSING):
        """Add `entry` under `name`; without `entry`, a decorator that adds what it decorates."""
        if entry is _MISSING:
            return lambda decorated: self.register(name, decorated)
        if not name:
            raise ValueError(f"a {self.kind} needs a name to be registered")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry
        return entry

    def load(self) -> None:
        """Import every module of the package once (each registers its entries)."""
        if self._loaded:
            return
        self._loaded = True  # set first: the modules imported here import this registry
        try:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
                importlib.import_module(module.name)
        except BaseException:
            self._loaded = False
            raise

    def get(self, name: str) -> T:
        """The entry called `name`, or a ConfigError naming the known ones."""
        self.load()
        if name not in self._entries:
            raise unknown_entry(self.kind, name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name: those in `order` first, then the rest alphabetically."""
        self.load()
        first = [n for n in self.order if n in self._entries]
        return first + sorted(set(self._entries) - set(first))

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs in the order of `names()`."""
        return ((n, self._entries[n]) for n in self.names())

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries
