"""A site's adapter catalog: run names as the site stores them, and which adapter is the latest."""

from __future__ import annotations

import os

import pytest
import torch

from petite_fl.adapters.catalog import pick, site_adapters
from petite_fl.adapters.export import output_folder
from petite_fl.artifacts import save_adapter
from petite_fl.errors import PetiteError
from petite_fl.federation.site.paths import run_folder

BACKBONE = {"sha256": "ab" * 32, "model": "unetr", "config": {}}


def _adapter(root, site: str, run: str, created: str, mtime: int):
    path = run_folder(root, site, run) / "adapter.safetensors"
    path.parent.mkdir(parents=True)
    save_adapter(path, {"w": torch.zeros(2)}, {"kind": "lora"}, BACKBONE,
                 extra={"card": {"site": site, "run": run, "created": created}})
    os.utime(path, ns=(mtime, mtime))
    return path


def test_a_run_is_found_under_the_folder_name_the_site_gave_it_and_never_outside_runs(tmp_path):
    path = _adapter(tmp_path, "scanner5", "my run/1", "2026-11-30T10:00:00Z", 10**18)
    assert path.parent.name == "my_run_1"
    assert pick(tmp_path, "scanner5", "my run/1").path == path
    with pytest.raises(PetiteError, match=r"no adapter of run '\.\./\.\.'"):
        pick(tmp_path, "scanner5", "../..")


def test_latest_is_the_last_finished_even_within_one_second(tmp_path):
    # "a-late" sorts first by name, so only the files' times can make it the latest
    _adapter(tmp_path, "scanner5", "b-early", "2026-11-30T10:00:00Z", 10**18)
    late = _adapter(tmp_path, "scanner5", "a-late", "2026-11-30T10:00:00Z", 10**18 + 5)
    assert pick(tmp_path, "scanner5").path == late
    assert [e.run for e in site_adapters(tmp_path, "scanner5")] == ["b-early", "a-late"]


def test_an_export_into_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(PetiteError, match=r"--out .*out: a file, not a folder"):
        output_folder(tmp_path / "out")
