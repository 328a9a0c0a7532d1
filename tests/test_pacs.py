"""A site's PACS (#28 item 2), against a real Orthanc (tests/orthanc.py): find, retrieve and store a
series over DICOMweb and DIMSE, each fault as one line naming the PACS, credentials in no log or
message, a store interrupted by a PACS that goes down, and `petite-data import --from-pacs`."""

from __future__ import annotations

import json
import logging
import os
import signal
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc import PASSWORD, USER, Orthanc, start_orthanc
from pet_dicom import known_frames, write_pet_dicom
from pydicom.uid import generate_uid

from petite_fl.atomic import private_dir
from petite_fl.errors import ConfigError
from petite_fl.pacs.connection import Credentials, PacsConnection, PacsError, parse_url
from petite_fl.pacs.series import uid_hash
from petite_fl.pacs.transfer import find_matching, open_pacs, retrieve_matching, store_series

PROTOCOLS = ("dicomweb", "dimse")
#: the transfers of whole series: DIMSE against Orthanc waits ~0.05-0.1 s per instance, so its cases run with -m slow
TRANSFERS = ("dicomweb", pytest.param("dimse", marks=pytest.mark.slow))


@pytest.fixture(autouse=True)
def _credentials(monkeypatch):
    """The test user, as a site without a pacs: block gives it: in the environment."""
    monkeypatch.setenv("PETITE_PACS_USERNAME", USER)
    monkeypatch.setenv("PETITE_PACS_PASSWORD", PASSWORD)


def url_of(orthanc: Orthanc, protocol: str) -> str:
    return orthanc.dicomweb if protocol == "dicomweb" else orthanc.dimse


def connect(orthanc: Orthanc, protocol: str, **changes) -> PacsConnection:
    from petite_fl.deploy.site import site_pacs

    return replace(site_pacs(url_of(orthanc, protocol)), **changes)


def uploaded(orthanc: Orthanc, folder: Path, shape=(8, 8, 4), frames: int = 2) -> tuple[list[Path], str, str]:
    """A synthetic dynamic PET series written by pydicom and uploaded through Orthanc's REST API."""
    files = write_pet_dicom(folder, known_frames(shape, frames))
    orthanc.upload(files)
    head = pydicom.dcmread(files[0])
    return files, str(head.StudyInstanceUID), str(head.SeriesInstanceUID)


