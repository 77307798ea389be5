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
from dicom_series.reader import MIN_SLICES

from .run_outcome import InputError, RunOutcome, SeriesJob

__all__ = ["SeriesToVolumeOperator"]

log = logging.getLogger(__name__)


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


def localizer_reason(datasets) -> str | None:
    """Why a selected series is a localizer (scout) that is left out, or ``None`` to denoise it.

    Design decision: nearly every CT/MR study holds localizer (scout, survey) series, so they are neither
    denoised nor failures, in strict mode too: they are left out with a warning naming the reason. A
    series is a localizer when its Image Type (0008,0008) contains ``LOCALIZER`` (PS3.3 C.8.2.1.1.1 CT,
    C.8.3.1.1.1 MR), or when its instances hold fewer than ``MIN_SLICES`` (3) frames in total (NS-N2N
    needs a slice and two neighbours). A multi-frame object is counted by its frames, so that an
    enhanced multi-frame series reaches ``load_series`` and is rejected there with its own message.
    If every selected series is left out, the run ends with exit code 3 and these reasons.
    """
    if not datasets:
        return "no instances"
    value = datasets[0].get("ImageType") or []
    image_type = [str(v).upper() for v in ([value] if isinstance(value, str) else value)]
    if "LOCALIZER" in image_type:
        return "localizer/scout (Image Type " + "\\".join(image_type) + ")"
    frames = 0
    for ds in datasets:
        try:
            frames += max(int(ds.get("NumberOfFrames") or 1), 1)
        except (TypeError, ValueError):
            frames += 1
    if frames < MIN_SLICES:
        return f"only {frames} slice(s); at least {MIN_SLICES} are needed for denoising (a localizer/scout?)"
    return None


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
        left_out: list[str] = []
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
                reason = localizer_reason([ds for _, ds in instances])
                if reason is not None:
                    log.warning("series %s (%s): not denoised: %s", series.SeriesInstanceUID, _label(series), reason)
                    left_out.append(f"series {series.SeriesInstanceUID} ({_label(series)}): {reason}")
                    continue
                self.outcome.jobs.append(SeriesJob(series.SeriesInstanceUID, _label(series), instances))
        if not self.outcome.jobs:
            if left_out:
                raise InputError("no series to denoise: " + "; ".join(left_out))
            raise InputError(self._nothing_selected(studies))
        for job in self.outcome.jobs:
            t = time.monotonic()
            try:
                job.source = load_series(job.instances)
            except SeriesError as exc:  # its str() repeats "Series <uid>: ", which every message here names
                self.outcome.fail_series(job, f"{exc.filename}: {exc.reason}" if exc.filename else exc.reason)
                continue
            job.timings["load"] = time.monotonic() - t
            for warning in job.source.warnings:
                log.warning("series %s: %s", job.series_uid, warning)
            log.info(
                "series %s (%s): %s voxels, spacing %s mm",
                job.series_uid,
                job.label,
                "x".join(map(str, job.source.shape)),
                "x".join(f"{s:.3g}" for s in job.source.spacing),
            )
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
                found.append(
                    f"{getattr(series, 'Modality', '?')}{' DERIVED' if derived else ''} ({len(sops)} instance(s))"
                )
        return (
            f"no {'/'.join(self.modalities)} series to denoise that is not DERIVED/SECONDARY; "
            f"found {len(found)} series: {', '.join(found) or 'none'}"
        )
