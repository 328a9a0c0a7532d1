"""What a site's own files can make `petite-data import` write or read (issue 26, item 8).

Free-text DICOM fields (a technologist's typing: a patient's name in the model field, escape
codes) must not reach anything outside `private/`: only coded values, numbers and names from a
known vocabulary travel. And no symbolic link is followed out of the source tree. Real DICOM
written with pydicom and converted by the real dcm2niix, real BIDS-PET and ECAT files; an audit
hook records which files Python opens and which programs it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf
from pet_dicom import known_frames, write_pet_dicom

from petite_fl.data.importer import MAPPING_FILE, import_site
from petite_fl.data.manifest import read_manifest
from petite_fl.scanners import scanner_from_dict

PATIENT_LIKE = "DOE^JOHN 1957-03-02"
ESCAPES = "\x1b[31mDOE^JOHN 1957-03-02\x1b[0m\nINJECTED"
FREE_TEXT = ("Manufacturer", "ManufacturerModelName", "SeriesDescription", "InstitutionName", "ReconstructionMethod")
NEEDLES = ("DOE", "JOHN", "1957-03-02", "\x1b", "INJECTED")


def _public_bytes(site: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file of the site outside private/; of a NIfTI, its header and extensions (the rest are voxels)."""
    for path in sorted(site.rglob("*")):
        if path.is_file() and "private" not in path.relative_to(site).parts:
            if path.name.endswith(".nii.gz"):
                yield path, nib.openers.Opener(path).read()[: int(nib.load(path).header.get_data_offset())]
            else:
                yield path, path.read_bytes()


def test_free_text_header_fields_stay_in_private(tmp_path: Path, capsys) -> None:
    """The attack: a patient-like string, then escape codes and a newline, in every free-text field."""
    from petite_fl.cli.data import main

    for k, payload in enumerate((PATIENT_LIKE, ESCAPES)):
        write_pet_dicom(tmp_path / "src" / f"s{k}", known_frames(seed=k), tags=dict.fromkeys(FREE_TEXT, payload))
    site = tmp_path / "site"
    assert main(["import", str(tmp_path / "src"), "--out", str(site), "--site", "hospital"]) == 0
    console = capsys.readouterr()
    for path, data in _public_bytes(site):
        for needle in NEEDLES:
            assert needle.encode() not in data, (path, needle)
    for needle in NEEDLES:
        assert needle not in console.out + console.err, needle
    assert len(read_manifest(site / "manifest.json").subjects) == 2   # both read, escape codes and all
    prov = json.loads((site / "sub-001_provenance.json").read_text())
    assert prov["Manufacturer"] in (None, "other")    # dcm2niix itself drops a vendor it does not know
    assert prov["ManufacturersModelName"] is None
    assert prov["ReconMethodName"] == "other" and prov["Modality"] == "PT"
    draft = scanner_from_dict(OmegaConf.to_container(OmegaConf.load(site / "scanner-draft.yaml")))
    assert draft.vendor in ("unknown", "other") and draft.acquisition.recon.algorithm == "other"
    assert PATIENT_LIKE in (site / MAPPING_FILE).read_text()   # the raw text, for the review, kept private


def test_known_header_values_travel_in_their_vocabulary_spelling(tmp_path: Path) -> None:
    write_pet_dicom(tmp_path / "src" / "s0", known_frames(), tags={"Manufacturer": "SIEMENS",
                    "ManufacturerModelName": "Biograph128_mCT", "ReconstructionMethod": "OSEM3D 4i21s PSF+TOF"})
    import_site(tmp_path / "src", tmp_path / "site")
    prov = json.loads((tmp_path / "site" / "sub-001_provenance.json").read_text())
    assert (prov["Manufacturer"], prov["ManufacturersModelName"]) == ("Siemens", "Biograph mCT")
    assert prov["ReconMethodName"] == "OSEM + PSF + TOF"


@pytest.mark.parametrize(("field", "text", "expected"), [
    ("Manufacturer", "GE MEDICAL SYSTEMS", "GE"), ("Manufacturer", "CTI/Siemens", "Siemens"),
    ("Manufacturer", "TOSHIBA_MEC", "Canon/Toshiba"), ("Manufacturer", "UIH", "United Imaging"),
    ("Manufacturer", "Siemens and Philips", "other"), ("Manufacturer", PATIENT_LIKE, "other"),
    ("ManufacturersModelName", "Biograph64", "Biograph 64"), ("ManufacturersModelName", "ECAT 962", "ECAT 962"),
    ("ManufacturersModelName", f"Biograph mCT {PATIENT_LIKE}", None),
    ("ReconMethodName", "Filtered Back Projection", "FBP"), ("ReconMethodName", "FORE + FBP", "FBP"),
    ("ReconMethodName", "3D-RAMLA", "RAMLA"), ("ReconMethodName", "VPFXS", "OSEM + PSF + TOF"),
    ("ReconMethodName", "Q.Clear", "BSREM"), ("ReconMethodName", ESCAPES, "other"),
    ("TracerName", "[18F]FDG", "FDG"), ("TracerName", "AV-45", "florbetapir"), ("TracerName", PATIENT_LIKE, "other"),
    ("Modality", "PT", "PT"), ("Modality", ESCAPES, "other"),
])
def test_each_public_header_value_comes_from_the_vocabulary(field: str, text: str, expected: str | None) -> None:
    from petite_fl.data.provenance import public_header

    assert public_header({field: text})[field] == expected


# --- symbolic links out of the source tree -------------------------------------------------------

OPENED: list[tuple[str, object]] | None = None


