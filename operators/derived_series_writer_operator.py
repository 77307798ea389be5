"""Derived-series writer: the denoised DICOM series, the QA report and the run record of each series.

The SDK (4.0.0) has no DICOM image-series writer, and its Encapsulated PDF writer builds a new dataset
without our source references; both come from ``dicom_series``. Each series is written to a temporary
folder beside the output and renamed into place when complete (``write_series_atomically``), so a host
that sends the output folder to PACS never sees a partial series. Only DICOM goes into the output folder;
the run record (JSON), the QA montage (PNG) and the model go into the work folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

import nsn2n
from dicom_series import (
    SOFTWARE_NAME,
    DerivedSeriesOptions,
    EncapsulatedPdfOptions,
    OutputFolderError,
    build_derived_series,
    build_encapsulated_pdf,
    derived_series_number,
    stored_dtype,
    write_series_atomically,
)
from qa_report import (
    DerivedSeriesInfo,
    QaReportFiles,
    RunRecord,
    SourceSeriesInfo,
    VolumeInfo,
    render_report_pdf,
    save_montage,
    write_run_record,
)

from .nsn2n_operator import series_workdir
from .run_outcome import InputError, OutputError, RunOutcome, SeriesJob

__all__ = ["DerivedSeriesWriterOperator"]

log = logging.getLogger("nsn2n.app")

QA_SERIES_DESCRIPTION = "NS-N2N QA report (research use)"


class DerivedSeriesWriterOperator(Operator):
    """Input ``jobs`` (denoised series). Writes ``<output>/<derived SeriesInstanceUID>/`` per series."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        outcome: RunOutcome,
        output_folder: Path,
        workdir: Path,
        series_description: str,
        series_number_offset: int,
        qa_report: bool,
        parameters: dict[str, Any],
        **kwargs,
    ) -> None:
        self.outcome = outcome
        self.output_folder = Path(output_folder)
        self.workdir = Path(workdir)
        self.series_description = series_description
        self.series_number_offset = series_number_offset
        self.qa_report = qa_report
        self.parameters = parameters
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("jobs")

    def compute(self, op_input, op_output, context) -> None:
        with self.outcome.guard(self.name):
            jobs: list[SeriesJob] = op_input.receive("jobs")
            for job in jobs:
                if job.ok:
                    self.write_series(job)
                self.write_record(job)
            written = [job for job in jobs if job.written]
            if not written:
                raise InputError(
                    "no derived series was written: " + "; ".join(f"{j.series_uid}: {j.error}" for j in jobs)
                )
            self.outcome.finished = True
            log.info(
                "done: %d derived series written to %s; %d series skipped",
                len(written),
                self.output_folder,
                sum(1 for j in jobs if not j.ok),
            )

    def _write(self, datasets, folder_name: str) -> Path:
        try:
            return write_series_atomically(datasets, self.output_folder, folder_name)
        except OutputFolderError as exc:
            raise OutputError(str(exc)) from None
        except PermissionError as exc:
            raise OutputError(f"cannot write into the output folder {self.output_folder}: {exc.strerror}") from None

    def write_series(self, job: SeriesJob) -> None:
        try:
            numbers = (
                derived_series_number(job.source, self.series_number_offset),
                derived_series_number(job.source, self.series_number_offset + 1, required=True),
            )
        except ValueError as exc:
            self.outcome.fail_series(job, str(exc))
            return
        self.write(job, *numbers)

    def write(self, job: SeriesJob, series_number: int | None, qa_series_number: int) -> None:
        t = time.monotonic()
        source, result = job.source, job.result
        options = DerivedSeriesOptions(
            series_description=self.series_description,
            series_number=series_number,
            software_version=nsn2n.__version__,
        )
        datasets = build_derived_series(source, result.denoised, options)
        series_uid = str(datasets[0].SeriesInstanceUID)
        folder = self._write(datasets, series_uid)
        job.written.append(folder)
        job.derived = DerivedSeriesInfo(series_uid, options.series_number, self.series_description, str(folder))
        log.info(
            "series %s: derived series %s written: %d instances in %s",
            job.series_uid,
            series_uid,
            len(datasets),
            folder,
        )
        job.write_s = time.monotonic() - t
        if self.qa_report:
            self.write_qa(job, datasets, qa_series_number)

    def write_qa(self, job: SeriesJob, derived, series_number: int) -> None:
        source, result = job.source, job.result
        workdir = series_workdir(self.workdir, job.series_uid)
        montage_path = workdir / "qa_montage.png"
        montage = save_montage(
            montage_path,
            source.volume,
            result.denoised,
            source.modality,
            padding_mask=source.padding_mask,
            noise_before=result.report.noise.before,
            pixel_spacing=source.spacing[1:],
            title=f"{job.label} - NS-N2N",
        )
        pdf = render_report_pdf(self.record(job, status="ok").as_dict(), montage)
        ds = build_encapsulated_pdf(
            source,
            pdf,
            EncapsulatedPdfOptions(
                document_title="NS-N2N denoising QA report (not for diagnostic use)",
                series_description=QA_SERIES_DESCRIPTION,
                series_number=series_number,
                software_version=nsn2n.__version__,
            ),
            derived=derived,
        )
        folder = self._write([ds], str(ds.SeriesInstanceUID))
        job.written.append(folder)
        job.qa_files = QaReportFiles(str(montage_path), str(folder), str(ds.SeriesInstanceUID))
        log.info("series %s: QA report written (PDF %s, montage %s)", job.series_uid, folder, montage_path)

    def record(self, job: SeriesJob, status: str) -> RunRecord:
        """The run record of ``job`` (schema: qa_report/run_record.schema.json)."""
        first = job.instances[0][1] if job.instances else None
        volume = None
        if job.source is not None:
            gaps = job.source.slice_gaps
            volume = VolumeInfo(
                shape=job.source.shape,
                spacing_mm=job.source.spacing,
                slice_gap_max_mm=float(np.max(gaps)) if len(gaps) else None,
                dtype=stored_dtype(job.source.datasets[0]).name,
            )
        return RunRecord(
            software_name=SOFTWARE_NAME,
            software_version=nsn2n.__version__,
            source=SourceSeriesInfo.from_dataset(first, job.series_uid, len(job.instances)),
            parameters=self.parameters,
            status=status,
            error=job.error if status == "ok" else job.error or "not processed",
            volume=volume,
            report=job.result.report if job.result is not None else None,
            derived=job.derived,
            qa_report=job.qa_files,
            model_saved_to=job.model_saved_to,
            load_s=job.load_s,
            write_s=job.write_s,
            warnings=tuple(job.source.warnings) if job.source is not None else (),
        )

    def write_record(self, job: SeriesJob) -> None:
        record = self.record(job, status="ok" if job.ok and job.written else "skipped")
        path = series_workdir(self.workdir, job.series_uid) / "run.json"
        try:
            write_run_record(path, record.as_dict())
        except OSError as exc:
            raise OutputError(f"cannot write the run record {path}: {exc.strerror}") from None
        log.info("series %s: run record %s", job.series_uid, path)
