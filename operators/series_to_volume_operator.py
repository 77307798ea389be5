"""Series to volume: each job's series becomes a validated, sorted volume with its padding mask.

Why not the SDK's ``DICOMSeriesToVolumeOperator`` (4.0.0): it converts only the first selected series of
the first study, silently drops slices without position/orientation, does not mask PixelPaddingValue,
and its affine's index order differs from the array's. ``dicom_series.load_series`` sorts along the slice
normal, validates geometry (duplicates, gaps, mixed sizes, multi-frame, colour, undecodable pixels) with
messages that name the file, and keeps the source datasets for the derived-series writer.
"""

from __future__ import annotations

import logging
import time

from monai.deploy.core import Fragment

from dicom_series import SeriesError, load_series
from nsn2n import MIN_SLICES

from .series_job import SeriesJob, SeriesStepOperator

__all__ = ["SeriesToVolumeOperator"]

log = logging.getLogger(__name__)


class SeriesToVolumeOperator(SeriesStepOperator):
    """Input ``job`` (a selected series), output ``job`` (with ``source`` set, or skipped)."""

    def __init__(self, fragment: Fragment, *args, strict: bool, **kwargs) -> None:
        self.strict = strict
        super().__init__(fragment, *args, **kwargs)

    def process(self, job: SeriesJob) -> None:
        """Load, validate and decode the series (``job.source``); skip it when it cannot be used."""
        t = time.monotonic()
        try:
            job.source = load_series(job.instances, min_slices=MIN_SLICES)
        except SeriesError as exc:  # its str() repeats "Series <uid>: ", which every message here names
            job.skip("load", f"{exc.filename}: {exc.reason}" if exc.filename else exc.reason, strict=self.strict)
            return
        job.load_s = time.monotonic() - t
        for warning in job.source.warnings:  # load_series returns them without logging: one line each
            log.warning("series %s: %s", job.name, warning)
        log.info(
            "series %s (%s): %s voxels, spacing %s mm",
            job.name,
            job.label,
            "x".join(map(str, job.source.shape)),
            "x".join(f"{s:.3g}" for s in job.source.spacing),
        )
