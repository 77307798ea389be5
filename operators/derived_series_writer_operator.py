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
    DerivedSeriesOptions,
    EncapsulatedPdfOptions,
    build_derived_series,
    build_encapsulated_pdf,
    write_series_atomically,
)
from dicom_series import OutputError as SeriesOutputError
from qa_report import make_run_record, render_report_pdf, save_montage, write_run_record

from .nsn2n_operator import series_workdir
from .run_outcome import InputError, OutputError, RunOutcome, SeriesJob

__all__ = ["DerivedSeriesWriterOperator"]

log = logging.getLogger(__name__)

QA_SERIES_DESCRIPTION = "NS-N2N QA report (research use)"


def _stored_dtype(ds) -> str:
    """Stored pixel type of the source, e.g. ``int16`` (PixelRepresentation, BitsAllocated)."""
    return f"{'int' if ds.get('PixelRepresentation', 0) else 'uint'}{ds.get('BitsAllocated', 16)}"


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
                    self.write(job)
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

    def _series_number(self, job: SeriesJob, extra: int = 0) -> int | None:
        number = job.source.datasets[0].get("SeriesNumber")
        if number in (None, ""):
            return None
        return (int(number) + self.series_number_offset + extra) % 2**31

    def _write(self, datasets, folder_name: str) -> Path:
        try:
            return write_series_atomically(datasets, self.output_folder, folder_name)
        except SeriesOutputError as exc:
            raise OutputError(str(exc)) from None
        except PermissionError as exc:
            raise OutputError(f"cannot write into the output folder {self.output_folder}: {exc.strerror}") from None

    def write(self, job: SeriesJob) -> None:
        t = time.monotonic()
        source, result = job.source, job.result
        options = DerivedSeriesOptions(
            series_description=self.series_description,
            series_number=self._series_number(job),
            software_version=nsn2n.__version__,
        )
        datasets = build_derived_series(source, result.denoised, options)
        series_uid = str(datasets[0].SeriesInstanceUID)
        folder = self._write(datasets, series_uid)
        job.written.append(folder)
        job.record["derived"] = {
            "series_instance_uid": series_uid,
            "series_number": options.series_number,
            "series_description": self.series_description,
            "output_folder": str(folder),
        }
        log.info(
            "series %s: derived series %s written: %d instances in %s",
            job.series_uid,
            series_uid,
            len(datasets),
            folder,
        )
        job.timings["write"] = time.monotonic() - t
        if self.qa_report:
            self.write_qa(job, datasets)

    def write_qa(self, job: SeriesJob, derived) -> None:
        source, result = job.source, job.result
        workdir = series_workdir(self.workdir, job.series_uid)
        montage_path = workdir / "qa_montage.png"
        montage = save_montage(
            montage_path,
            source.volume,
            result.denoised,
            source.modality,
            padding_mask=source.padding_mask,
            noise_before=result.report["noise"]["before"],
            pixel_spacing=source.spacing[1:],
            title=f"{job.label} - NS-N2N",
        )
        record = self.record(job, status="ok")
        pdf = render_report_pdf(record, montage)
        ds = build_encapsulated_pdf(
            source,
            pdf,
            EncapsulatedPdfOptions(
                document_title="NS-N2N denoising QA report (not for diagnostic use)",
                series_description=QA_SERIES_DESCRIPTION,
                series_number=self._series_number(job, extra=1),
                software_version=nsn2n.__version__,
            ),
            derived=derived,
        )
        folder = self._write([ds], str(ds.SeriesInstanceUID))
        job.written.append(folder)
        job.record["qa_report"] = {
            "montage_png": str(montage_path),
            "pdf": str(folder),
            "pdf_series_instance_uid": str(ds.SeriesInstanceUID),
        }
        log.info("series %s: QA report written (PDF %s, montage %s)", job.series_uid, folder, montage_path)

    def record(self, job: SeriesJob, status: str) -> dict[str, Any]:
        """The run record of ``job`` (schema: qa_report/run_record.schema.json)."""
        first = job.instances[0][1] if job.instances else None
        source = {
            "study_instance_uid": str(first.get("StudyInstanceUID", "")) if first else "",
            "series_instance_uid": job.series_uid,
            "series_description": str(first.get("SeriesDescription", "")) if first else "",
            "modality": str(first.get("Modality", "")) if first else "",
            "sop_class_uid": str(first.get("SOPClassUID", "")) if first else "",
            "n_instances": len(job.instances),
        }
        report = job.result.report if job.result is not None else {}
        sections: dict[str, Any] = {"status": status, "error": job.error}
        warnings = list(job.source.warnings) if job.source is not None else []
        if job.source is not None:
            gaps = job.source.slice_gaps
            sections["volume"] = {
                "shape": list(job.source.shape),
                "spacing_mm": list(job.source.spacing),
                "slice_gap_max_mm": float(np.max(gaps)) if len(gaps) else None,
                "dtype": _stored_dtype(job.source.datasets[0]),
            }
        if report:
            training = report["training"]
            sections["training"] = (
                None
                if training["steps"] == 0
                else {k: training[k] for k in ("steps", "stopped_by", "final_loss", "loss_history", "rollbacks")}
            )
            sections["noise"] = report["noise"]
            warnings += report["warnings"]
            sections["model"] = {
                "loaded_from": report["model"]["loaded_from"],
                "saved_to": job.record.get("model_saved_to"),
                "finetune_steps": report["model"]["finetune_steps"] or 0,
            }
        timings = dict(job.timings)
        for stage in ("weight_map", "train", "inference"):
            if f"{stage}_s" in report.get("timings_s", {}):
                timings[stage] = report["timings_s"][f"{stage}_s"]
        timings["total"] = sum(v for v in timings.values() if v is not None)
        for key in ("derived", "qa_report"):
            if key in job.record:
                sections[key] = job.record[key]
        return make_run_record(
            software_version=nsn2n.__version__,
            source=source,
            device=report.get("device", "n/a"),
            parameters=self.parameters,
            timings_s=timings,
            warnings=warnings,
            **sections,
        )

    def write_record(self, job: SeriesJob) -> None:
        status = "ok" if job.ok and job.written else "skipped"
        record = self.record(job, status=status)
        if status != "ok":
            record["error"] = job.error or "not processed"
        path = series_workdir(self.workdir, job.series_uid) / "run.json"
        try:
            write_run_record(path, record)
        except OSError as exc:
            raise OutputError(f"cannot write the run record {path}: {exc.strerror}") from None
        log.info("series %s: run record %s", job.series_uid, path)