def derived_copy(files: list[Path], folder: Path, name: str = "derived") -> tuple[list[Path], str]:
    """The series as a derived one: same study, a new series and instance UIDs made from fixed text
    (deterministic, as the DICOM-out writer makes them), so that storing again is the same series."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), name])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(ds.SOPInstanceUID), name])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = ["DERIVED", "SECONDARY"]
        out.append(folder / path.name)
        ds.save_as(out[-1], enforce_file_format=True)
    return out, str(ds.SeriesInstanceUID)


@pytest.mark.parametrize("protocol", TRANSFERS)
def test_a_series_uploaded_to_orthanc_is_found_and_retrieved_whole(orthanc, tmp_path, protocol):
    """Found by its study, its series UID and by Modality=PT; retrieved into a folder holding every instance,
    pixel for pixel; the files are named by hashes, and no partial folder is left beside it."""
    files, study, series = uploaded(orthanc, tmp_path / "src")
    pacs = open_pacs(connect(orthanc, protocol))
    for query in ({"StudyInstanceUID": study}, {"SeriesInstanceUID": series}, {"Modality": "PT"}):
        found = [r for r in find_matching(pacs, query) if r.series_uid == series]
        assert len(found) == 1 and found[0].study_uid == study and found[0].instances == len(files), query
    got = retrieve_matching(pacs, {"StudyInstanceUID": study}, tmp_path / "in")
    assert got.failed == [] and list(got.folders) == [series]
    folder = got.folders[series]
    assert folder.name == uid_hash(series) and sorted(p.name for p in (tmp_path / "in").iterdir()) == [folder.name]
    sent = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f).pixel_array for f in files}
    back = {str(d.SOPInstanceUID): d.pixel_array for d in map(pydicom.dcmread, folder.iterdir())}
    assert sent.keys() == back.keys()
    assert all(np.array_equal(sent[k], back[k]) for k in sent)
    assert {p.name for p in folder.iterdir()} == {f"{uid_hash(k)}.dcm" for k in back}  # no UID in a file name


@pytest.mark.parametrize("protocol", TRANSFERS)
def test_a_stored_series_is_in_orthanc_under_the_same_study_with_every_instance(orthanc, tmp_path, protocol):
    """Store → Orthanc's own REST API shows the derived series beside the source, in the same study,
    with all its instances and their values; storing it again changes nothing (same UIDs)."""
    files, study, series = uploaded(orthanc, tmp_path / "src")
    derived, derived_uid = derived_copy(files, tmp_path / "derived")
    assert orthanc.series_of_study(study) == [series]
    pacs = open_pacs(connect(orthanc, protocol))
    stored = store_series(pacs, derived)
    assert (stored.study_uid, stored.series_uid, stored.instances) == (study, derived_uid, len(files))
    assert orthanc.series_of_study(study) == sorted([series, derived_uid])
    held = orthanc.series_instances(derived_uid)
    assert len(held) == len(files)
    one = held[0]["ID"]
    back = pydicom.dcmread(__import__("io").BytesIO(orthanc.rest("get", f"/instances/{one}/file").content))
    mine = next(pydicom.dcmread(f) for f in derived if pydicom.dcmread(f).SOPInstanceUID == back.SOPInstanceUID)
    assert np.array_equal(back.pixel_array, mine.pixel_array) and list(back.ImageType) == ["DERIVED", "SECONDARY"]
    assert store_series(pacs, derived).instances == len(files)  # again: the same series, not a second one
    assert orthanc.series_of_study(study) == sorted([series, derived_uid])


@contextmanager
def frozen(orthanc: Orthanc):
    """Orthanc stopped (SIGSTOP): connections are accepted by the kernel and never answered."""
    os.kill(orthanc.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(orthanc.proc.pid, signal.SIGCONT)


FAULTS = {  # name: (protocol, connection changes, query, expected words)
    "wrong password (401)": ("dicomweb", {"credentials": Credentials(USER, "not-the-password")}, None,
                             "refused the credentials (HTTP 401)"),
    "no credentials (401)": ("dicomweb", {"credentials": Credentials()}, None, "refused the credentials (HTTP 401)"),
    "not the DICOMweb root (404)": ("dicomweb", {"url": "{base}/no-dicom-web"}, None, "no such resource (HTTP 404)"),
    "nothing listening (http)": ("dicomweb", {"url": "http://127.0.0.1:1/dicom-web"}, None, "cannot connect"),
    "nothing listening (dimse)": ("dimse", {"port": 1}, None, "cannot connect"),
    "wrong called AE": ("dimse", {"called_ae": "NOT-ORTHANC"}, None, "rejected the association"),
    "unknown calling AE": ("dimse", {"calling_ae": "STRANGER"}, None, "does not admit calling AE STRANGER"),
    "no matching series (dicomweb)": ("dicomweb", {}, {"StudyInstanceUID": "1.2.3.4.5"}, "no series matches"),
    "no matching series (dimse)": ("dimse", {}, {"StudyInstanceUID": "1.2.3.4.5"}, "no series matches"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_pacs_fault_is_one_line_naming_the_pacs(orthanc, fault):
    protocol, changes, query, words = FAULTS[fault]
    changes = {k: v.format(base=orthanc.base) if isinstance(v, str) else v for k, v in changes.items()}
    conn = connect(orthanc, protocol, **changes)
    with pytest.raises(PacsError) as caught:
        find_matching(open_pacs(conn), query or {"Modality": "PT"})
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"PACS {conn.label}: ") and words in line, line
    assert PASSWORD not in line and "not-the-password" not in line
    if "1.2.3.4.5" in str(query):
        assert "1.2.3.4.5" not in line and uid_hash("1.2.3.4.5") in line  # a UID is named by its hash


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_pacs_that_does_not_answer_times_out_in_one_line(orthanc, protocol):
    conn = connect(orthanc, protocol, timeout=1.0)
    with frozen(orthanc), pytest.raises(PacsError) as caught:
        open_pacs(conn).find_series({"Modality": "PT"})
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"PACS {conn.label}: ") and "within 1 s" in line, line


@pytest.mark.parametrize(("url", "words"), [
    (f"https://{USER}:{PASSWORD}@pacs.example.org/dicom-web", "a user name or password in the URL is refused"),
    ("ftp://pacs.example.org/", "scheme 'ftp'"),
    ("dicom://pacs.example.org:104", "dicom://CALLED_AE@host:port"),
    ("dicom://AN-AE-TITLE-OF-MORE-THAN-16@pacs:104", "1 to 16 printable characters"),
    (f"https://{USER}:{PASSWORD[:4]}@{PASSWORD[4:]}@pacs.example.org/dicom-web", "a user name or password"),
    (f"https://{USER}:{PASSWORD[:4]}/{PASSWORD[4:]}@pacs.example.org/dicom-web", "not a URL")])
def test_a_bad_pacs_url_is_one_line_and_never_echoes_a_password(url, words):
    with pytest.raises(ConfigError) as caught:
        parse_url(url)
    assert words in str(caught.value) and PASSWORD not in str(caught.value)
    assert PASSWORD[4:] not in str(caught.value) and PASSWORD[:4] not in str(caught.value)


def test_a_missing_series_leaves_no_folder_and_no_partial_one(orthanc, tmp_path):
    from petite_fl.pacs.series import SeriesRef

    pacs = open_pacs(connect(orthanc, "dicomweb"))
    with pytest.raises(PacsError, match="no such resource"):
        pacs.retrieve_series(SeriesRef("1.2.3", "1.2.3.4"), tmp_path / "series")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_credentials_are_in_no_log_no_message_and_no_repr(orthanc, tmp_path, caplog, kind):
    """Everything dicomweb-client, requests and urllib3 log at DEBUG while finding, retrieving and storing,
    and every error line, holds neither the password nor the token."""
    token = "tok-" + "9" * 24
    creds = Credentials(USER, PASSWORD) if kind == "basic" else Credentials(token=token)
    files, study, _ = uploaded(orthanc, tmp_path / "src")
    conn = connect(orthanc, "dicomweb", credentials=creds)
    caplog.set_level(logging.DEBUG)
    lines = [repr(conn), repr(creds), str(conn)]
    pacs = open_pacs(conn)
    try:
        retrieve_matching(pacs, {"StudyInstanceUID": study}, tmp_path / "in")
        store_series(pacs, derived_copy(files, tmp_path / "d")[0])
    except PacsError as exc:  # the token is refused by Orthanc's basic authentication: that line counts too
        assert kind == "token"
        lines.append(str(exc))
    for bad in (replace(conn, url=f"{orthanc.base}/nope"), replace(conn, url="http://127.0.0.1:1/dicom-web")):
        with pytest.raises(PacsError) as caught:
            open_pacs(bad).find_series({"StudyInstanceUID": study})
        lines.append(str(caught.value))
    text = caplog.text + "\n".join(lines)
    assert "dicom-web" in caplog.text  # the requests were logged
    for secret in (PASSWORD, token):
        assert secret not in text


def _kill(orthanc: Orthanc) -> None:
    orthanc.proc.send_signal(signal.SIGKILL)  # a crash, not a clean stop
    orthanc.proc.wait(10)
    orthanc.proc = None


@pytest.mark.parametrize("protocol", TRANSFERS)
def test_an_orthanc_that_goes_down_mid_store_is_one_line_and_a_rerun_completes_the_series(tmp_path, protocol):
    """Orthanc killed after the first instances: the store fails in one line saying the series is
    incomplete; Orthanc, restarted, holds that part (DICOM has no transaction); storing again (same
    UIDs) completes the very same series: one series, every instance, no duplicate."""
    server = start_orthanc(tmp_path / "orthanc")
    try:
        files, study, series = uploaded(server, tmp_path / "src", shape=(8, 8, 12), frames=3)
        derived, derived_uid = derived_copy(files, tmp_path / "derived")
        pacs = open_pacs(connect(server, protocol))
        with pytest.raises(PacsError) as caught:
            store_series(pacs, derived, on_batch=lambda n: _kill(server) if n >= 16 and server.proc else None)
        line = str(caught.value)
        assert "\n" not in line and line.startswith(f"PACS {pacs.label}: ") and "incomplete" in line, line
        assert f"series {uid_hash(derived_uid)}" in line and "store it again" in line
        server.start()
        part = len(server.series_instances(derived_uid))
        assert 16 <= part < len(derived)
        stored = store_series(pacs, derived)
        assert stored.instances == len(derived) == len(server.series_instances(derived_uid))
        assert server.series_of_study(study) == sorted([series, derived_uid])
    finally:
        server.stop()


def test_a_site_yaml_pacs_block_gives_the_connection_and_its_password_goes_to_its_own_server_only(tmp_path,
                                                                                                  monkeypatch):
    from petite_fl.deploy.site import site_pacs

    secret = private_dir(tmp_path / "secret") / "pacs.yaml"
    secret.write_text(f"username: {USER}\npassword: {PASSWORD}\n")
    os.chmod(secret, 0o600)
    yaml = tmp_path / "hospital.yaml"
    yaml.write_text(f"""name: hospital
