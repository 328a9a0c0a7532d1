"""What the PACS clients share: a found series, a query, and a series folder written so that it
exists only once complete.

Messages name a series by a hash of its UID (`uid_hash`), as sidecars and logs do everywhere in
petite-fl: a UID is not a name, but it leads to the patient's record in the hospital's PACS.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from petite_fl.atomic import atomic_path, private_dir
from petite_fl.errors import ConfigError
from petite_fl.pacs.connection import PacsError

#: query keys whose values may be printed as they are (vocabulary, not identity)
PLAIN_KEYS = frozenset({"Modality", "QueryRetrieveLevel"})


def uid_hash(uid: str) -> str:
    """How a message names a UID: the first 12 hex digits of its sha256."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:12]


def parse_query(items: Iterable[str], where: str = "--query") -> dict[str, str]:
    """`KEY=VALUE` items (DICOM keywords, e.g. Modality=PT StudyInstanceUID=1.2.3) → a query mapping."""
    query: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(f"{where}: '{key or item}' is not KEY=VALUE (e.g. Modality=PT, StudyInstanceUID=…)")
        if tag_for_keyword(key) is None:
            raise ConfigError(f"{where}: '{key}' is not a DICOM keyword (e.g. Modality, StudyInstanceUID, "
                              "SeriesInstanceUID, StudyDate)")
        query[key] = value.strip()
    if not query:
        raise ConfigError(f"{where}: give at least one KEY=VALUE (e.g. Modality=PT)")
    return query


def describe_query(query: Mapping[str, str]) -> str:
    """The query as a message shows it: vocabulary values plain, every other value hashed."""
    return ", ".join(f"{k}={v}" if k in PLAIN_KEYS else f"{k}=sha256:{uid_hash(v)}" for k, v in query.items())


def query_dataset(query: Mapping[str, str], returned: Iterable[str]) -> Dataset:
    """A C-FIND identifier: the query's values, and empty keys for what should come back."""
    ds = Dataset()
    for key in returned:
        setattr(ds, key, None if dictionary_VR(key) in ("IS", "US", "UL") else "")
    for key, value in query.items():
        setattr(ds, key, value)
    return ds


@dataclass(frozen=True)
class SeriesRef:
    """A series a PACS holds: its study and series UID, modality, and how many instances it says it has."""

    study_uid: str
    series_uid: str
    modality: str | None = None
    instances: int | None = None

    @property
    def name(self) -> str:
        return f"series {uid_hash(self.series_uid)}"


class SeriesFolder:
    """Files of one series written into a hidden sibling, renamed to `final` once all are in.

    A reader of `final` sees no series or a whole one; an interrupted retrieve leaves only the
    hidden partial folder, which the next retrieve replaces. Each file is named by a hash of its
    SOP Instance UID (no identity in a path) and written atomically.
    """

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.partial = self.final.with_name(f".{self.final.name}.partial-{os.getpid()}")
        shutil.rmtree(self.partial, ignore_errors=True)
        private_dir(self.partial)
        self.count = 0

    def add(self, ds: Dataset) -> Path:
        path = self.partial / f"{uid_hash(ds.SOPInstanceUID)}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)  # the preamble and file meta a file needs
        self.count += 1
        return path

    def __enter__(self) -> SeriesFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:  # a retrieve that failed (or was interrupted) leaves no partial folder
            self.discard()

    def finish(self, empty: str) -> Path:
        """The whole series under `final`; `empty` is the refusal (a PacsError) when nothing came back."""
        if not self.count:
            raise PacsError(empty)
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
