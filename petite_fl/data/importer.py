"""`petite-data import`: a site's own dynamic PET series become a pseudonymised site (#16).

For each series the readers find: check → pair → `sub-001…` NIfTI pairs (as `synth` writes
them), a manifest with seeded splits, `sub-XXX_provenance.json` (header facts, a hash of the
series UID, never an identity value) and a scanner profile (the registered one whose matrix
and voxel size match, or a drafted YAML to review). The sub-id ↔ source mapping lives only in
`private/pseudonyms.json` (0600 in a 0700 folder). The site is built beside `out` and swapped
in, so an interrupted import leaves none half-built; the same sources import only once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from petite_fl.atomic import atomic_path, private_dir, write_json
from petite_fl.data.dynamic import DynamicSeries
from petite_fl.data.manifest import SPLITS, write_manifest
from petite_fl.data.nifti import save_volume
from petite_fl.data.pairing import MOTION_NCC, check_series, input_frames, make_pair
from petite_fl.data.profile import scanner_profile, series_geometry
from petite_fl.data.provenance import public_header
from petite_fl.data.source_tree import Source, screen
from petite_fl.data.synthetic import MANIFEST_FILE, subject_id
from petite_fl.data.synthetic import _swap_in as swap_in  # the same build-beside-and-swap steps
from petite_fl.errors import ConfigError, DataError, PetiteError
from petite_fl.pacs.connection import PacsError
from petite_fl.pacs.series import SeriesRef, describe_query
from petite_fl.pacs.transfer import Pacs, retrieve_matching
from petite_fl.scanners import get_scanner

#: Bump when the importer's output changes for the same sources: sites are then re-imported.
IMPORTER_VERSION = 1
IMPORT_FILE = "import.json"
MAPPING_FILE = "private/pseudonyms.json"
SCANNER_DRAFT = "scanner-draft.yaml"
DEFAULT_SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}

#: a finder returns candidates: paths (a file or folder per series) or series of files (DICOM, by UID, #28)
Finder = Callable[[Path], list[Source]]
Reader = Callable[[Source], DynamicSeries]


@dataclass
class ImportReport:
    """What an import made (or would make) and what it skipped, one line per skipped series."""

    out: Path
    site: str
    scanner: str | None = None
    imported: list[dict[str, Any]] = field(default_factory=list)  # id, split, source, notes
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changed: bool = False
    dry_run: bool = False
    scanner_draft: Path | None = None


def parse_splits(text: str) -> dict[str, float]:
    """`train=0.7,val=0.1,test=0.2` (weights, normalised) → {split: fraction}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in SPLITS:
            raise ConfigError(f"--splits: '{part}' is not split=weight with split in {', '.join(SPLITS)}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--splits: '{value}' in '{part}' is not a number") from None
    if not out or any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise ConfigError(f"--splits: '{text}' needs non-negative weights with a positive sum")
    return out


def assign_splits(n: int, splits: dict[str, float], seed: int) -> list[str]:
    """A seeded shuffle of n subjects into splits in the given proportions (train takes the rest)."""
    total = sum(splits.values())
    counts = {k: round(n * splits.get(k, 0.0) / total) for k in ("val", "test")}
    while sum(counts.values()) > n:
        counts[max(counts, key=counts.get)] -= 1
    labels = ["val"] * counts["val"] + ["test"] * counts["test"]
    labels = ["train"] * (n - len(labels)) + labels
    order = np.random.default_rng(seed).permutation(n)
    return [labels[int(i)] for i in np.argsort(order)]