manifest: null
device: cpu
cache: {tmp_path}/cache
server: 127.0.0.1:9092
ca_cert: {tmp_path}/ca.crt
private_key: null
port: 9094
pacs:
  protocol: dicomweb
  url: https://pacs.example.org/dicom-web
  credentials: {{file: {secret}}}
  ca_file: {tmp_path}/pacs-ca.pem
  timeout: 12
""")
    conn = site_pacs(None, str(yaml))
    assert (conn.protocol, conn.url, conn.timeout, conn.ca_file) == ("dicomweb", "https://pacs.example.org/dicom-web",
                                                                     12.0, tmp_path / "pacs-ca.pem")
    assert conn.credentials == Credentials(USER, PASSWORD) and PASSWORD not in repr(conn)
    same = site_pacs("https://pacs.example.org:443/dicom-web", str(yaml))  # the same server: its credentials
    assert same.credentials == conn.credentials and same.timeout == 12.0
    monkeypatch.delenv("PETITE_PACS_USERNAME")
    monkeypatch.delenv("PETITE_PACS_PASSWORD")
    for url in ("https://research-pacs.example.org/dicom-web", "http://pacs.example.org/dicom-web",
                "dicom://PACS@10.0.0.7:11112"):  # another server (host, port or scheme): never the block's password
        other = site_pacs(url, str(yaml))
        assert other.credentials.kind == "none" and other.timeout == 12.0, url
    assert site_pacs("dicom://PACS@10.0.0.7:11112", str(yaml)).label == "dicom://PACS@10.0.0.7:11112"
    monkeypatch.setenv("PETITE_PACS_USERNAME", USER)
    monkeypatch.setenv("PETITE_PACS_PASSWORD", PASSWORD)
    with pytest.raises(ConfigError) as caught:  # the environment's password, over plain http to another host
        site_pacs("http://pacs.example.org/dicom-web")
    assert "not sent over plain http" in str(caught.value) and PASSWORD not in str(caught.value)
    assert site_pacs("http://127.0.0.1:8042/dicom-web").credentials.kind == "basic"  # this machine: allowed
    assert site_pacs(str(yaml)).label == conn.label  # a site config named where a URL goes
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="readable by others: chmod 600"):
        site_pacs(None, str(yaml))
    yaml.write_text(yaml.read_text().replace("  timeout: 12", "  timeuot: 12"))
    with pytest.raises(ConfigError, match=r"pacs: unknown field\(s\) timeuot"):
        site_pacs(None, str(yaml))
    monkeypatch.delenv("PETITE_PACS_PASSWORD")
    with pytest.raises(ConfigError, match="PETITE_PACS_USERNAME is set but PETITE_PACS_PASSWORD is not"):
        site_pacs("https://pacs.example.org/dicom-web")


@pytest.mark.parametrize("protocol", TRANSFERS)
def test_petite_data_import_from_pacs_makes_a_pseudonymised_site_and_leaves_no_copy(orthanc, tmp_path, capsys,
                                                                                      protocol):
    """`petite-data import --from-pacs URL --query StudyInstanceUID=…`: a checked site as from a folder, the
    private mapping naming the PACS and a hash (not a temporary path), nothing identifying outside it, and
    the temporary copy gone; a query that matches nothing is one line and leaves no copy either."""
    from petite_fl.cli.data import main
    from petite_fl.data.check import check_site

    write_pet_dicom(tmp_path / "src", known_frames(), patient="Doe^Pacs")
    orthanc.upload(sorted((tmp_path / "src").iterdir()))
    study = str(pydicom.dcmread(next((tmp_path / "src").iterdir())).StudyInstanceUID)
    site = tmp_path / "sites" / "hospital"
    url = url_of(orthanc, protocol)
    assert main(["import", "--from-pacs", url, "--query", f"StudyInstanceUID={study}", "Modality=PT",
                 "--out", str(site)]) == 0
    capsys.readouterr()
    assert check_site(site / "manifest.json").ok
    mapping = json.loads((site / "private" / "pseudonyms.json").read_text())
    assert [e["source"].split(" series ")[0] for e in mapping.values()] == [url]
    assert ".pacs-" not in json.dumps(mapping), "the private mapping names the deleted temporary folder"
    assert sorted(p.name for p in site.parent.iterdir()) == [".hospital.lock", "hospital"]
    for path in site.rglob("*"):
        if path.is_file() and "private" not in path.parts:
            assert b"Doe^" not in path.read_bytes() and study.encode() not in path.read_bytes(), path
    assert main(["import", "--from-pacs", url, "--query", "StudyInstanceUID=1.2.3.999", "--out",
                 str(tmp_path / "sites" / "other")]) == 2
    err = capsys.readouterr().err
    assert f"PACS {url}: no series matches StudyInstanceUID=sha256:{uid_hash('1.2.3.999')}" in err
    assert len(err.strip().splitlines()) == 1 and PASSWORD not in err
    assert sorted(p.name for p in site.parent.iterdir()) == [".hospital.lock", "hospital"]


@pytest.mark.parametrize(("argv", "words"), [
    (["import", "--out", "x"], "give a source folder or file, or --from-pacs"),
    (["import", "--from-pacs", "http://127.0.0.1:1/dicom-web", "--query", "NotAKeyword=1", "--out", "x"],
     "'NotAKeyword' is not a DICOM keyword"),
    (["import", "--from-pacs", "http://127.0.0.1:1/dicom-web", "--query", "Modality", "--out", "x"],
     "'Modality' is not KEY=VALUE")])
def test_petite_data_import_from_pacs_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, words):
    from petite_fl.cli.data import main

    assert main([*argv[:-1], str(tmp_path / argv[-1])]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "words"), [
    (["--from-pacs", "{url}", "--series", "1.3"], "give --site SITE and one of --study UID or --series UID"),
    (["--site", "s", "--from-pacs", "{url}", "--study", "1.2", "--series", "1.3"], "one of --study UID or --series"),
    (["--site", "s", "--to-pacs", "{url}", "--series", "1.3"], "give --from-pacs [URL]"),
    (["--site", "s", "--from-pacs", "{url}", "--series", "1.3", "scan.nii.gz"], "without input files or --out"),
    (["--site", "s", "--from-pacs", "--series", "1.3"], "no PACS address"),
    (["--site", "s", "--from-pacs", "{url}", "--series", "1.2.3.999"], "no series matches SeriesInstanceUID=sha256:")])
def test_petite_infer_from_pacs_refuses_in_one_line(orthanc, capsys, argv, words):
    """`petite infer --site X --from-pacs …`: what is missing or matches nothing, one line, before any model loads."""
    from petite_fl.cli.main import main

    argv = [a.format(url=orthanc.dicomweb) for a in argv]
    assert main(["infer", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