def _audit(event: str, args: tuple) -> None:
    if OPENED is not None and event in ("open", "subprocess.Popen"):
        OPENED.append((event, args[0] if event == "open" else args[1]))


@contextmanager
def recording() -> Iterator[list[tuple[str, object]]]:
    """Files Python opens and programs it starts meanwhile (an audit hook cannot be removed: it idles after)."""
    global OPENED
    if not getattr(sys, "_petite_import_audit", False):
        sys.addaudithook(_audit)
        sys._petite_import_audit = True  # type: ignore[attr-defined]
    OPENED = []
    try:
        yield OPENED
    finally:
        OPENED = None


def _touched(events: list[tuple[str, object]], outside: Path) -> list[str]:
    """Opened paths that resolve into `outside`, and program arguments naming a path there or a linked folder."""
    hits = []
    for event, arg in events:
        names = [arg] if event == "open" else list(arg or [])
        for name in names:
            if isinstance(name, (str, bytes, os.PathLike)) and not isinstance(name, int):
                path = Path(os.fsdecode(name))
                if path.is_absolute() and (path.resolve().is_relative_to(outside) or (path.is_dir() and any(
                        p.is_symlink() for p in path.rglob("*")))):
                    hits.append(f"{event}: {path}")
    return hits


def _bids_sidecar(n: int = 6) -> dict:
    return {"Modality": "PT", "Units": "Bq/mL", "ImageDecayCorrected": True,
            "FrameTimesStart": [1800 + 300 * k for k in range(n)], "FrameDuration": [300] * n}


def _dicom_folder(src: Path, outside: Path) -> str:
    """A folder of links to another patient's DICOM files outside the source."""
    secret = write_pet_dicom(outside / "other-patient", known_frames((8, 6, 4)), patient="SECRET^PATIENT")
    (src / "s1").mkdir(parents=True)
    for f in secret:
        (src / "s1" / f.name).symlink_to(f)
    return f"s1/{secret[0].name}"


def _dicom_stray_link(src: Path, outside: Path) -> str:
    """A real series with one extra file: a link to an /etc-like secret outside the source."""
    write_pet_dicom(src / "s1", known_frames((8, 6, 4)))
    outside.mkdir(parents=True)
    (outside / "passwd").write_text("root:x:0:0:SECRET:/root:/bin/bash\n")
    (src / "s1" / "zz.dcm").symlink_to(outside / "passwd")
    return "s1/zz.dcm"


def _nifti_image(src: Path, outside: Path) -> str:
    """A BIDS-PET image that is a link to a volume outside, beside a real sidecar."""
    pet = src / "sub-01" / "pet"
    pet.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(known_frames((8, 6, 4)), np.eye(4)), outside / "secret.nii.gz")
    (pet / "sub-01_pet.nii.gz").symlink_to(outside / "secret.nii.gz")
    (pet / "sub-01_pet.json").write_text(json.dumps(_bids_sidecar()))
    return "sub-01/pet/sub-01_pet.nii.gz"


def _nifti_sidecar(src: Path, outside: Path) -> str:
    """A real BIDS-PET image whose sidecar is a link to a file outside."""
    pet = src / "sub-01" / "pet"
    pet.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(known_frames((8, 6, 4)), np.eye(4)), pet / "sub-01_pet.nii.gz")
    (outside / "secret.json").write_text(json.dumps({**_bids_sidecar(), "Secret": "SECRET^PATIENT"}))
    (pet / "sub-01_pet.json").symlink_to(outside / "secret.json")
    return "sub-01/pet/sub-01_pet.json"


def _ecat(src: Path, outside: Path) -> str:
    """An ECAT file that is a link to one outside (nibabel's sample)."""
    sample = Path(nib.__file__).parent / "tests" / "data" / "tinypet.v"
    if not sample.is_file():
        pytest.skip("nibabel's sample ECAT file is not installed")
    outside.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample, outside / "secret.v")
    src.mkdir(parents=True)
    (src / "scan.v").symlink_to(outside / "secret.v")
    return "scan.v"


@pytest.mark.parametrize("attack", [_dicom_folder, _dicom_stray_link, _nifti_image, _nifti_sidecar, _ecat],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_symlink_out_of_the_source_is_not_followed(tmp_path: Path, attack) -> None:
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    link = attack(src, outside)
    with recording() as events:
        report = import_site(src, tmp_path / "site")
    assert _touched(events, outside) == []
    assert report.imported == []
    lines = [line for line in report.skipped if link in line]
    assert len(lines) == 1 and "symbolic link" in lines[0] and "outside the source" in lines[0], report.skipped
    assert "\n" not in lines[0]


def test_links_inside_the_source_are_followed(tmp_path: Path) -> None:
    """A tree that links within itself (a BIDS dataset managed by git-annex does) imports as before."""
    src = tmp_path / "src"
    store = src / ".store"
    store.mkdir(parents=True)
    pet = src / "sub-01" / "pet"
    pet.mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = (known_frames((12, 10, 8)) + rng.random((12, 10, 8, 6)).astype(np.float32)).astype(np.float32)
    nib.save(nib.Nifti1Image(frames, np.eye(4) * 2 + np.diag([0, 0, 0, -1])), store / "blob.nii.gz")
    (pet / "sub-01_pet.nii.gz").symlink_to(Path("../../.store/blob.nii.gz"))
    (pet / "sub-01_pet.json").write_text(json.dumps(_bids_sidecar()))
    report = import_site(src, tmp_path / "site")
    assert [r["id"] for r in report.imported] == ["sub-001"] and report.skipped == []