def source_fingerprint(sources: list[Source], params: dict[str, Any]) -> str:
    """Hash of the found sources (each file's path, size, mtime) and the import's parameters."""
    files = []
    for src in sorted(sources, key=_source_key):
        found = src.files if not isinstance(src, Path) else [src] if src.is_file() else \
            (p for p in src.rglob("*") if p.is_file())
        for f in sorted(found):
            st = f.stat()
            files.append([str(f), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"v": IMPORTER_VERSION, "files": files, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _source_key(source: Source) -> tuple[Path, str]:
    """Path order: a series of files sorts by its first file."""
    return (source if isinstance(source, Path) else source.files[0]), str(source)


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _default_readers() -> tuple[Finder, Reader]:
    try:  # written beside this module by the readers' part of #16
        from petite_fl.data.readers import find_series, read_series
    except ImportError:
        raise DataError("petite_fl.data.readers is not installed: no format reader is available "
                        "to find DICOM, ECAT or BIDS-PET series") from None
    return find_series, read_series


def is_current(out: Path, fingerprint: str) -> bool:
    """True when `out` holds a complete import of exactly these sources and parameters."""
    try:
        info = json.loads((out / IMPORT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("fingerprint") == fingerprint and (out / MANIFEST_FILE).is_file()


def import_site(
    src: str | Path,
    out: str | Path,
    site: str | None = None,
    scanner: str | None = None,
    splits: dict[str, float] | None = None,
    seed: int = 0,
    dry_run: bool = False,
    input_minutes: float = 5.0,
    expect_frames: int = 6,
    dtype: str = "int16",
    on_subject: Callable[[dict[str, Any]], None] | None = None,
    on_found: Callable[[int], None] | None = None,
    find: Finder | None = None,
    read: Reader | None = None,
) -> ImportReport:
    """Import every dynamic series under `src` into the site folder `out` (see module doc)."""
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    if not src.exists():
        raise DataError(f"{src}: source not found")
    if dtype not in ("int16", "float32"):
        raise ConfigError(f"dtype '{dtype}' is not int16 or float32")
    if scanner is not None:
        get_scanner(scanner)  # an unknown name is one line listing the known ones
    if find is None or read is None:
        default_find, default_read = _default_readers()
        find, read = find or default_find, read or default_read
    splits = splits or dict(DEFAULT_SPLITS)
    report = ImportReport(out=out, site=site or out.name, dry_run=dry_run)
    found = [p if not isinstance(p, str) else Path(p) for p in find(src)]
    sources, refused = screen(src, sorted(found, key=_source_key))  # no link followed out of src
    report.skipped += refused
    if on_found:
        on_found(len(sources))
    params = {"site": report.site, "scanner": scanner, "splits": splits, "seed": seed,
              "input_minutes": input_minutes, "expect_frames": expect_frames, "dtype": dtype}
    fingerprint = source_fingerprint(sources, params)
    with nullcontext() if dry_run else _site_lock(out):
        if not dry_run and is_current(out, fingerprint):
            info = json.loads((out / IMPORT_FILE).read_text())
            report.scanner = info.get("scanner")
            report.imported = [{"id": s, "split": sp} for s, sp in info.get("subjects", {}).items()]
            return report
        return _build(sources, read, out, report, scanner, splits, seed, fingerprint,
                      (expect_frames, input_minutes, np.int16 if dtype == "int16" else np.float32), on_subject)


@contextmanager
def _site_lock(out: Path) -> Iterator[None]:
    """Two imports into one site at once: one builds, the other waits and then finds it current."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(sources: list[Source], read: Reader, out: Path, report: ImportReport, scanner: str | None,
           splits: dict[str, float], seed: int, fingerprint: str, pairing: tuple[int, float, type],
           on_subject: Callable[[dict[str, Any]], None] | None) -> ImportReport:
    """Convert into a sibling folder, then swap it in: `out` is the old site or the new one."""
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        accepted = _convert_all(sources, read, staging, report, *pairing, on_subject)
        if not accepted or report.dry_run:
            return report
        _finish(staging, report, accepted, scanner, splits, seed, fingerprint)
        swap_in(staging, out)
        report.changed = True
        if report.scanner_draft:
            report.scanner_draft = out / SCANNER_DRAFT
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_all(sources: list[Source], read: Reader, staging: Path, report: ImportReport,
                 expect_frames: int, input_minutes: float, dtype: type,
                 on_subject: Callable[[dict[str, Any]], None] | None) -> list[tuple[str, DynamicSeries]]:
    accepted: list[tuple[str, DynamicSeries]] = []
    for source in sources:
        series, line = _read_one(read, source)
        if series is not None:
            problems, notes = check_series(series, expect_frames, MOTION_NCC, input_minutes)
            if len(problems) == 1:
                line = problems[0]
            elif problems:  # still one line: the series once, then each reason
                line = f"{series.label}: " + "; ".join(p.removeprefix(f"{series.label}: ") for p in problems)
        if line is not None:
            report.skipped.append(line)
            row: dict[str, Any] = {"source": str(source), "status": "skipped", "reason": line}
        else:
            sid = subject_id(len(accepted))
            if not report.dry_run:
                _write_subject(staging, sid, series, input_minutes, dtype, notes)
            accepted.append((sid, series))
            report.notes.extend(notes)
            row = {"id": sid, "source": str(source), "status": "imported", "notes": notes}
            report.imported.append(row)
        if on_subject:
            on_subject(row)
    return accepted


def _read_one(read: Reader, source: Source) -> tuple[DynamicSeries | None, str | None]:
    try:
        return read(source), None
    except PetiteError as exc:
        return None, str(exc).splitlines()[0]
    except Exception as exc:  # any library's failure on one file skips that series, not the import
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        return None, f"{source}: unreadable ({type(exc).__name__}: {why})"


def _write_subject(staging: Path, sid: str, series: DynamicSeries, input_minutes: float,
                   dtype: type, notes: list[str]) -> None:
    inp, tgt = make_pair(series, input_minutes)
    matrix, voxel = series_geometry(series)  # as the scanner profile measures it
    # save_volume builds a fresh header: the NIfTI `descrip` and intent names stay empty.
    save_volume(inp, series.affine, staging / f"{sid}_input.nii.gz", dtype=dtype)
    save_volume(tgt, series.affine, staging / f"{sid}_target.nii.gz", dtype=dtype)
    chosen, _ = input_frames(series, input_minutes)
    uid = series.identity.get("SeriesInstanceUID") or series.identity.get("series_uid")
    write_json(staging / f"{sid}_provenance.json", {
        "subject": sid,
        "source_format": series.fmt,
        **public_header(series.info),  # vocabulary values only: free text stays in the private mapping
        "matrix": list(matrix),
        "voxel_mm": [round(v, 5) for v in voxel],
        "frame_start_s": [float(t) for t in series.frame_start],
        "frame_duration_s": [float(t) for t in series.frame_duration],
        "input_frames": [k + 1 for k in chosen],
        "input_minutes": input_minutes,
        "units": series.units if series.units == "Bq/mL" else "other",
        "decay_corrected": series.decay_corrected,
        "series_uid_sha256": hashlib.sha256(str(uid).encode()).hexdigest() if uid else None,
        "notes": [n.replace(series.label, sid) for n in notes],  # the source path may carry an ID
    })


def _raw_header(series: DynamicSeries) -> dict[str, Any]:
    """The header's own text (vendor, model, reconstruction, descriptions), for the private mapping only."""
    return {k: v for k, v in series.info.items() if isinstance(v, str)}


def _finish(staging: Path, report: ImportReport, accepted: list[tuple[str, DynamicSeries]],
            scanner: str | None, splits: dict[str, float], seed: int, fingerprint: str) -> None:
    labels = assign_splits(len(accepted), splits, seed)
    for row, split in zip(report.imported, labels, strict=True):
        row["split"] = split
    profile = None if scanner else scanner_profile(accepted[0][1], name=report.site)
    report.scanner = scanner or profile.scanner
    if profile is not None and profile.drafted:
        with atomic_path(staging / SCANNER_DRAFT) as tmp:
            tmp.write_text(profile.text)
        report.scanner_draft = staging / SCANNER_DRAFT
        report.notes.append(f"{profile.reason.replace(str(accepted[0][1].label), accepted[0][0])}: review "
                            f"{SCANNER_DRAFT}, add it to the scanner config group and import again with --scanner NAME")
    write_manifest(staging / MANIFEST_FILE, site=report.site, scanner=report.scanner, subjects=[
        {"id": sid, "split": split, "input": f"{sid}_input.nii.gz", "target": f"{sid}_target.nii.gz"}
        for (sid, _), split in zip(accepted, labels, strict=True)])
    private_dir(staging / Path(MAPPING_FILE).parent)
    write_json(staging / MAPPING_FILE, {
        sid: {"source": str(s.source), "identity_sha256": _sha256(s.identity), "header": _raw_header(s),
              **({"series": s.hint, "folders": sorted({str(f.parent) for f in s.files})} if s.files else {})}
        for sid, s in accepted})
    write_json(staging / IMPORT_FILE, {
        "format": "petite-fl/site-import", "importer_version": IMPORTER_VERSION,
        "fingerprint": fingerprint, "scanner": report.scanner, "skipped": len(report.skipped),
        "subjects": {sid: split for (sid, _), split in zip(accepted, labels, strict=True)}})


def import_from_pacs(pacs: Pacs, query: Mapping[str, str], out: str | Path,
                     on_series: Callable[[SeriesRef], None] | None = None, **options: Any) -> ImportReport:
    """`import_site` on the series a PACS query matches, retrieved into a private temporary folder
    beside `out` (0700, on the site's own disk) that is removed afterwards, also on error.

    Each series is retrieved whole or not at all; one that fails is a skip line and the rest go on.
    Sources are named `<PACS> series <hash>` in the report and the private mapping, not by the
    temporary path. The temporary copy is new each time, so a PACS import always rebuilds the site."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.pacs-", dir=out.parent))
    try:
        got = retrieve_matching(pacs, query, work, on_series)
        if not got.folders:
            more = f" (and {len(got.failed) - 1} more)" if len(got.failed) > 1 else ""
            raise PacsError(f"PACS {pacs.label}: none of the {len(got.failed)} series matching "
                            f"{describe_query(query)} could be retrieved; the first: {got.failed[0]}{more}")
        report = import_site(work, out, **options)
        report.skipped[:0] = got.failed
        _name_pacs_sources(report, work, pacs.label)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _name_pacs_sources(report: ImportReport, work: Path, label: str) -> None:
    """The temporary folder's paths in what the import reports and keeps, replaced by the PACS and series hash."""
    def name(text: str) -> str:
        return text.replace(f"{work}{os.sep}", f"{label} series ").replace(str(work), label)

    report.skipped = [name(line) for line in report.skipped]
    report.notes = [name(line) for line in report.notes]
    for row in report.imported:
        if "source" in row:
            row["source"] = name(str(row["source"]))
    mapping = report.out / MAPPING_FILE
    if report.changed and mapping.is_file():
        entries = json.loads(mapping.read_text())
        write_json(mapping, {sid: {**e, "source": name(str(e.get("source", ""))),
                                   **({"folders": [name(str(f)) for f in e["folders"]]} if "folders" in e else {})}
                             for sid, e in entries.items()})
