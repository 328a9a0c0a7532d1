"""A PACS over DICOMweb, through `dicomweb-client`: QIDO-RS to find, WADO-RS to retrieve, STOW-RS to store.

Credentials ride on the requests Session (basic auth or a bearer token), never in a URL, so
neither dicomweb-client's request log nor an error line can hold them; TLS is verified against
`ca_file` when given (the system's CAs otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from petite_fl.pacs.connection import PacsConnection, PacsError
from petite_fl.pacs.series import SeriesFolder, SeriesRef, describe_query

#: instances per STOW-RS request: a PACS that goes away mid-store loses at most one batch in flight
STORE_BATCH = 16
_STUDY, _SERIES, _MODALITY, _COUNT = "0020000D", "0020000E", "00080060", "00201209"
_WHY = {401: "refused the credentials (HTTP 401): check pacs.credentials",
        403: "forbids this (HTTP 403): the account lacks the right",
        404: "has no such resource (HTTP 404): is the URL the DICOMweb root (…/dicom-web)?"}


class DicomWebPacs:
    """One PACS's DICOMweb service (see module doc)."""

    def __init__(self, conn: PacsConnection) -> None:
        self.conn, self.label = conn, conn.label
        session = requests.Session()
        creds = conn.credentials
        if creds.token:
            session.headers["Authorization"] = f"Bearer {creds.token}"
        elif creds.username:
            session.auth = (creds.username, creds.password or "")
        if conn.ca_file is not None:
            if not conn.ca_file.is_file():
                raise PacsError(f"PACS {self.label}: CA file {conn.ca_file} not found (pacs.ca_file)")
            session.verify = str(conn.ca_file)
        self.client = DICOMwebClient(str(conn.url), session=session, timeout=conn.timeout)
        self.client.set_http_retry_params(retry=False)  # a refusal is reported at once, not after minutes

    @contextmanager
    def _asking(self, what: str) -> Iterator[None]:
        """Any failure of the HTTP exchange as one line naming the PACS and what went wrong."""
        try:
            yield
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            why = _WHY.get(code) or f"refused the request (HTTP {code} {getattr(exc.response, 'reason', '')})"
            raise PacsError(f"PACS {self.label}: {why} ({what})") from None
        except requests.exceptions.SSLError:
            ca = f"the CA in {self.conn.ca_file}" if self.conn.ca_file else "the system's CAs (set pacs.ca_file)"
            raise PacsError(f"PACS {self.label}: its TLS certificate is not accepted with {ca} ({what})") from None
        except requests.Timeout:
            raise PacsError(f"PACS {self.label}: no answer within {self.conn.timeout:g} s ({what}; "
                            "pacs.timeout)") from None
        except requests.ConnectionError:
            raise PacsError(f"PACS {self.label}: cannot connect or the connection broke ({what}); "
                            "is it running and the URL right?") from None
        except requests.RequestException as exc:  # e.g. a stream cut mid-transfer (ChunkedEncodingError)
            raise PacsError(f"PACS {self.label}: the exchange broke off ({what}: {type(exc).__name__}); "
                            "is it still running?") from None

    def find_series(self, query: Mapping[str, str]) -> list[SeriesRef]:
        with self._asking(f"searching series {describe_query(query)}"):
            found = self.client.search_for_series(search_filters=dict(query),
                                                  fields=["NumberOfSeriesRelatedInstances", "Modality"],
                                                  get_remaining=True)
        return [SeriesRef(study_uid=_value(r, _STUDY), series_uid=_value(r, _SERIES), modality=_value(r, _MODALITY),
                          instances=_int(_value(r, _COUNT))) for r in found if _value(r, _SERIES)]

    def retrieve_series(self, ref: SeriesRef, folder: Path) -> Path:
        with SeriesFolder(folder) as out:
            with self._asking(f"retrieving {ref.name}"):
                for ds in self.client.iter_series(ref.study_uid, ref.series_uid):
                    out.add(ds)
            return out.finish(f"PACS {self.label}: {ref.name} returned no instances")

    def store_files(self, files: Sequence[Path], on_batch: Callable[[int], None] | None = None) -> int:
        """STOW-RS in batches; returns the instances the PACS accepted. Raises on the first refusal."""
        stored = 0
        for start in range(0, len(files), STORE_BATCH):
            batch = [pydicom.dcmread(f) for f in files[start:start + STORE_BATCH]]
            with self._asking(f"storing instances {start + 1}–{start + len(batch)} of {len(files)}, "
                              f"{stored} stored before"):
                answer = self.client.store_instances(batch)
            failed = answer.get("FailedSOPSequence") or []
            if failed:
                reason = getattr(failed[0], "FailureReason", "?")
                raise PacsError(f"PACS {self.label}: refused {len(failed)} of {len(batch)} instances "
                                f"(STOW-RS failure reason {reason}); {stored} stored before")
            stored += len(batch)
            if on_batch is not None:
                on_batch(stored)
        return stored


def _value(record: Mapping, tag: str) -> str | None:
    values = (record.get(tag) or {}).get("Value") or [None]
    return None if values[0] is None else str(values[0])


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
