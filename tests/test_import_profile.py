"""The scanner profile of an imported series (#16): a registered scanner when the grid matches,
else a drafted YAML that the project's own scanner loader accepts once copied into a config folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.profile import VOXEL_TOLERANCE, scanner_profile
from petite_fl.scanners import get_scanner


def series_on(matrix: tuple[int, int, int], voxel: tuple[float, float, float], **info: str) -> DynamicSeries:
    affine = np.diag([*voxel, 1.0])
    return DynamicSeries(Path("/data/sub"), "dicom", np.zeros((*matrix, 1), np.float32), affine, [0.0], [300.0],
                         "Bq/mL", True, dict(info))


def test_a_series_on_scanner1s_grid_within_the_tolerance_is_scanner1() -> None:
    s1 = get_scanner("scanner1")
    voxel = tuple(v * (1 + VOXEL_TOLERANCE / 2) for v in s1.voxel_mm)   # header rounding
    profile = scanner_profile(series_on(s1.matrix, voxel))
    assert profile.scanner == "scanner1" and not profile.drafted
    assert "name: scanner1" in profile.text and "scanner1" in profile.reason


def test_a_voxel_size_off_by_more_than_the_tolerance_is_not_scanner1() -> None:
    s1 = get_scanner("scanner1")
    voxel = tuple(v * (1 + 2 * VOXEL_TOLERANCE) for v in s1.voxel_mm)
    assert scanner_profile(series_on(s1.matrix, voxel)).drafted


def test_a_foreign_grid_gets_a_draft_that_loads_through_the_scanner_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    series = series_on((128, 128, 63), (2.0, 2.0, 2.425), Manufacturer="SIEMENS", ManufacturersModelName="HR+",
                       ReconMethodName="FBP")
    profile = scanner_profile(series)
    assert profile.drafted and "match no registered scanner" in profile.reason
    assert profile.text.count("# review:") >= 4
    folder = tmp_path / "configs" / "scanner"
    folder.mkdir(parents=True)
    (folder / "siemens-hr.yaml").write_text(profile.text)
    monkeypatch.setenv("PETITE_FL_CONFIG_PATH", str(tmp_path / "configs"))
    scanner = get_scanner("siemens-hr")
    assert scanner.matrix == (128, 128, 63) and scanner.voxel_mm == (2.0, 2.0, 2.425)
    assert scanner.vendor == "Siemens" and scanner.patch == (64, 64, 48)   # the vendor list's spelling
    assert scanner.acquisition.recon.algorithm == "FBP" and scanner.acquisition.recon.noise_ramp == 1.0
    assert scanner.acquisition.fwhm_mm == (5.0, 5.0, 5.0)
