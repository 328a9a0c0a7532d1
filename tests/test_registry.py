"""The one registry style: entries found by importing their package, checked names, one-line errors."""

from __future__ import annotations

import sys
import uuid

import pytest

from petite_fl.errors import ConfigError


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A throwaway package whose modules register into `<package>.registry.THINGS` when imported."""
    name = f"plugins_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "registry.py").write_text(
        f"from petite_fl.registry import Registry\nTHINGS = Registry('thing', '{name}', order=('zeta',))\n")
    for entry in ("alpha", "zeta", "beta"):
        (package / f"{entry}.py").write_text(
            f"from {name}.registry import THINGS\n\n@THINGS.register('{entry}')\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_every_module_of_the_package_registers_without_a_list(plugins):
    things = __import__(f"{plugins}.registry", fromlist=["THINGS"]).THINGS
    assert f"{plugins}.beta" not in sys.modules  # nothing loaded until asked
    assert things.names() == ["zeta", "alpha", "beta"]  # `order` first, then alphabetical
    assert things.get("beta").__module__ == f"{plugins}.beta" and "alpha" in things
    assert [n for n, _ in things.items()] == things.names()


def test_an_unknown_name_is_a_one_line_config_error_naming_the_known_ones(plugins):
    things = __import__(f"{plugins}.registry", fromlist=["THINGS"]).THINGS
    with pytest.raises(ConfigError) as caught:
        things.get("gamma")
    assert str(caught.value) == "unknown thing 'gamma' (known: zeta, alpha, beta)"


def test_a_name_registered_twice_or_empty_is_refused(plugins):
    things = __import__(f"{plugins}.registry", fromlist=["THINGS"]).THINGS
    things.load()
    with pytest.raises(ValueError, match="thing 'alpha' registered twice"):
        things.register("alpha", object())
    with pytest.raises(ValueError, match="needs a name"):
        things.register("", object())
    assert things.names() == ["zeta", "alpha", "beta"]
