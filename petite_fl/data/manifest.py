"""The site manifest: the on-disk contract between a hospital's images and petite-fl.

A site is a folder (or any place) with one JSON manifest listing NIfTI pairs. Paths are
relative to the manifest's folder unless absolute. See README, "Data layout".

    {
      "format": "petite-fl/site-manifest", "version": 1,
      "site": "scanner1", "scanner": "scanner1",
      "subjects": [
        {"id": "sub-001", "split": "train",
         "input": "sub-001_input.nii.gz", "target": "sub-001_target.nii.gz"}
      ]
    }

Simulation only, optional: `truth` (the noise-free activity on the same grid) and `regions`
(an integer label image on the same grid: 1 = the regions a reader measures, 2 = the
reference region, 0 = elsewhere), given for every subject or for none. Evaluation scores a
prediction against them; training never reads them, and a real site never has them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from petite_fl.atomic import write_json
from petite_fl.errors import DataError

FORMAT = "petite-fl/site-manifest"
VERSION = 1
SPLITS = ("train", "val", "test")
_ENTRY_FIELDS = ("id", "split", "input", "target")
#: simulation only: the noise-free image and the region labels (`regions` needs `truth`)
OPTIONAL_FIELDS = ("truth", "regions")


@dataclass(frozen=True)
class SubjectEntry:
    """One manifest row: a subject's short-scan input and full-scan target."""

    id: str
    split: str
    input: Path
    target: Path
    row: int  # 1-based position in the manifest's subject list
    truth: Path | None = None  # simulation only: the noise-free activity
    regions: Path | None = None  # simulation only: 1 = measured regions, 2 = reference region

    def where(self, manifest: Path) -> str:
        return f"{manifest} row {self.row} (subject '{self.id}')"


@dataclass(frozen=True)
class Manifest:
    """A parsed, structurally valid manifest (image files not yet checked)."""

    path: Path
    site: str
    scanner: str | None
    subjects: tuple[SubjectEntry, ...]

    def split(self, *names: str) -> list[SubjectEntry]:
        unknown = sorted(set(names) - set(SPLITS))
        if unknown:
            raise DataError(f"unknown split(s) {unknown} (allowed: {', '.join(SPLITS)})")
        return [s for s in self.subjects if s.split in names]

    def counts(self) -> dict[str, int]:
        return {name: sum(s.split == name for s in self.subjects) for name in SPLITS}


def read_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest's structure; every error names the file and row."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        raw = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a JSON manifest (binary content)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a manifest must be a JSON object with a 'subjects' list")
    if raw.get("format", FORMAT) != FORMAT:
        raise DataError(f"{path}: format is '{raw.get('format')}', expected '{FORMAT}'")
    if raw.get("version", VERSION) != VERSION:
        raise DataError(f"{path}: manifest version {raw.get('version')} is not supported ({VERSION})")
    rows = raw.get("subjects")
    if not isinstance(rows, list):
        raise DataError(f"{path}: field 'subjects' must be a list of subject entries")
    if not rows:
        raise DataError(f"{path}: the manifest lists no subjects")
    subjects = tuple(_row(path, i, row) for i, row in enumerate(rows, start=1))
    seen: dict[str, int] = {}
    for entry in subjects:
        if entry.id in seen:
            raise DataError(
                f"{path}: duplicate subject '{entry.id}' (rows {seen[entry.id]} and {entry.row})",
                rows=(seen[entry.id], entry.row))
        seen[entry.id] = entry.row
    for name in OPTIONAL_FIELDS:
        have = [e.row for e in subjects if getattr(e, name) is not None]
        if have and len(have) < len(subjects):
            lacking = next(e.row for e in subjects if getattr(e, name) is None)
            raise DataError(f"{path} row {lacking}: no '{name}' field, which rows {_rows(have)} have; "
                            "give it for every subject or for none", rows=(lacking,))
    return Manifest(
        path=path,
        site=str(raw.get("site") or path.parent.name),
        scanner=None if raw.get("scanner") is None else str(raw["scanner"]),
        subjects=subjects,
    )


def _row(path: Path, row: int, raw: object) -> SubjectEntry:
    """One row read, its error knowing its row (what a site may tell the coordinator of it)."""
    try:
        return _entry(path, row, raw)
    except DataError as exc:
        exc.rows = (row,)
        raise


def _entry(path: Path, row: int, raw: object) -> SubjectEntry:
    where = f"{path} row {row}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a subject entry must be an object with {', '.join(_ENTRY_FIELDS)}")
    missing = [k for k in _ENTRY_FIELDS if not raw.get(k)]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    split = str(raw["split"])
    if split not in SPLITS:
        raise DataError(
            f"{where} (subject '{raw['id']}'): unknown split '{split}' (allowed: {', '.join(SPLITS)})"
        )
    base = path.parent
    optional = {}
    for name in OPTIONAL_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where} (subject '{raw['id']}'): field '{name}' must be a file path, got {value!r}")
        optional[name] = (base / value).resolve()
    if "regions" in optional and "truth" not in optional:
        raise DataError(f"{where} (subject '{raw['id']}'): field 'regions' needs 'truth' "
                        "(the regional uptake ratio is compared with the truth's)")
    return SubjectEntry(
        id=str(raw["id"]),
        split=split,
        input=(base / str(raw["input"])).resolve(),
        target=(base / str(raw["target"])).resolve(),
        row=row,
        **optional,
    )


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:5])) + (", …" if len(rows) > 5 else "")


def write_manifest(
    path: str | Path, site: str, scanner: str | None, subjects: Iterable[dict[str, str]]
) -> Path:
    """Write a manifest atomically; subject paths should be relative to its folder.

    A subject's optional `truth` and `regions` (simulation only) are written when it has them."""
    path = Path(path)
    write_json(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "site": site,
            "scanner": scanner,
            "subjects": [{**{k: str(s[k]) for k in _ENTRY_FIELDS},
                          **{k: str(s[k]) for k in OPTIONAL_FIELDS if s.get(k) is not None}} for s in subjects],
        },
    )
    return path
