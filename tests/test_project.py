"""The README's promises about how to run things stay true."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _command_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_ci_runs_exactly_the_readme_test_command():
    ci = _command_lines((ROOT / ".ci" / "run").read_text())
    readme = _command_lines((ROOT / "README.md").read_text())
    assert len(ci) == 1 and "pytest" in ci[0]
    assert ci[0] in readme
    assert "ruff check" in (ROOT / ".ci" / "run").read_text()


def test_readme_opens_with_the_main_job_then_the_test_command():
    readme = _command_lines((ROOT / "README.md").read_text())
    assert len(readme) >= 2
    assert readme[0].endswith("petite compare")  # the federated local-vs-federated comparison
    assert "pytest" in readme[1]


def test_ci_checks_the_installed_wheel_after_the_tests_and_the_linter():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("pytest") < ci.index("ruff check") < ci.index(".ci/wheel_check")
    assert (ROOT / ".ci" / "wheel_check").stat().st_mode & 0o111  # executable


def test_the_package_imports_nothing_that_only_a_checkout_has():
    checkout_only = {"simulation", "tests", "server", "client", "conftest"}
    for path in (ROOT / "petite_fl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in checkout_only, f"{path.relative_to(ROOT)} imports {name}"
