"""Series to volume: every selected series becomes a validated, sorted volume with its padding mask.

Why not the SDK's ``DICOMSeriesToVolumeOperator`` (4.0.0): it converts only the first selected series of
the first study, silently drops slices without position/orientation, does not mask PixelPaddingValue,
and its affine's index order differs from the array's. ``dicom_series.load_series`` sorts along the slice
normal, validates geometry (duplicates, gaps, mixed sizes, multi-frame, colour, undecodable pixels) with
messages that name the file, and keeps the source datasets for the derived-series writer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from dicom_series import SeriesError, load_series

from .run_outcome import InputError, RunOutcome, SeriesJob

__all__ = ["SeriesToVolumeOperator"]

log = logging.getLogger("nsn2n.app")


def _label(series) -> str:
    """Modality, series number and description: enough for an operator, no patient data."""
    parts = [str(getattr(series, "Modality", "") or "?")]
    number = getattr(series, "SeriesNumber", None)
    if number not in (None, ""):
        parts.append(f"#{number}")
    description = getattr(series, "SeriesDescription", None)
    if description:
        parts.append(f"'{description}'")
    return " ".join(parts)


class SeriesToVolumeOperator(Operator):
    """Inputs ``study_selected_series_list`` (selector) and ``dicom_study_list`` (loader, for the
    "nothing selected" message); output ``jobs``: list of :class:`SeriesJob`."""

    def __init__(self, fragment: Fragment, *args, outcome: RunOutcome, modalities: tuple[str, ...], **kwargs):
        self.outcome = outcome
        self.modalities = modalities
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.input("dicom_study_list")
        spec.output("jobs")

    def compute(self, op_input, op_output, context) -> None:
        with self.outcome.guard(self.name):
            selected = op_input.receive("study_selected_series_list") or []
            studies = op_input.receive("dicom_study_list") or []
            jobs = self.convert(selected, studies)
            op_output.emit(jobs, "jobs")

    def convert(self, selected, studies) -> list[SeriesJob]:
        seen: set[str] = set()
        for study_selection in selected:
            for selection in study_selection.selected_series:
                series = selection.series
                if series.SeriesInstanceUID in seen:
                    continue
                seen.add(series.SeriesInstanceUID)
                instances = [
                    (Path(ds.filename) if getattr(ds, "filename", None) else None, ds)
                    for ds in (sop.get_native_sop_instance() for sop in series.get_sop_instances())
                ]
                self.outcome.jobs.append(SeriesJob(series.SeriesInstanceUID, _label(series), instances))
        if not self.outcome.jobs:
            raise InputError(self._nothing_selected(studies))
        for job in self.outcome.jobs:
            t = time.monotonic()
            try:
                job.source = load_series(job.instances)
            except SeriesError as exc:
                self.outcome.fail_series(job, str(exc))
                continue
            job.timings["load"] = time.monotonic() - t
            for warning in job.source.warnings:
                log.warning("series %s: %s", job.series_uid, warning)
            log.info("series %s (%s): %s voxels, spacing %s mm", job.series_uid, job.label,
                     "x".join(map(str, job.source.shape)), "x".join(f"{s:.3g}" for s in job.source.spacing))
        if not any(job.ok for job in self.outcome.jobs):
            reasons = "; ".join(f"{job.series_uid}: {job.error}" for job in self.outcome.jobs)
            raise InputError(f"no selected series could be converted to a volume ({reasons})")
        return self.outcome.jobs

    def _nothing_selected(self, studies) -> str:
        found = []
        for study in studies:
            for series in study.get_all_series():
                sops = series.get_sop_instances()
                image_type = sops[0].get_native_sop_instance().get("ImageType", []) if sops else []
                derived = any(str(v).upper() in ("DERIVED", "SECONDARY") for v in image_type)
                found.append(f"{getattr(series, 'Modality', '?')}{' DERIVED' if derived else ''} "
                             f"({len(sops)} instance(s))")
        return (f"no {'/'.join(self.modalities)} series to denoise that is not DERIVED/SECONDARY; "
                f"found {len(found)} series: {', '.join(found) or 'none'}")
