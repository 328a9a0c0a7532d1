"""A real Orthanc for the PACS tests (#28): the Debian package's server and its DICOMweb plugin,
on free HTTP and DICOM ports of 127.0.0.1, with its own storage folder, HTTP authentication
on (a test user, so that wrong credentials are refused for real) and one known DICOM peer
(AE `PETITE`), started and stopped like nginx for the proxy tests.

Skips only where Orthanc is not installed and CI is not set: CI installs it (`.ci/run`), so
there a missing Orthanc fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from petite_fl.deploy.ports import free_port
from petite_fl.deploy.processes import stop_process_tree

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"
USER, PASSWORD = "petite-test", "s3cret-orthanc-pw"
CALLED_AE, CALLING_AE = "ORTHANC", "PETITE"


def orthanc_missing() -> str | None:
    """Why no Orthanc can run here, or None."""
    for path in (ORTHANC, DICOMWEB_PLUGIN):
        if not path.exists():
            return f"{path} not found ({INSTALL_HINT})"
    return None


def require_orthanc() -> None:
    """Skip a test without Orthanc, except under CI, where that is a failure."""
    why = orthanc_missing()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and Orthanc is missing: {why}")
    pytest.skip(f"Orthanc is not installed: {why}")


@dataclass
class Orthanc:
    """One running Orthanc: its ports, its storage and how to reach it."""

    folder: Path
    http_port: int
    dicom_port: int
    proc: subprocess.Popen | None = None
    started_s: float = 0.0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.base}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"dicom://{CALLED_AE}@127.0.0.1:{self.dicom_port}"

    @property
    def log(self) -> str:
        return (self.folder / "orthanc.log").read_text(errors="replace")

    def config(self) -> dict:
        return {
            "Name": "petite-test", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"), "StorageCompression": False,
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": CALLED_AE,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
            # DIMSE: the called AE is checked, and only the known peer may find, get and store
            "DicomCheckCalledAet": True, "DicomModalities": {"petite": [CALLING_AE, "127.0.0.1", 1]},
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False, "DicomScpTimeout": 10,
            "HttpThreadsCount": 4, "ConcurrentJobs": 1, "SaveJobs": False, "StableAge": 1,
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "orthanc.json").write_text(json.dumps(self.config(), indent=1))
        begin = time.perf_counter()
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([str(ORTHANC), str(self.folder / "orthanc.json")], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.folder))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log[-3000:]}")
            try:
                if self.rest("get", "/plugins/dicom-web").ok:
                    self.started_s = time.perf_counter() - begin
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s:\n{self.log[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_tree(self.proc, steps=((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)))
            self.proc = None

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        """Orthanc's own REST API, as the test user (the tests' view of what the PACS holds)."""
        return requests.request(method, self.base + path, auth=(USER, PASSWORD), timeout=30, **kwargs)

    def upload(self, files: list[Path]) -> None:
        for path in files:
            self.rest("post", "/instances", data=path.read_bytes()).raise_for_status()

    def series_instances(self, series_uid: str) -> list[dict]:
        """The instances Orthanc holds in the series, with their main DICOM tags ([] if none)."""
        found = self.rest("post", "/tools/find", json={"Level": "Instance", "Expand": True,
                                                       "Query": {"SeriesInstanceUID": series_uid}})
        found.raise_for_status()
        return found.json()

    def series_of_study(self, study_uid: str) -> list[str]:
        found = self.rest("post", "/tools/find", json={"Level": "Series", "Expand": True,
                                                       "Query": {"StudyInstanceUID": study_uid}})
        found.raise_for_status()
        return sorted(s["MainDicomTags"]["SeriesInstanceUID"] for s in found.json())

    def clear(self) -> None:
        for patient in self.rest("get", "/patients").json():
            self.rest("delete", f"/patients/{patient}").raise_for_status()


def start_orthanc(folder: Path) -> Orthanc:
    require_orthanc()
    return Orthanc(folder, free_port(), free_port()).start()
