"""Moving series between a site and its PACS, whichever protocol it speaks: find what a query
matches, retrieve it into folders, store a series and confirm the PACS holds all of it.

A store is not a transaction (DICOM has none): a PACS that goes away mid-store keeps the
instances it received, and viewers show them at once. What petite-fl guarantees instead:
every store is followed by a query of the series' instance count, a shortfall is an error
naming how many of how many the PACS holds, and a store never reports success without that
count; the derived series' UIDs are deterministic, so storing again completes the very same
series (a PACS keeps one copy of an instance it already has) instead of adding a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom

from petite_fl.errors import DataError
from petite_fl.pacs.connection import PacsConnection, PacsError
from petite_fl.pacs.series import SeriesRef, describe_query, uid_hash


class Pacs(Protocol):
    """What both protocols offer."""

    label: str

    def find_series(self, query: Mapping[str, str]) -> list[SeriesRef]: ...

    def retrieve_series(self, ref: SeriesRef, folder: Path) -> Path: ...

    def store_files(self, files: Sequence[Path], on_batch: Callable[[int], None] | None = None) -> int: ...


def open_pacs(conn: PacsConnection) -> Pacs:
    """The client for the connection's protocol (DICOMweb or DIMSE)."""
    if conn.protocol == "dicomweb":
        from petite_fl.pacs.dicomweb import DicomWebPacs

        return DicomWebPacs(conn)
    from petite_fl.pacs.dimse import DimsePacs

    return DimsePacs(conn)


def find_matching(pacs: Pacs, query: Mapping[str, str]) -> list[SeriesRef]:
    """The series the query matches; none is an error naming the PACS and the (hashed) query."""
    found = pacs.find_series(query)
    if not found:
        raise PacsError(f"PACS {pacs.label}: no series matches {describe_query(query)}")
    return found


@dataclass
class Retrieved:
    """What a batch retrieve brought: one folder per series, one line per series that failed."""

    folders: dict[str, Path]   # series UID → its folder
    failed: list[str]


def retrieve_matching(pacs: Pacs, query: Mapping[str, str], into: Path,
                      on_series: Callable[[SeriesRef], None] | None = None) -> Retrieved:
    """Every series the query matches into `into/<hash of its UID>/`; a series that fails is a line, the rest go on."""
    out = Retrieved({}, [])
    for ref in find_matching(pacs, query):
        try:
            out.folders[ref.series_uid] = pacs.retrieve_series(ref, into / uid_hash(ref.series_uid))
        except PacsError as exc:
            out.failed.append(str(exc))
        if on_series is not None:
            on_series(ref)
    return out


@dataclass(frozen=True)
class Stored:
    """A series stored and confirmed: where it is (study and series UID) and the instances the PACS holds."""

    study_uid: str
    series_uid: str
    instances: int

    @property
    def name(self) -> str:
        return f"series {uid_hash(self.series_uid)}"


def series_of(files: Sequence[Path]) -> tuple[str, str, int]:
    """The one (study UID, series UID) the files belong to, and how many distinct instances they are."""
    keys, sops = set(), set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID",
                                                                           "SOPInstanceUID"])
        keys.add((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)))
        sops.add(str(ds.SOPInstanceUID))
    if len(keys) != 1:
        raise DataError(f"{len(keys)} series among the {len(files)} files to store; store one series at a time")
    study, series = keys.pop()
    return study, series, len(sops)


def store_series(pacs: Pacs, files: Sequence[Path], on_batch: Callable[[int], None] | None = None) -> Stored:
    """Store one series' files, then ask the PACS how many of its instances it holds (see module doc)."""
    study, series, expected = series_of(files)
    name = f"series {uid_hash(series)}"
    try:
        pacs.store_files(sorted(files), on_batch)
    except PacsError as exc:
        raise PacsError(f"{exc}; {name} is incomplete on the PACS: store it again (same UIDs) to complete it") from None
    held = [r for r in pacs.find_series({"StudyInstanceUID": study, "SeriesInstanceUID": series})
            if r.series_uid == series]
    count = held[0].instances if held else 0
    if count is None:
        raise PacsError(f"PACS {pacs.label}: does not report {name}'s instance count; cannot confirm the store")
    if count < expected:
        raise PacsError(f"PACS {pacs.label}: holds {count} of {expected} instances of {name} after the store: "
                        "incomplete; store it again (same UIDs) to complete it")
    return Stored(study, series, count)
