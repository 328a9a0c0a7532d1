"""A PACS over DIMSE, through `pynetdicom`: C-FIND to find, C-GET to retrieve, C-STORE to store.

C-GET (not C-MOVE) because the instances come back on the association petite-fl opened: the
PACS need not know an address to send them to, only the calling AE title it accepts. DIMSE
has no user or password; a PACS admits peers by AE title (and often host), so "wrong
credentials" here is an association the PACS rejects, or a request it refuses for this AE.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedPETImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from petite_fl.pacs.connection import PacsConnection, PacsError
from petite_fl.pacs.series import SeriesFolder, SeriesRef, describe_query, query_dataset

#: what a C-GET may bring back: PET first, and the images a PET study commonly carries
RETRIEVED_CLASSES = (PositronEmissionTomographyImageStorage, EnhancedPETImageStorage,
                     LegacyConvertedEnhancedPETImageStorage, CTImageStorage, MRImageStorage,
                     SecondaryCaptureImageStorage)
_PENDING, _SUCCESS = (0xFF00, 0xFF01), 0x0000
_RETURNED = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")


class DimsePacs:
    """One PACS's DIMSE service (see module doc); one association per operation."""

    def __init__(self, conn: PacsConnection) -> None:
        self.conn, self.label = conn, conn.label
        self._sent = 0.0  # when the last request went out (a dropped association answers sooner than a timeout)

    @contextmanager
    def _association(self, what: str, contexts: Sequence[str], store_scp: bool = False,
                     handlers: list | None = None) -> Iterator[Association]:
        self._probe(what)
        ae = AE(ae_title=self.conn.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.conn.timeout
        for uid in contexts:
            ae.add_requested_context(uid)
        roles = [build_role(uid, scp_role=True) for uid in RETRIEVED_CLASSES] if store_scp else []
        assoc = ae.associate(self.conn.host, self.conn.port, ae_title=self.conn.called_ae, ext_neg=roles,
                             evt_handlers=handlers or [])
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PacsError(f"PACS {self.label}: rejected the association ({what}) from calling AE "
                                f"{self.conn.calling_ae}: check pacs.called_ae and that the PACS knows this AE")
            raise PacsError(f"PACS {self.label}: no answer to the association request within "
                            f"{self.conn.timeout:g} s ({what}; pacs.timeout); is it a DICOM service there?")
        # no Nagle delay on the small command PDUs (40 % less time per C-STORE against Orthanc); if
        # pynetdicom's internals move, slower but still correct
        with suppress(AttributeError, OSError):
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            yield assoc
        except ValueError as exc:
            if "presentation context" not in str(exc):
                raise
            raise PacsError(f"PACS {self.label}: accepted the association but not this kind of request ({what}; "
                            "no presentation context accepted: does it take PET images and C-GET?)") from None
        finally:
            assoc.release()

    def _probe(self, what: str) -> None:
        """Refused and silent are different faults: say which, before pynetdicom hides both as 'aborted'."""
        try:
            with socket.create_connection((self.conn.host, int(self.conn.port)), timeout=self.conn.timeout):
                pass
        except TimeoutError:
            raise PacsError(f"PACS {self.label}: no answer within {self.conn.timeout:g} s ({what}; "
                            "pacs.timeout)") from None
        except OSError as exc:
            raise PacsError(f"PACS {self.label}: cannot connect ({what}: {type(exc).__name__}); "
                            "is it running and the address right?") from None

    def find_series(self, query: Mapping[str, str]) -> list[SeriesRef]:
        what = f"C-FIND of series {describe_query(query)}"
        identifier = query_dataset({"QueryRetrieveLevel": "SERIES", **query}, _RETURNED)
        found = []
        with self._association(what, [StudyRootQueryRetrieveInformationModelFind]) as assoc:
            self._sent = time.monotonic()
            for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                code = self._status(assoc, status, what)
                if code in _PENDING and answer is not None and answer.get("SeriesInstanceUID"):
                    count = answer.get("NumberOfSeriesRelatedInstances")
                    found.append(SeriesRef(str(answer.StudyInstanceUID), str(answer.SeriesInstanceUID),
                                           str(answer.get("Modality") or "") or None,
                                           int(count) if count not in (None, "") else None))
        return found

    def _status(self, assoc: Association, status: Dataset, what: str) -> int:
        if "Status" not in status:
            # pynetdicom yields an empty status for a dropped association and for a silent one alike
            if assoc.is_aborted or not assoc.is_established or time.monotonic() - self._sent < self.conn.timeout:
                raise PacsError(f"PACS {self.label}: dropped the association ({what}): it went down, or it does "
                                f"not admit calling AE {self.conn.calling_ae} from this host (pacs.calling_ae)")
            raise PacsError(f"PACS {self.label}: no answer within {self.conn.timeout:g} s ({what}; pacs.timeout)")
        code = int(status.Status)
        if code not in (*_PENDING, _SUCCESS) and not 0xB000 <= code <= 0xBFFF:
            raise PacsError(f"PACS {self.label}: refused the request with status 0x{code:04X} ({what}, "
                            f"calling AE {self.conn.calling_ae})")
        self._sent = time.monotonic()  # the next answer is awaited from now
        return code

    def retrieve_series(self, ref: SeriesRef, folder: Path) -> Path:
        what = f"C-GET of {ref.name}"
        with SeriesFolder(folder) as out:
            def on_store(event: evt.Event) -> int:
                ds = event.dataset
                ds.file_meta = event.file_meta
                out.add(ds)
                return _SUCCESS

            identifier = query_dataset({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": ref.study_uid,
                                        "SeriesInstanceUID": ref.series_uid}, ())
            with self._association(what, [StudyRootQueryRetrieveInformationModelGet, *RETRIEVED_CLASSES],
                                   store_scp=True, handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
                self._sent = time.monotonic()
                for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
                    self._status(assoc, status, what)
                    failed = int(status.get("NumberOfFailedSuboperations") or 0)
                    if failed:
                        raise PacsError(f"PACS {self.label}: {failed} instance(s) of {ref.name} failed to come "
                                        f"back ({what}; not PET/CT/MR/secondary capture?)")
            return out.finish(f"PACS {self.label}: {ref.name} returned no instances ({what})")

    def store_files(self, files: Sequence[Path], on_batch: Callable[[int], None] | None = None) -> int:
        """C-STORE each file on one association; returns the instances stored. Raises on the first refusal."""
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        classes = sorted({str(h.SOPClassUID) for h in heads})
        stored = 0
        what = f"C-STORE of {len(files)} instances"
        with self._association(what, classes) as assoc:
            for path in files:
                ds = pydicom.dcmread(path)
                self._sent = time.monotonic()
                try:
                    status = assoc.send_c_store(ds)
                except RuntimeError:  # pynetdicom: the association ended (the peer went down) before this send
                    status = Dataset()
                self._status(assoc, status, f"C-STORE of instance {stored + 1} of {len(files)}, "
                                            f"{stored} stored before")
                stored += 1
                if on_batch is not None:
                    on_batch(stored)
        return stored
