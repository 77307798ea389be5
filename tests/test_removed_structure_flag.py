"""The removed-anatomy flag in the product, in process (seconds): a series whose output is a strong blur of its
input gets the run record's ``removed_structure`` section with ``fired``, one warning line in the record and
the log, and the QA report's status WARNING; a series where only noise was removed stays OK.

The denoiser runs for real (two steps, for a real report); its output is then replaced by a known answer (the
input blurred, or the clean phantom) before the series goes through the job's check and the real writer
(derived series, QA report PDF, run record). The index itself: tests/test_residual_structure.py; the check in
a full application run: tests/test_app_qa.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.deploy.core import Fragment
from pypdf import PdfReader
from scipy import ndimage

from app.settings import AppSettings, load_settings
from dicom_series import load_series, read_dicom_folder
from nsn2n import ConfigError, denoise_volume
from operators.derived_series_writer_operator import DerivedSeriesWriterOperator
from operators.exit_status import ExitStatus, StopRequest
from operators.series_job import SeriesJob
from qa_report import make_run_record, render_report_pdf, validate_run_record
from qa_report.pdf import display_status
from tests.dicom_factory import add_correlated_noise, make_phantom, write_ct_series

SETTINGS = AppSettings()
SHAPE = (8, 64, 64)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A noisy CT phantom as the application loads it, its clean truth, and a real (2-step) denoising."""
    folder = tmp_path_factory.mktemp("flag") / "in"
    clean = make_phantom(SHAPE, seed=7)
    write_ct_series(folder, add_correlated_noise(clean, sigma_hu=30, seed=8))
    instances = read_dicom_folder(folder)
    source = load_series(instances)
    config = dataclasses.replace(SETTINGS.algorithm, max_steps=2, device="cpu", unet_width=8, unet_depth=2)
    result = denoise_volume(source.volume, source.spacing, source.modality, config, padding_mask=source.padding_mask)
    return instances, source, clean, result


def _job(series, denoised: np.ndarray) -> SeriesJob:
    instances, source, _, result = series
    return SeriesJob(
        series_uid=str(source.datasets[0].SeriesInstanceUID),
        label="CT #1 'SYNTHETIC'",
        instances=instances,
        position=1,
        total=1,
        source=source,
        result=dataclasses.replace(result, denoised=np.asarray(denoised, np.float32)),
    )


def _write(job: SeriesJob, root: Path) -> tuple[dict, str]:
    """The real writer on ``job``: returns the run record and the QA report's text."""
    (root / "out").mkdir()
    (root / "work").mkdir()
    writer = DerivedSeriesWriterOperator(
        Fragment(),
        status=ExitStatus(),
        stop=StopRequest(),
        output_folder=root / "out",
        workdir=root / "work",
        series_description=SETTINGS.series_description,
        series_number_offset=SETTINGS.series_number_offset,
        qa_report=True,
        parameters=SETTINGS.as_dict(),
        strict=False,
        name="writer",
    )
    writer.handle(job)
    (record_path,) = (root / "work").rglob("run.json")
    record = json.loads(record_path.read_text())
    pdfs = [
        ds
        for ds in (pydicom.dcmread(p) for p in (root / "out").rglob("*.dcm"))
        if ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    ]
    (pdf,) = pdfs
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.EncapsulatedDocument)).pages)
    return record, text


def _warnings_logged(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "removed-structure" in r.getMessage()
    ]


def test_a_strong_blur_fires_with_a_warning_line_and_the_warning_status(series, tmp_path, caplog):
    _, source, _, _ = series
    job = _job(series, ndimage.gaussian_filter(source.volume, (0, 2.5, 2.5)))
    with caplog.at_level(logging.INFO):
        check = job.check_removed_structure(SETTINGS.removed_structure_threshold)
    assert check.fires and check.index > SETTINGS.removed_structure_threshold
    (logged,) = _warnings_logged(caplog)
    assert logged == f"series {job.name}: {check.warning}" and "\n" not in logged

    record, text = _write(job, tmp_path)
    validate_run_record(record)
    assert record["status"] == "ok"  # the series is written: a warning, not a failure
    section = record["removed_structure"]
    assert section["fired"] is True and section["index"] == pytest.approx(check.index)
    assert (
        section["threshold"]
        == SETTINGS.removed_structure_threshold
        == record["parameters"]["removed_structure_threshold"]
    )
    assert section["edge_pixels"] > 0 and section["slices"] == SHAPE[0]
    assert [w for w in record["warnings"] if "removed-structure" in w] == [check.warning]
    assert "Status: WARNING" in text and "Status: OK" not in text
    assert "FIRED" in text and f"{check.index:.2f}" in text and f"{check.threshold:g}" in text
    assert list((tmp_path / "out").iterdir()), "the derived series is still written"


def test_only_noise_removed_stays_quiet_and_ok(series, tmp_path, caplog):
    _, _, clean, _ = series
    job = _job(series, clean)  # the perfect denoiser: exactly the noise is removed
    with caplog.at_level(logging.INFO):
        check = job.check_removed_structure(SETTINGS.removed_structure_threshold)
    assert not check.fires and abs(check.index) < 0.5
    assert _warnings_logged(caplog) == []

    record, text = _write(job, tmp_path)
    validate_run_record(record)
    section = record["removed_structure"]
    assert section["fired"] is False and section["index"] == pytest.approx(check.index)
    assert not any("removed-structure" in w for w in record["warnings"])
    assert "Status: OK" in text and "WARNING" not in text
    assert "quiet" in text and f"{check.index:.2f}" in text


def test_the_threshold_is_a_setting(series):
    settings = load_settings(None, env={"NSN2N_REMOVED_STRUCTURE_THRESHOLD": "0"})
    assert settings.removed_structure_threshold == 0.0
    _, _, clean, _ = series
    job = _job(series, clean)
    check = job.check_removed_structure(settings.removed_structure_threshold + 1e6)
    assert check.threshold == 1e6 and not check.fires
    for bad in ("-1", "nan", "abc"):
        with pytest.raises(ConfigError) as info:
            load_settings(None, env={"NSN2N_REMOVED_STRUCTURE_THRESHOLD": bad})
        assert info.value.key == "removed_structure_threshold"


def test_records_of_earlier_schema_versions_still_validate_and_render():
    """A record written before 1.2 has no removed_structure section: it validates, and its report says OK."""
    source = {
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.4",
        "series_description": "old",
        "modality": "CT",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "n_instances": 8,
    }
    record = make_run_record(
        software_name="nsn2n-denoise",
        software_version="0.1.0",
        source=source,
        device="cpu",
        derived={
            "series_instance_uid": "1.2.3.5",
            "series_number": 1001,
            "series_description": "d",
            "output_folder": "/o",
        },
        volume={"shape": [8, 64, 64], "spacing_mm": [2.5, 0.7, 0.7], "slice_gap_max_mm": 2.5, "dtype": "int16"},
    )
    for version in ("1.0", "1.1"):
        old = {k: v for k, v in record.items() if k != "removed_structure"} | {"schema_version": version}
        validate_run_record(old)
        assert display_status(old) == "OK"
        text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(render_report_pdf(old, None))).pages)
        assert "Status: OK" in text and "Removed structure" not in text
    with pytest.raises(Exception, match="schema_version"):
        validate_run_record(record | {"schema_version": "2.0"})
