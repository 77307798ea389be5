"""The application's input and output sent to a real PACS (Orthanc) by DICOM C-STORE, then checked there.

A fresh Orthanc (Debian package) per case listens on free loopback ports with a configuration written
here (storage and index in a temporary folder, no authentication, HTTP from localhost only, any calling
AE title may store). The source series, the derived series and the QA report are stored with
pynetdicom's StorageSCU (Explicit VR Little Endian); Orthanc's REST API must then show one patient and
one study holding all three series with the right instances, the denoised pixels and the PDF intact.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from tests.conftest import AppCase

pytestmark = pytest.mark.slow

pynetdicom = pytest.importorskip("pynetdicom", reason="pynetdicom is not installed (scripts/setup.sh --dev)")

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
if ORTHANC is None:
    pytest.skip("Orthanc is not installed (Debian package 'orthanc'; scripts/setup.sh --dev)", allow_module_level=True)

ORTHANC_AET = "NSN2N_PACS"
CALLING_AET = "NSN2N_TEST"
LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


#: Straight to loopback, never through an HTTP proxy named in the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    log: Path

    def get(self, path: str) -> Any:
        """GET on the REST API: parsed JSON, or the raw bytes of a file."""
        with _HTTP.open(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=10) as response:
            body = response.read()
            return json.loads(body) if "json" in response.headers.get("Content-Type", "") else body


def _wait_until_up(orthanc: Orthanc, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {process.returncode}:\n{orthanc.log.read_text()[-3000:]}")
        try:
            if orthanc.get("/system").get("DicomAet") == ORTHANC_AET:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer within {timeout_s} s:\n{orthanc.log.read_text()[-3000:]}")


@pytest.fixture()
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh, empty Orthanc on free loopback ports; stopped (and killed if need be) afterwards."""
    dicom_port, http_port = _free_port(), _free_port()
    config = {
        "Name": "nsn2n-test-pacs",
        "StorageDirectory": str(tmp_path / "storage"),
        "IndexDirectory": str(tmp_path / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # HTTP from localhost only
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,  # any calling AE title may store
        "DicomModalities": {},
        # Every standard storage SOP class (CT, MR, Encapsulated PDF...) in every transfer syntax.
        "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
        "UnknownSopClassAccepted": False,
        "SaveJobs": False,
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = tmp_path / "orthanc.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen([ORTHANC, str(config_path)], cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            server = Orthanc(dicom_port, http_port, log)
            _wait_until_up(server, process)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def _c_store(orthanc: Orthanc, paths: list[Path]) -> dict[str, int]:
    """C-STORE every file in one association; returns SOPInstanceUID -> status."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = pynetdicom.AE(ae_title=CALLING_AET)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(LOOPBACK, orthanc.dicom_port, ae_title=ORTHANC_AET)
    assert assoc.is_established, f"association rejected or aborted; Orthanc log:\n{orthanc.log.read_text()[-2000:]}"
    statuses: dict[str, int] = {}
    try:
        for ds in datasets:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            status = assoc.send_c_store(ds)
            statuses[str(ds.SOPInstanceUID)] = int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()
    return statuses


@pytest.fixture(params=["ct", "mr"])
def case(request: pytest.FixtureRequest) -> AppCase:
    app_case: AppCase = request.getfixturevalue(f"{request.param}_app_case")
    assert app_case.run.returncode == 0, app_case.run.log[-4000:]
    return app_case


def test_derived_series_and_qa_report_land_in_the_source_study_of_a_real_pacs(case: AppCase, orthanc: Orthanc) -> None:
    source, derived, pdf = case.source(), case.derived(), case.pdf()
    sent = {
        "source": {str(ds.SOPInstanceUID) for _, ds in source},
        "derived": {str(ds.SOPInstanceUID) for _, ds in derived},
        "qa report": {str(ds.SOPInstanceUID) for _, ds in pdf},
    }
    series_uid = {
        "source": case.source_series_uid(),
        "derived": case.derived_folder().name,
        "qa report": case.pdf_folder().name,
    }
    statuses = _c_store(orthanc, [p for p, _ in source + derived + pdf])
    assert len(statuses) == sum(len(v) for v in sent.values())
    assert {uid: s for uid, s in statuses.items() if s != 0x0000} == {}, "every C-STORE must succeed"

    assert len(orthanc.get("/patients")) == 1
    studies = orthanc.get("/studies")
    assert len(studies) == 1, "the derived series and the QA report belong to the source's study"
    study = orthanc.get(f"/studies/{studies[0]}")
    assert study["MainDicomTags"]["StudyInstanceUID"] == str(source[0][1].StudyInstanceUID)
    assert len(study["Series"]) == 3

    stored: dict[str, dict[str, Any]] = {}
    for series_id in study["Series"]:
        series = orthanc.get(f"/series/{series_id}")
        assert series["ParentStudy"] == studies[0]
        instances = orthanc.get(f"/series/{series_id}/instances")
        assert len(instances) == len(series["Instances"])
        stored[series["MainDicomTags"]["SeriesInstanceUID"]] = {
            "modality": series["MainDicomTags"].get("Modality"),
            "sops": {i["MainDicomTags"]["SOPInstanceUID"] for i in instances},
            "ids": {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"] for i in instances},
        }
    assert set(stored) == set(series_uid.values())
    for kind, uid in series_uid.items():
        assert stored[uid]["sops"] == sent[kind], f"{kind} series: instances stored in Orthanc"
    assert len(stored[series_uid["derived"]]["sops"]) == len(source)
    assert stored[series_uid["derived"]]["modality"] == str(source[0][1].Modality)
    assert stored[series_uid["qa report"]]["modality"] == "DOC"

    # What the PACS hands back is what the app wrote: denoised pixels and the PDF, byte for byte.
    _, first_derived = derived[0]
    instance_id = stored[series_uid["derived"]]["ids"][str(first_derived.SOPInstanceUID)]
    returned = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance_id}/file")))
    assert returned.PixelData == first_derived.PixelData
    assert returned.SourceImageSequence == first_derived.SourceImageSequence
    ((_, report),) = pdf
    (pdf_id,) = stored[series_uid["qa report"]]["ids"].values()
    returned = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{pdf_id}/file")))
    assert returned.SOPClassUID == EncapsulatedPDFStorage
    assert returned.EncapsulatedDocument == report.EncapsulatedDocument
    assert bytes(returned.EncapsulatedDocument[:5]) == b"%PDF-"
