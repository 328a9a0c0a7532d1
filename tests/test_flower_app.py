"""The Flower app installed with the package and the checkout's `flwr run .` app are one app."""

from __future__ import annotations

import tomllib
from pathlib import Path

from flwr.supercore.object_ref import validate

from petite_fl import __version__
from petite_fl.runconfig import app_defaults, app_dir

ROOT = Path(__file__).resolve().parent.parent


def _app(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())


def test_packaged_and_checkout_apps_have_the_same_run_config_defaults_and_version():
    packaged, checkout = _app(app_dir()), _app(ROOT)
    assert app_defaults() == app_defaults(ROOT)
    assert packaged["tool"]["flwr"]["app"]["config"] == checkout["tool"]["flwr"]["app"]["config"]
    for key in ("name", "version", "description", "license"):
        assert packaged["project"][key] == checkout["project"][key], key
    assert packaged["project"]["version"] == __version__
    assert packaged["tool"]["flwr"]["app"]["publisher"] == checkout["tool"]["flwr"]["app"]["publisher"]


def test_packaged_app_holds_no_code_and_names_the_installed_package_apps():
    """From a wheel the app folder is read-only package data: its components must import from petite_fl."""
    assert sorted(p.name for p in app_dir().iterdir()) == ["pyproject.toml"]
    components = _app(app_dir())["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "petite_fl.federation.flower.app:server_app",
                          "clientapp": "petite_fl.federation.flower.app:client_app"}
    for ref in components.values():  # what `flwr run` checks before it builds the FAB
        assert validate(ref, check_module=True, project_dir=app_dir()) == (True, None)


def test_the_wheel_declares_the_app_and_every_config_as_package_data():
    data = _app(ROOT)["tool"]["setuptools"]["package-data"]
    assert "flower-app/pyproject.toml" in data["petite_fl.experiments"]
    configs = Path(__file__).resolve().parent.parent / "petite_fl" / "configs"
    shipped = {p for pattern in data["petite_fl.configs"] for p in configs.glob(pattern)}
    assert shipped == set(configs.rglob("*.yaml"))
