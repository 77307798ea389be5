"""What a person sees: progress lines with an ETA, a schema-valid run record that agrees with the run, and
the QA report as a DICOM Encapsulated PDF in the input's study plus a PNG montage in the work folder."""

import io
import json
import re

import numpy as np
import pydicom
import pytest
from PIL import Image
from pypdf import PdfReader

from qa_report import montage_size, validate_run_record
from tests.app_runner import run_app
from tests.dicom_factory import add_correlated_noise, dicom_tools_available, make_phantom, run_dciodvfy, write_ct_series


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    clean = make_phantom((8, 48, 48), seed=2)
    write_ct_series(root / "in", add_correlated_noise(clean, sigma_hu=35, seed=3))
    run = run_app(root / "in", root / "out", root / "work", env={"NSN2N_MAX_STEPS": "150", "NSN2N_LOG_EVERY_S": "0.1"})
    assert run.returncode == 0, run.log[-3000:]
    source = pydicom.dcmread(sorted((root / "in").glob("*"))[0], stop_before_pixels=True)
    return run, source


def _records(run):
    return [json.loads(p.read_text()) for p in run.workdir.rglob("run.json")]


def _pdf_instances(run):
    found = []
    for path in run.output_files():
        ds = pydicom.dcmread(path, stop_before_pixels=False)
        if ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage:
            found.append((path, ds))
    return found


def test_log_has_progress_lines_with_eta(qa_run):
    run, _ = qa_run
    line = r"train: step (\d+)/150 \(\d+%\) loss [0-9.]+ .* elapsed \d:\d\d:\d\d ETA \d:\d\d:\d\d"
    progress = re.findall(line, run.log)
    assert len(progress) >= 2, run.log[-2000:]
    assert "\r" not in run.log
    assert re.search(r"noise: [0-9.]+ HU before, ([0-9.]+|unknown) after", run.log)
    assert re.search(r"device cpu", run.log)


def test_run_record_is_valid_and_agrees_with_the_run(qa_run):
    run, source = qa_run
    (record,) = _records(run)
    validate_run_record(record)
    assert record["status"] == "ok" and record["error"] is None
    assert record["source"]["series_instance_uid"] == source.SeriesInstanceUID
    assert record["volume"]["shape"] == [8, 48, 48]
    assert record["training"]["steps"] == 150
    assert record["parameters"]["max_steps"] == 150
    assert record["noise"]["after"] < record["noise"]["before"]
    assert record["noise"]["unit"] == "HU"
    derived = run.output / record["derived"]["series_instance_uid"]
    assert len(list(derived.glob("*.dcm"))) == 8
    assert all(v is None or v >= 0 for v in record["timings_s"].values())
    check = record["removed_structure"]  # computed by the application for every denoised series
    assert check["threshold"] == record["parameters"]["removed_structure_threshold"] == 1.0
    assert check["edge_pixels"] > 0 and check["slices"] == 8 and isinstance(check["index"], float)
    assert check["fired"] == (check["index"] > check["threshold"])
    assert any("removed-structure check fired" in w for w in record["warnings"]) == check["fired"]
    assert re.search(rf"removed-structure index {check['index']:.2f} \(threshold 1;", run.log)


def test_qa_pdf_is_valid_dicom_in_the_same_study_and_readable(qa_run):
    run, source = qa_run
    ((path, ds),) = _pdf_instances(run)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    if dicom_tools_available():
        assert run_dciodvfy(path).errors == []
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(ds.EncapsulatedDocument)).pages)
    (record,) = _records(run)
    assert "NOT FOR DIAGNOSTIC USE" in text.upper()
    assert record["derived"]["series_description"] in text
    before = f"{record['noise']['before']:.2f}"
    after = f"{record['noise']['after']:.2f}"
    assert before in text and after in text, text[:1500]
    check = record["removed_structure"]
    assert f"Status: {'WARNING' if check['fired'] else 'OK'}" in text
    assert "Removed structure" in text and f"{check['index']:.2f}" in text
    assert "After it" in text and "blend with a 3-D non-local means" in " ".join(text.split())


def test_png_montage_exists_with_expected_size(qa_run):
    run, _ = qa_run
    (record,) = _records(run)
    png = record["qa_report"]["montage_png"]
    with Image.open(png) as image:
        assert image.size == montage_size(3)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # not a blank canvas


def test_qa_report_can_be_switched_off(tmp_path):
    write_ct_series(tmp_path / "in", add_correlated_noise(make_phantom((5, 32, 32), seed=4), sigma_hu=30, seed=5))
    run = run_app(
        tmp_path / "in", tmp_path / "out", tmp_path / "work", env={"NSN2N_QA_REPORT": "false", "NSN2N_MAX_STEPS": "2"}
    )
    assert run.returncode == 0, run.log[-2000:]
    assert _pdf_instances(run) == []
    assert not list(run.workdir.rglob("qa_montage.png"))
    assert len(run.series_folders()) == 1
