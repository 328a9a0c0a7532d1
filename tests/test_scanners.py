"""The scanner registry holds the paper's five scanners and refuses malformed entries."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from petite_fl.errors import ConfigError
from petite_fl.scanners import _load, available_scanners, get_scanner, scanner_from_dict

# The PETITE paper's scanner table: matrix, voxel size (mm), vendor, site, training patch.
PAPER = {
    "scanner1": ((192, 192, 136), (1.21875,) * 3, "Siemens", "UC", (64, 64, 64)),
    "scanner2": ((192, 192, 128), (1.21875,) * 3, "Siemens", "UC", (64, 64, 64)),
    "scanner3": ((224, 224, 81), (1.01821, 1.01821, 2.02699), "Siemens", "UC", (64, 64, 64)),
    "scanner4": ((128, 128, 90), (2.0,) * 3, "Philips", "OHSU", (64, 64, 64)),
    "scanner5": ((128, 128, 63), (2.05941, 2.05941, 2.425), "Siemens", "UCSD", (64, 64, 32)),
}


def test_registry_lists_the_five_paper_scanners():
    assert set(PAPER) <= set(available_scanners())


@pytest.mark.parametrize("name", sorted(PAPER))
def test_scanner_matches_the_paper_table(name):
    s = get_scanner(name)
    assert (s.matrix, s.voxel_mm, s.vendor, s.site, s.patch) == PAPER[name]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_each_acquisition_parameter_has_a_rationale(name):
    assert {"fwhm_mm", "counts_per_voxel", "recon"} <= set(get_scanner(name).rationale)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_affine_is_ras_with_the_scanner_zooms_and_a_centred_field_of_view(name):
    s = get_scanner(name)
    assert nib.aff2axcodes(s.affine) == ("R", "A", "S")
    assert np.allclose(nib.affines.voxel_sizes(s.affine), s.voxel_mm)
    centre = s.affine @ np.array([*((np.array(s.matrix) - 1) / 2), 1.0])
    assert np.allclose(centre[:3], 0.0)


def _valid() -> dict:
    return {
        "name": "x", "vendor": "V", "site": "S", "matrix": [64, 64, 40],
        "voxel_mm": [2, 2, 2], "patch": [32, 32, 32],
        "acquisition": {"fwhm_mm": [6, 6, 6], "counts_per_voxel": 50,
                        "recon": {"algorithm": "OSEM", "noise_ramp": 0.5}},
    }


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda d: d.pop("matrix"), "missing field"),
        (lambda d: d.update(voxel_mm=[2, 0, 2]), "voxel_mm"),
        (lambda d: d.update(matrix=[64, 64]), "matrix"),
        (lambda d: d.update(patch=[32, 32, 64]), "larger than the matrix"),
        (lambda d: d["acquisition"].update(counts_per_voxel=-1), "counts_per_voxel"),
        (lambda d: d["acquisition"]["recon"].update(noise_ramp=5), "noise_ramp"),
    ],
)
def test_malformed_scanner_entries_are_refused_with_the_field_named(change, fragment):
    data = _valid()
    change(data)
    with pytest.raises(ConfigError, match=fragment):
        scanner_from_dict(data, source="x.yaml")


def test_unknown_scanner_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"known: .*scanner1"):
        get_scanner("scanner99")


def test_scanner_file_name_must_match_its_name(tmp_path: Path):
    path = tmp_path / "other.yaml"
    path.write_text("name: x\nvendor: V\nsite: S\nmatrix: [8, 8, 8]\nvoxel_mm: [2, 2, 2]\n"
                    "patch: [8, 8, 8]\nacquisition: {fwhm_mm: [6, 6, 6], counts_per_voxel: 5,"
                    " recon: {algorithm: A, noise_ramp: 1}}\n")
    with pytest.raises(ConfigError, match="must match the file name"):
        _load(path)
