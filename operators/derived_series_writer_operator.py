"""Derived-series writer: the denoised DICOM series, the QA report and the run record of each series.

The SDK (4.0.0) has no DICOM image-series writer, and its Encapsulated PDF writer builds a new dataset
without our source references; both come from ``dicom_series``. Each series is written to a temporary
folder beside the output and renamed into place when complete (``write_series_atomically``), so a host
that sends the output folder to PACS never sees a partial series. Only DICOM goes into the output folder;
the run record (JSON), the QA montage (PNG) and the model go into the work folder.

The writer is the end of the pipeline, so it is where a run ends: after the last series it records the
outcome in :class:`~operators.exit_status.ExitStatus`, and when a job arrives carrying a failure that ends
the run, or a failure happens here, it removes what must not stay (the rule: ``operators/exit_status.py``):
the folders of the series in progress always; the complete series written before only after a failure
of the software or the data, or in strict mode, with their run records marked as failed. A full disk,
a read-only or removed folder or an I/O error on the output or work folder is an output error (exit
code 4) whose one-line message names the folder and the OS error in words; a stop signal is asked before
every file. After each series it sends the series UID back to the queue (``series_done``), which releases
the next one.

A series split into 3-D stacks (echoes, b-values, phases, orientations) gets one derived series per stack,
with its own Series Instance UID and a Series Description that ends with the stack's label
(``dicom_series.stack_series_description``), and one run record per stack.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

import nsn2n
from dicom_series import (
    SOFTWARE_NAME,
    DerivedSeriesOptions,
    EncapsulatedPdfOptions,
    WriteStopped,
    build_derived_series,
    build_encapsulated_pdf,
    derived_series_number,
    stack_series_description,
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

from .exit_status import ExitStatus, InputError, OutputError, RunError, StopRequest, as_run_error, require_folder
from .series_job import SeriesJob

__all__ = ["DerivedSeriesWriterOperator"]

log = logging.getLogger(__name__)

QA_SERIES_DESCRIPTION = "NS-N2N QA report (research use)"


@dataclass(frozen=True)
class _Written:
    """What was written for one series."""

    derived: DerivedSeriesInfo
    qa_files: QaReportFiles | None
    seconds: float  # building and writing the derived series


@dataclass(frozen=True)
class _Kept:
    """A series whose derived series (and QA report) is complete in the output."""

    name: str
    folders: list[Path]
    record_path: Path
    record: RunRecord


class DerivedSeriesWriterOperator(Operator):
    """Input ``job`` (a denoised series, or one that was skipped or failed); output ``series_done``."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        status: ExitStatus,
        stop: StopRequest,
        output_folder: Path,
        workdir: Path,
        series_description: str,
        series_number_offset: int,
        qa_report: bool,
        parameters: dict[str, Any],
        strict: bool,
        **kwargs,
    ) -> None:
        self.status = status
        self.stop = stop
        self.output_folder = Path(output_folder)
        self.workdir = Path(workdir)
        self.series_description = series_description
        self.series_number_offset = series_number_offset
        self.qa_report = qa_report
        self.parameters = parameters
        self.strict = strict
        self._kept: list[_Kept] = []  # the series written, complete, in the output
        self._current: list[Path] = []  # output folders of the series being written (not complete yet)
        self._outcomes: list[SeriesJob] = []  # every series handled (released: no volumes)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("job")
        spec.output("series_done")

    def compute(self, op_input, op_output, context) -> None:
        job: SeriesJob = op_input.receive("job")
        if job.ok and self.stop.requested:
            job.fatal = self.stop.error()
        if job.fatal is None:
            with job.failures_end_the_run(self.name):
                self.handle(job)
        if job.fatal is not None:
            self.end_run(job.fatal, failed=job)
        elif job.last:
            try:
                self.finish()
            except Exception as exc:
                self.end_run(as_run_error(exc, self.name))
        job.release()
        if job.fatal is None and not job.last:
            op_output.emit(job.series_uid, "series_done")

    def handle(self, job: SeriesJob) -> None:
        """Write the derived series and QA report of ``job`` (unless it was skipped), then its run record."""
        self._current = []
        written = self.write_series(job) if job.ok else None
        record = self.record(job, written)
        path = self.write_record(job, record)
        if written is not None:
            self._kept.append(_Kept(job.name, self._current, path, record))
            self.status.written.append(job.name)
        self._current = []
        self._outcomes.append(job)

    def finish(self) -> None:
        """After the last series: the run finished, or nothing was written (an input error)."""
        written = len(self._kept)
        if not written:
            raise InputError(self._nothing_written())
        log.info(
            "done: %d derived series written to %s; %d series skipped",
            written,
            self.output_folder,
            len(self._outcomes) - written,
        )
        self.status.finish()

    def _nothing_written(self) -> str:
        jobs = self._outcomes
        reasons = "; ".join(f"{job.name}: {job.error}" for job in jobs)
        if all(job.skipped_in == "load" for job in jobs):
            return f"no selected series could be converted to a volume ({reasons})"
        if all(job.skipped_in in ("load", "denoise") for job in jobs):
            return f"no series could be denoised: {reasons}"
        return f"no derived series was written: {reasons}"

    def end_run(self, error: RunError, failed: SeriesJob | None = None) -> None:
        """A failure ends the run: remove what must not stay, mark those run records, record the error.

        The folders of the series in progress are always removed. The complete series written before stay
        when ``error.keeps_written`` (the run was stopped by its environment: a full disk, a signal) and the
        run is not strict; otherwise they are removed too and their run records say so. ``failed`` is the
        series the failure happened to (``None`` for a failure of the run as a whole); it is named in the
        log and its run record gets the error itself.
        """
        for folder in self._current:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s: its series was not complete", folder)
        self._current = []
        marked = []
        if self._kept and (self.strict or not error.keeps_written):
            for kept in self._kept:
                for folder in kept.folders:
                    shutil.rmtree(folder, ignore_errors=True)
                    log.warning("removed %s written earlier in this run", folder)
                marked.append((kept.record_path, kept.record, f"removed because the run failed: {error}"))
            self._kept = []
            self.status.written.clear()
        elif self._kept:
            log.warning(
                "kept the %d complete derived series written before the failure: %s",
                len(self._kept),
                "; ".join(f"series {kept.name} in {', '.join(map(str, kept.folders))}" for kept in self._kept),
            )
        if failed is not None and failed.series_uid is not None:
            log.warning("series %s: not written", failed.name)
            marked.append((failed.workdir(self.workdir) / "run.json", self.record(failed, None), str(error)))
        for path, record, reason in marked:
            record = dataclasses.replace(record, status="failed", error=reason, derived=None, qa_report=None)
            try:
                write_run_record(path, record.as_dict())
            except OSError as exc:
                log.warning("cannot mark the run record %s as failed: %s", path, os.strerror(exc.errno or errno.EIO))
        self.status.fail(error)

    def _series_numbers(self, job: SeriesJob) -> tuple[int | None, int] | None:
        """Series Numbers of the derived series and of the QA report; ``None`` (skipped) when out of range."""
        try:
            return (
                derived_series_number(job.source, self.series_number_offset),
                derived_series_number(job.source, self.series_number_offset + 1, required=True),
            )
        except ValueError as exc:
            job.skip("write", str(exc), strict=self.strict)
            return None

    def _write(self, datasets, folder_name: str, what: str) -> Path:
        """Write one series into the output folder; ``what`` names it in an error message."""
        action = f"write {what}"
        require_folder(self.output_folder, "output", action)
        try:
            folder = write_series_atomically(datasets, self.output_folder, folder_name, should_stop=self.stop)
        except WriteStopped:
            raise self.stop.error() from None
        except OSError as exc:
            raise OutputError.from_os_error(exc, "output", self.output_folder, action) from None
        self._current.append(folder)
        return folder

    def write_series(self, job: SeriesJob) -> _Written | None:
        """The derived series and, when enabled, the QA report; ``None`` when the series is skipped."""
        numbers = self._series_numbers(job)
        if numbers is None:
            return None
        t = time.monotonic()
        options = DerivedSeriesOptions(
            series_description=stack_series_description(
                self.series_description, job.stack.label if job.stack is not None else ""
            ),
            series_number=numbers[0],
            software_version=nsn2n.__version__,
        )
        datasets = build_derived_series(job.source, job.result.denoised, options)
        series_uid = str(datasets[0].SeriesInstanceUID)
        folder = self._write(datasets, series_uid, f"the derived series of series {job.name}")
        derived = DerivedSeriesInfo(series_uid, options.series_number, options.series_description, str(folder))
        log.info(
            "series %s: derived series %s written: %d instances in %s",
            job.name,
            series_uid,
            len(datasets),
            folder,
        )
        written = _Written(derived, None, time.monotonic() - t)
        if self.qa_report:
            written = dataclasses.replace(written, qa_files=self.write_qa(job, datasets, numbers[1], written))
        return written

    def write_qa(self, job: SeriesJob, derived, series_number: int, written: _Written) -> QaReportFiles:
        """The QA montage (work folder) and the QA report as an Encapsulated PDF series (output folder)."""
        source, result = job.source, job.result
        montage_path = job.workdir(self.workdir) / "qa_montage.png"
        require_folder(self.workdir, "work", f"write the QA montage {montage_path}")
        title = f"{job.label} [{job.stack.label}]" if job.stack is not None else job.label
        try:
            montage = save_montage(
                montage_path,
                source.volume,
                result.denoised,
                source.modality,
                padding_mask=source.padding_mask,
                noise_before=result.report.noise.before,
                pixel_spacing=source.spacing[1:],
                title=f"{title} - NS-N2N",
            )
        except OSError as exc:
            raise OutputError.from_os_error(exc, "work", self.workdir, f"write the QA montage {montage_path}") from None
        pdf = render_report_pdf(self.record(job, written).as_dict(), montage)
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
        folder = self._write([ds], str(ds.SeriesInstanceUID), f"the QA report of series {job.name}")
        log.info("series %s: QA report written (PDF %s, montage %s)", job.name, folder, montage_path)
        return QaReportFiles(str(montage_path), str(folder), str(ds.SeriesInstanceUID))

    def record(self, job: SeriesJob, written: _Written | None) -> RunRecord:
        """The run record of ``job``: ``ok`` when ``written``, else ``skipped`` with the reason."""
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
            source=SourceSeriesInfo.from_dataset(
                first, job.series_uid, len(job.instances), job.stack.label if job.stack is not None else None
            ),
            parameters=self.parameters,
            status="ok" if written is not None else "skipped",
            error=None if written is not None else job.error or "not processed",
            volume=volume,
            report=job.result.report if job.result is not None else None,
            derived=written.derived if written is not None else None,
            qa_report=written.qa_files if written is not None else None,
            model_saved_to=job.model_saved_to,
            load_s=job.load_s,
            write_s=written.seconds if written is not None else None,
            removed_structure=job.removed_structure,
            warnings=tuple(job.source.warnings) if job.source is not None else (),
        )

    def write_record(self, job: SeriesJob, record: RunRecord) -> Path:
        path = job.workdir(self.workdir) / "run.json"
        require_folder(self.workdir, "work", f"write the run record {path}")
        try:
            write_run_record(path, record.as_dict())
        except OSError as exc:
            raise OutputError.from_os_error(exc, "work", self.workdir, f"write the run record {path}") from None
        log.info("series %s: run record %s", job.name, path)
        return path
