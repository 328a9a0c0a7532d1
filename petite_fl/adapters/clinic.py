"""The clinic loop (#28): a short scan from the site's PACS, denoised with the site's adapter, the derived
series stored back beside it. `petite infer --site X --from-pacs … --study UID|--series UID --to-pacs …`.

Glue only: the PACS clients (`petite_fl.pacs`) retrieve into a private temporary folder, `infer_site`
with `out_format="dicom"` writes one derived PET series per input series (deterministic UIDs, the
source's study), and each is stored and confirmed by the PACS's own instance count. The temporary
folder is removed afterwards, also on error. A series that fails is one line; the rest go on. What was
stored is recorded at the site (`<site_root>/<site>/clinic/`, 0700): the inference sidecar and the
store's confirmation, by hashes, so the site can answer what it put on its PACS, with what model.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pydicom.misc import is_dicom

from petite_fl.adapters.dicom_out import DERIVED_BY
from petite_fl.atomic import private_dir, write_json
from petite_fl.pacs.connection import PacsError
from petite_fl.pacs.series import uid_hash
from petite_fl.pacs.transfer import Pacs, Stored, retrieve_matching, store_series


@dataclass
class ClinicReport:
    """What came back to the PACS (confirmed), what failed (one line each), and the inference sidecars."""

    stored: list[Stored] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    passed_over: list[str] = field(default_factory=list)   # series petite-fl derived itself: not a short scan
    sidecars: list[dict[str, Any]] = field(default_factory=list)
    records: list[Path] = field(default_factory=list)      # the site's record of each stored series


def infer_from_pacs(cfg: DictConfig, site: str, source: Pacs, target: Pacs, query: dict[str, str], *,
                    run: str = "latest", site_root: Path | None = None, device: str | None = None,
                    backbone: Path | None = None, input_minutes: float = 5.0) -> ClinicReport:
    """Retrieve what `query` matches on `source`, denoise it with the site's adapter, store it on `target`."""
    from petite_fl.adapters.infer import infer_site

    work = Path(tempfile.mkdtemp(prefix="petite-pacs-"))  # 0700: the patient's images stay private
    try:
        got = retrieve_matching(source, query, work / "in")
        report = ClinicReport(failed=[_named(line, work, source.label) for line in got.failed])
        for uid, folder in list(got.folders.items()):
            if _made_by_petite(folder):  # a study's earlier result: denoising it again would be a new, wrong series
                report.passed_over.append(f"PACS {source.label}: series {uid_hash(uid)} is a series petite-fl "
                                          "derived (DerivationDescription); passed over")
                shutil.rmtree(got.folders.pop(uid))
        if not got.folders:
            return report
        # the retrieved series together, so that a scan stored as one series per frame is grouped back into one
        # (data.readers.series_index), as a folder import groups it
        done = infer_site(cfg, site, [work / "in"], work / "out", run=run, site_root=site_root,
                          device=device, backbone=backbone, quiet=True, out_format="dicom",
                          input_minutes=input_minutes)
        report.sidecars = list(done.sidecars)
        report.failed += [_named(line, work, source.label) for line in done.skipped]
        source_studies = {_study_of(folder) for folder in got.folders.values()}
        for folder in done.derived:
            files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_dicom(p))
            try:
                stored = store_series(target, files)
            except PacsError as exc:
                report.failed.append(str(exc))
                continue
            if stored.study_uid not in source_studies:  # the derived series must sit beside its source
                report.failed.append(f"PACS {target.label}: {stored.name} was stored outside the source's study")
            report.stored.append(stored)
            made = next((s for s in done.sidecars if s.get("dicom_series", {}).get("folder") == Path(folder).name),
                        None)
            if made is not None:
                root = Path(site_root if site_root is not None else cfg.federation.site_root).expanduser()
                report.records.append(record(root, site, made, stored, target.label))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def record(root: Path, site: str, sidecar: dict[str, Any], stored: Stored, pacs: str) -> Path:
    """`<root>/<site>/clinic/<created>-<stem>.json`: what made the series and where it went, by hashes only."""
    def sha(uid: str) -> str:
        return hashlib.sha256(uid.encode()).hexdigest()

    path = private_dir(root / site / "clinic") / f"{sidecar['created'].replace(':', '')}-{sidecar['stem']}.json"
    write_json(path, {**sidecar, "stored": {"pacs": pacs, "study_uid_sha256": sha(stored.study_uid),
                                            "series_uid_sha256": sha(stored.series_uid),
                                            "instances": stored.instances, "confirmed": True}})
    return path


def _study_of(folder: Path) -> str:
    import pydicom

    first = next(p for p in sorted(folder.iterdir()) if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)


def _made_by_petite(folder: Path) -> bool:
    import pydicom

    first = next((p for p in sorted(folder.iterdir()) if p.is_file()), None)
    if first is None:
        return False
    head = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["DerivationDescription"])
    return str(head.get("DerivationDescription", "")).startswith(DERIVED_BY)


def _named(line: str, work: Path, label: str) -> str:
    """A line that names the temporary folder names the PACS instead (the folder is gone when it is read)."""
    return line.replace(f"{work}/in/", f"{label} series ").replace(str(work), label)
