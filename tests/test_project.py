"""The README's promises about how to run things stay true."""

from __future__ import annotations

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
